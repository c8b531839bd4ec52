"""Tolerant parsing of structured replies: strict JSON, fenced JSON, JSON amid prose, or <key>...</key> tags."""
from __future__ import annotations

import json
import re
from typing import Any, Sequence

from ..errors import ParseError

_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)

#: Not strict: a JSON string may hold raw control characters (a literal newline or tab). Grammar-constrained
#: servers (llama.cpp) emit them, and rejecting such a reply would throw away a usable value.
_DECODER = json.JSONDecoder(strict=False)


def loads(text: str) -> Any:
    """json.loads that accepts raw control characters inside strings (they are kept in the value)."""
    return _DECODER.decode(text)


def _objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object in `text`, in order: the whole reply, fenced blocks, then any `{` that decodes."""
    found: list[dict[str, Any]] = []
    stripped = text.strip()
    candidates = [stripped] + [m.group(1).strip() for m in _FENCE.finditer(text)]
    for c in candidates:
        try:
            obj = loads(c)
        except (json.JSONDecodeError, ValueError):
            continue
        if isinstance(obj, dict):
            found.append(obj)
    i = text.find("{")
    while i != -1:
        try:
            obj, end = _DECODER.raw_decode(text, i)
        except (json.JSONDecodeError, ValueError):
            i = text.find("{", i + 1)
            continue
        if isinstance(obj, dict):
            found.append(obj)
        i = text.find("{", end)
    return found


def _tag(text: str, key: str) -> str | None:
    m = re.search(rf"<{key}>(.*?)</{key}>", text, re.DOTALL | re.IGNORECASE)
    if m is None:  # an unclosed tag at the end of a reply cut short
        m = re.search(rf"<{key}>(.*)\Z", text, re.DOTALL | re.IGNORECASE)
    return m.group(1).strip() if m else None


def parse_reply(text: str, required: Sequence[str]) -> dict[str, Any]:
    """The first JSON object in `text` that has all `required` keys, else those keys from tags.

    Raises ParseError saying what was missing, so a repair request can quote it.
    """
    if not text or not text.strip():
        raise ParseError("the reply was empty", text)
    objs = _objects(text)
    for obj in objs:
        if all(k in obj for k in required):
            return obj
    tags = {k: _tag(text, k) for k in required}
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
        text = json.dumps(value, ensure_ascii=False)
    if not text.strip():
        raise ParseError(f"'{key}' is empty; it must hold the complete new value", json.dumps(obj))
    return text
