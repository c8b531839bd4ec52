"""Every prompt is a jinja2 template in prompts/*.j2; this module renders them deterministically.

A template defines `{% block system %}` and `{% block user %}`; `render_messages` turns them into
chat messages. Variable text goes through the `data` filter, which wraps it in a tag and escapes any
of our own tags inside it, so content (an injection attempt, say) can't close a block early or
open a new one.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

# Tags our templates use for structure. Content that contains them is escaped (`<` -> `&lt;`, see escape_tags).
RESERVED_TAGS = (
    "variable", "value", "feedback", "input", "output", "system_prompt", "instruction", "example",
    "constraint", "past", "objective", "context", "code", "trace", "gradient", "data", "new_value",
    "reasoning", "item", "text", "error", "report", "history", "document", "attack", "essay", "prompt",
    "rejected",
)
_TAGS = "|".join(RESERVED_TAGS)
_TAG_RE = re.compile(r"<(?=/?\s*(?:" + _TAGS + r")\b)", re.IGNORECASE)
_AMP_RE = re.compile(r"&(?=(?:lt|amp);)", re.IGNORECASE)
_UNESCAPE_RE = re.compile(r"&amp;(?=(?:lt|amp);)|&lt;(?=/?\s*(?:" + _TAGS + r")\b)", re.IGNORECASE)


def escape_tags(text: str) -> str:
    """Make our own tags inert inside content: `<output>` -> `&lt;output>`. An `&` that would read as one of
    these escapes (`&lt;`, `&amp;`) becomes `&amp;`, so `unescape_tags` restores every text exactly."""
    return _TAG_RE.sub("&lt;", _AMP_RE.sub("&amp;", text))


def unescape_tags(text: str) -> str:
    """Inverse of `escape_tags`: optimizers apply it to new values, since a model that saw `&lt;output>`
    copies it that way, and the value must keep `<output>` (the round trip holds for any text)."""
    return _UNESCAPE_RE.sub(lambda m: "&" if m.group(0)[1] in "aA" else "<", text)


def elide(text: str, limit: int) -> str:
    """`text` cut to about `limit` characters: head and tail kept, a marker saying how much was left out."""
    if len(text) <= limit:
        return text
    keep = max(limit - 60, 0)
    head, tail = text[: keep * 2 // 3], text[len(text) - keep // 3 :] if keep // 3 else ""
    return f"{head}\n[... {len(text) - len(head) - len(tail)} characters elided ...]\n{tail}"


def data(value: Any, tag: str = "data", limit: int | None = None) -> str:
    """Wrap `value` in <tag>...</tag> with our tags escaped; optionally cut to `limit` chars with a marker."""
    from .variable import as_text

    text = as_text(value)
    if limit is not None:
        text = elide(text, limit)
    return f"<{tag}>\n{escape_tags(text)}\n</{tag}>"


def prompt_dir() -> Path:
    """Installed wheels carry the templates in textopt/prompts; a source checkout has them at the top."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "prompts", here.parent / "prompts"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"textopt prompt templates not found next to {here}; reinstall textopt")


@functools.lru_cache(maxsize=1)
def _env() -> Any:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(prompt_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["data"] = data
    return env


def render(name: str, block: str | None = None, **variables: Any) -> str:
    """Render template `name` (e.g. "tgd_update.j2"), or one block of it."""
    template = _env().get_template(name)
    if block is None:
        return template.render(**variables).strip()
    context = template.new_context(variables)
    return "".join(template.blocks[block](context)).strip()


def render_messages(name: str, **variables: Any) -> list[dict[str, str]]:
    """Chat messages from a template's `system` and `user` blocks (a missing or empty block is left out)."""
    template = _env().get_template(name)
    messages = []
    for role in ("system", "user"):
        if role in template.blocks:
            text = render(name, role, **variables)
            if text:
                messages.append({"role": role, "content": text})
    return messages
