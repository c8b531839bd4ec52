"""Every prompt is a jinja2 template in prompts/*.j2; this module renders them deterministically.

A template defines `{% block system %}` and `{% block user %}`; `render_messages` turns them into
chat messages. Variable text goes through the `data` filter, which wraps it in a tag and escapes any
of our own tags inside it, so content (an injection attempt, say) can't close a block early or
open a new one.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import TextoptError
from .text import as_text

# Tags our templates use for structure. Content that contains them is escaped (`<` -> `&lt;`, see escape_tags).
RESERVED_TAGS = (
    "variable", "value", "feedback", "input", "output", "system_prompt", "instruction", "example",
    "constraint", "past", "objective", "context", "code", "trace", "gradient", "data", "new_value",
    "reasoning", "item", "text", "error", "report", "history", "document", "attack", "essay", "prompt",
    "rejected",
)
#: The tags an update request shows a parameter's value in (TGD's <value>, OptoPrime's <variable>, the JSON
#: field's name): a small model copies them around its proposal.
VALUE_TAGS = ("value", "variable", "new_value")
_TAGS = "|".join(RESERVED_TAGS)
_TAG_RE = re.compile(r"<(?=/?\s*(?:" + _TAGS + r")\b)", re.IGNORECASE)
_AMP_RE = re.compile(r"&(?=(?:lt|amp);)", re.IGNORECASE)
_UNESCAPE_RE = re.compile(r"&amp;(?=(?:lt|amp);)|&lt;(?=/?\s*(?:" + _TAGS + r")\b)", re.IGNORECASE)


def escape_tags(text: str, extra: tuple[str, ...] = ()) -> str:
    """Make our own tags inert inside content: `<output>` -> `&lt;output>`. An `&` that would read as one of
    these escapes (`&lt;`, `&amp;`) becomes `&amp;`, so `unescape_tags` restores every text exactly.
    extra: more tag names to make inert (a field's own tag); those are not restored by `unescape_tags`."""
    text = _TAG_RE.sub("&lt;", _AMP_RE.sub("&amp;", text))
    if extra:
        names = "|".join(re.escape(t) for t in extra)
        text = re.sub(r"<(?=/?\s*(?:" + names + r")\b)", "&lt;", text, flags=re.IGNORECASE)
    return text


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
    text = as_text(value)
    if limit is not None:
        text = elide(text, limit)
    extra = () if tag.lower() in RESERVED_TAGS else (tag,)  # a tag of the caller's own (a field name) is escaped too
    return f"<{tag}>\n{escape_tags(text, extra)}\n</{tag}>"


def prompt_dir() -> Path:
    """Installed wheels carry the templates in textopt/prompts; a source checkout has them at the top."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "prompts", here.parent / "prompts"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"textopt prompt templates not found next to {here}; reinstall textopt")


# -- user overrides ------------------------------------------------------------------------------
# Any template can be replaced: a directory of templates (set_template_dir, or $TEXTOPT_PROMPTS) is searched
# before the built-in one, and an optimizer's own `templates={name: text or path}` come first while it runs
# (a context variable, so concurrent optimizers keep theirs). Every override is checked before use.

class TemplateError(TextoptError, ValueError):
    """A template override can't be used (missing file, jinja2 syntax error, a variable the code doesn't give)."""


_template_dir: Path | None = None
_OVERRIDES: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("textopt_templates", default=None)
_checked_dirs: set[tuple[str, float]] = set()


def set_template_dir(path: str | os.PathLike[str] | None) -> None:
    """Templates in `path` (e.g. a copy of textopt's own `tgd_update.j2`, edited) replace the built-in ones of the
    same name; None goes back to $TEXTOPT_PROMPTS or the built-ins. Every *.j2 file there is checked now."""
    global _template_dir
    if path is None:
        _template_dir = None
        return
    folder = Path(path)
    check_dir(folder)
    _template_dir = folder


def template_dir() -> Path | None:
    """The override directory in use: set_template_dir's, else $TEXTOPT_PROMPTS, else None."""
    if _template_dir is not None:
        return _template_dir
    env = os.environ.get("TEXTOPT_PROMPTS")
    return Path(env) if env else None


def builtin_names() -> list[str]:
    """Names of textopt's own templates (what an override may replace)."""
    return sorted(p.name for p in prompt_dir().glob("*.j2"))


def check_dir(folder: Path) -> None:
    """Check every *.j2 file in an override directory (once per directory and modification time)."""
    if not folder.is_dir():
        raise TemplateError(f"template directory {folder} does not exist (set_template_dir / $TEXTOPT_PROMPTS)")
    stamp = (str(folder.resolve()), max([folder.stat().st_mtime] + [f.stat().st_mtime for f in folder.glob("*.j2")]))
    if stamp in _checked_dirs:
        return
    for f in sorted(folder.glob("*.j2")):
        check_template(f.name, _read(f, str(f)), str(f))
    _checked_dirs.add(stamp)


def check_template(name: str, source: str, origin: str) -> None:
    """Raise TemplateError (one line naming `origin`) when `source` can't stand in for built-in template `name`:
    unknown name, jinja2 syntax error, a variable the built-in doesn't get, or no user block where it has one."""
    import jinja2  # jinja2 loads on first use: `import textopt` stays light
    from jinja2 import meta

    known = builtin_names()
    if name not in known:
        if name.startswith("_"):  # a partial of the user's own, included by an override
            return
        raise TemplateError(f"{origin}: textopt has no template named {name!r} (known: {', '.join(known)})")
    env = _env()
    try:
        ast = env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{origin}: jinja2 syntax error at line {exc.lineno}: {exc.message}") from None
    builtin_src = (prompt_dir() / name).read_text(encoding="utf-8")
    builtin = env.parse(builtin_src)
    given = meta.find_undeclared_variables(builtin)
    unknown = sorted(meta.find_undeclared_variables(ast) - given)
    if unknown:
        raise TemplateError(f"{origin}: uses {', '.join(unknown)}, which {name} is not given "
                            f"(it gets: {', '.join(sorted(given)) or 'nothing'})")
    blocks = {b.name for b in builtin.find_all(jinja2.nodes.Block)}
    mine = {b.name for b in ast.find_all(jinja2.nodes.Block)}
    if "user" in blocks and "user" not in mine:
        raise TemplateError(f"{origin}: defines no {{% block user %}} (the message {name} sends); copy the built-in "
                            f"{prompt_dir() / name} and edit it")


def load_overrides(templates: Mapping[str, str | os.PathLike[str]] | None) -> dict[str, str]:
    """Check per-optimizer overrides ({template name: jinja2 text, or a path to a file}) and the override
    directory in use; returns {name: source}. Raises TemplateError naming the bad one."""
    folder = template_dir()
    if folder is not None:
        check_dir(folder)
    out: dict[str, str] = {}
    for name, value in (templates or {}).items():
        if isinstance(value, os.PathLike) or (isinstance(value, str) and "\n" not in value and "{" not in value
                                               and value.strip().endswith(".j2")):
            source, origin = _read(Path(value), f"templates[{name!r}] = {value}"), str(value)
        elif isinstance(value, str):
            source, origin = value, f"templates[{name!r}] (inline text)"
        else:
            raise TemplateError(f"templates[{name!r}] must be jinja2 text or a path, got {type(value).__name__}")
        check_template(str(name), source, origin)
        out[str(name)] = source
    return out


@contextlib.contextmanager
def using_templates(templates: Mapping[str, str] | None) -> Iterator[None]:
    """Within the block (and the tasks it starts), `templates` ({name: checked source}) replace those templates."""
    if not templates:
        yield
        return
    token = _OVERRIDES.set({**(_OVERRIDES.get() or {}), **templates})
    try:
        yield
    finally:
        _OVERRIDES.reset(token)


def _read(path: Path, origin: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TemplateError(f"{origin}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TemplateError(f"{origin}: can't read it ({type(exc).__name__}: {exc})") from None


def _loader(folders: list[str]) -> Any:
    import jinja2  # jinja2 loads on first use: `import textopt` stays light

    class Loader(jinja2.BaseLoader):
        """The current optimizer's overrides, then the override directory, then the built-ins."""

        fs = jinja2.FileSystemLoader(folders)

        def get_source(self, environment: Any, name: str) -> tuple[str, str | None, Any]:
            over = _OVERRIDES.get() or {}
            if name in over:
                src = over[name]
                return src, None, lambda: (_OVERRIDES.get() or {}).get(name) == src
            src, filename, fresh = self.fs.get_source(environment, name)
            return src, filename, lambda: name not in (_OVERRIDES.get() or {}) and fresh()

    return Loader()


def _env() -> Any:
    folder = template_dir()
    return _env_for(str(folder) if folder is not None else "")


@functools.lru_cache(maxsize=8)
def _env_for(folder: str) -> Any:
    import jinja2  # jinja2 loads on first use: `import textopt` stays light

    env = jinja2.Environment(
        loader=_loader(([folder] if folder else []) + [str(prompt_dir())]),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=True,
    )
    env.filters["data"] = data
    env.filters["inert"] = escape_tags  # trusted text shown untagged: our tags in it made inert all the same
    return env


def _template(name: str) -> Any:
    import jinja2  # jinja2 loads on first use: `import textopt` stays light

    try:
        return _env().get_template(name)
    except jinja2.TemplateSyntaxError as exc:  # an override directory edited after it was checked
        raise TemplateError(f"{exc.filename or name}: jinja2 syntax error at line {exc.lineno}: {exc.message}") from None


def render(name: str, block: str | None = None, **variables: Any) -> str:
    """Render template `name` (e.g. "tgd_update.j2"), or one block of it."""
    template = _template(name)
    if block is None:
        return template.render(**variables).strip()
    context = template.new_context(variables)
    return "".join(template.blocks[block](context)).strip()


def render_messages(name: str, **variables: Any) -> list[dict[str, str]]:
    """Chat messages from a template's `system` and `user` blocks (a missing or empty block is left out)."""
    template = _template(name)
    messages = []
    for role in ("system", "user"):
        if role in template.blocks:
            text = render(name, role, **variables)
            if text:
                messages.append({"role": role, "content": text})
    return messages
