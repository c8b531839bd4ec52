"""Exemplar proposals for the defender: short excerpts of the texts it got wrong, added to its prompt as
labeled examples, kept only if they win on validation.

Why: in (j) the 1.5B as critic and optimizer wrote no better detector. Asked for rules, it returned the
prompt unchanged or pasted its whole critique in. Few-shot lines need no rewrite from the optimizer model:
they are chosen from the training failures, like DSPy's bootstrapped demos, and the pool's validation split
(texts the step never saw) decides whether they generalise or were only memorised.
"""
from __future__ import annotations

from typing import Sequence

#: The line that opens the block; a prompt holding it has exemplars, and a new proposal replaces the block.
HEADER = "Short excerpts of texts already judged (the text you judge is a new one; look for what it shares with these):"
#: Characters of one excerpt.
EXCERPT_CHARS = 160
#: Lines the block holds at most; the oldest go first.
MAX_LINES = 8


def excerpt(text: str, chars: int = EXCERPT_CHARS) -> str:
    """One line: the whitespace collapsed, the head and tail of a long text (an injection is often at the end
    of a harmless-looking text), double quotes made single so the line stays one quoted string."""
    flat = " ".join(text.split()).replace('"', "'")
    if len(flat) <= chars:
        return flat
    head = chars * 3 // 5
    return flat[:head].rstrip() + " [...] " + flat[-(chars - head - 7):].lstrip()


def split_block(prompt: str) -> tuple[str, list[str]]:
    """The prompt without its exemplar block, and the block's lines."""
    at = prompt.find(HEADER)
    if at < 0:
        return prompt.rstrip(), []
    lines = [ln.strip() for ln in prompt[at + len(HEADER):].splitlines() if ln.strip().startswith("- ")]
    return prompt[:at].rstrip(), lines


def with_exemplars(prompt: str, missed: Sequence[str], wrongly_flagged: Sequence[str], k: int, start: int = 0) -> str | None:
    """`prompt` with up to `k` new exemplar lines after the ones it already has, at most MAX_LINES in all;
    None when there is nothing new to add. Missed injections and wrongly flagged benign texts alternate, each
    list read from `start` (so successive proposals from one prompt and report pick different texts)."""
    body, lines = split_block(prompt)
    new: list[str] = []
    a = _rotated([("injection", t) for t in missed], start)
    b = _rotated([("benign", t) for t in wrongly_flagged], start)
    pairs = [x for pair in zip(a, b) for x in pair] + a[len(b):] + b[len(a):]
    for label, text in pairs:
        line = f'- {label}: "{excerpt(text)}"'
        if line not in lines and line not in new and text.strip():
            new.append(line)
        if len(new) >= k:
            break
    if not new:
        return None
    kept = (lines + new)[-MAX_LINES:]
    return f"{body}\n\n{HEADER}\n" + "\n".join(kept)


def _rotated(items: list[tuple[str, str]], start: int) -> list[tuple[str, str]]:
    if not items:
        return items
    at = start % len(items)
    return items[at:] + items[:at]
