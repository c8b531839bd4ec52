"""Tolerant parsing of structured replies: strict JSON, fenced JSON, JSON amid prose, or <key>...</key> tags.

Bounded: a reply over MAX_REPLY_CHARS is refused before any parsing, every scan is linear in the reply
(500 KB of `{` or of unclosed fences take milliseconds), and a reply nested too deeply for the JSON decoder
is a ParseError like any other unreadable reply, never a RecursionError.
"""
from __future__ import annotations

import json
import re
from typing import Any, Sequence

from ..errors import ParseError

#: Longest reply parsed (characters); a longer one is a ParseError that names the cap.
MAX_REPLY_CHARS = 2_000_000

_FENCE_OPEN = re.compile(r"(?:json|JSON)?[ \t]*\n?")

#: Not strict: a JSON string may hold raw control characters (a literal newline or tab). Grammar-constrained
#: servers (llama.cpp) emit them, and rejecting such a reply would throw away a usable value.
_DECODER = json.JSONDecoder(strict=False)


def loads(text: str) -> Any:
    """json.loads that accepts raw control characters inside strings (they are kept in the value). JSON nested
    too deeply to decode raises ValueError, like any other JSON that can't be read."""
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise ValueError("the JSON is nested too deeply to read") from None


def _fenced(text: str) -> list[str]:
    """The insides of ``` fences, paired in order (an unclosed last one is left out). Linear."""
    marks = [m.start() for m in re.finditer("```", text)]
    blocks = []
    for open_, close in zip(marks[0::2], marks[1::2]):
        start = open_ + 3
        start += _FENCE_OPEN.match(text, start).end() - start
        blocks.append(text[start:close].strip())
    return blocks


def _spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every balanced {...} in `text`, by start: found in one pass that skips JSON strings
    inside braces, and in one that counts braces only (a stray quote in prose can't hide an object from
    both). Only these are decoded: a decode attempt from every `{` was quadratic."""
    spans = set(_balanced(text, strings=True)) | set(_balanced(text, strings=False))
    return sorted(spans)


def _balanced(text: str, *, strings: bool) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    stack: list[int] = []
    in_string = escaped = False
    prev = -2
    for m in re.finditer(r'[{}"\\]', text):
        ch, i = m.group(), m.start()
        if in_string:
            if escaped:
                escaped = False
                if i == prev + 1:
                    continue
            if ch == "\\":
                escaped, prev = True, i
            elif ch == '"':
                in_string = False
            continue
        if ch == '"' and stack and strings:
            in_string = True
        elif ch == "{":
            stack.append(i)
        elif ch == "}" and stack:
            spans.append((stack.pop(), i + 1))
    return spans


def _decode(text: str) -> Any:
    try:
        return loads(text)
    except ValueError:  # json.JSONDecodeError included
        return None


def _objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object in `text`, in order: the whole reply, fenced blocks, then any balanced {...} that
    decodes (the outermost one that does; its inner objects are not listed again). Work is bounded by a
    few times the reply's length."""
    found: list[dict[str, Any]] = []
    for c in [text.strip()] + _fenced(text):
        obj = _decode(c) if c.startswith("{") else None
        if isinstance(obj, dict):
            found.append(obj)
    budget = 4 * len(text) + 10_000
    covered = -1
    for start, end in _spans(text):
        if end <= covered:
            continue  # inside an object already found
        budget -= end - start
        if budget < 0:
            break
        obj = _decode(text[start:end])
        if isinstance(obj, dict):
            found.append(obj)
            covered = end
    return found


def _tag(text: str, key: str) -> str | None:
    """The text between the first <key> and the next </key> (an unclosed tag: to the end). Linear."""
    opening = re.search(rf"<{key}>", text, re.IGNORECASE)
    if opening is None:
        return None
    closing = re.compile(rf"</{key}>", re.IGNORECASE).search(text, opening.end())
    return text[opening.end(): closing.start() if closing else len(text)].strip()


def parse_reply(text: str, required: Sequence[str]) -> dict[str, Any]:
    """The first JSON object in `text` that has all `required` keys, else those keys from tags.

    Raises ParseError saying what was missing, so a repair request can quote it; a reply over
    MAX_REPLY_CHARS, or one the parser can't handle at all, is a ParseError too.
    """
    if not text or not text.strip():
        raise ParseError("the reply was empty", text)
    if len(text) > MAX_REPLY_CHARS:
        raise ParseError(f"the reply has {len(text):,} characters, over the cap of {MAX_REPLY_CHARS:,} for a reply "
                         "(textopt.optim.parse.MAX_REPLY_CHARS)", text)
    try:
        objs = _objects(text)
        for obj in objs:
            if all(k in obj for k in required):
                return obj
        tags = {k: _tag(text, k) for k in required}
    except (RecursionError, MemoryError, ValueError) as exc:
        raise ParseError(f"the reply could not be parsed ({type(exc).__name__}: {str(exc)[:200]})", text) from None
    if all(v is not None for v in tags.values()):
        return tags
    if objs:
        keys = sorted({k for o in objs for k in o})
        raise ParseError(f"the JSON object has keys {keys} but needs {list(required)}", text)
    raise ParseError(f"no JSON object with keys {list(required)} was found (and no <{required[0]}> tag)", text)


def text_field(obj: dict[str, Any], key: str) -> str:
    """obj[key] as non-empty text (numbers and lists are rendered), or ParseError."""
    value = obj.get(key)
    if isinstance(value, str):
        text = value
    elif value is None:
        text = ""
    else:
        try:
            text = json.dumps(value, ensure_ascii=False)
        except (RecursionError, ValueError):
            raise ParseError(f"'{key}' is nested too deeply to be a value", "") from None
    if not text.strip():
        raise ParseError(f"'{key}' is empty; it must hold the complete new value", json.dumps(obj))
    return text
