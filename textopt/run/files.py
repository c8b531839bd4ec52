"""The files of a run directory: their names, and JSON that is scrubbed of secrets before it is written."""
from __future__ import annotations

import json
from typing import Any, Mapping

from ..secrets import mask, scrub_url

CHECKPOINT = "checkpoint.json"
BACKUP = "checkpoint.prev.json"
SPEC = "spec.json"
LOG = "log.jsonl"
LOCK = ".lock"
EVALS = "evals"
FORMAT = "textopt.checkpoint"
VERSION = 2
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens", "calls", "cached_calls")


# -- secrets --------------------------------------------------------------------------------------
def scrub_text(text: str) -> str:
    """Mask known secret values in one string: environment keys, configured keys, URL passwords
    (textopt.secrets.mask). By value only: a prompt that merely looks like a key is written unchanged."""
    return mask(text)


def scrub(obj: Any) -> Any:
    """`scrub_text` applied to every string (keys included) of a JSON-like structure."""
    if isinstance(obj, str):
        return scrub_text(obj)
    if isinstance(obj, Mapping):
        return {scrub(k) if isinstance(k, str) else k: scrub(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub(v) for v in obj]
    return obj


def _dumps(obj: Any, indent: int | None = 2) -> str:
    """JSON text that can always be written as UTF-8 (a lone surrogate falls back to \\u escapes)."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, indent=indent, ensure_ascii=True, default=str)
    return text


def scrubbed_json(obj: Any, indent: int | None = 2, *, urls: bool = False) -> str:
    """`obj` as JSON text with secrets masked: the text is scrubbed in one pass (a masked value never
    contains a quote, so the JSON stays valid; if it ever didn't, every string is scrubbed one by one).
    urls=True (a spec: configuration, not parameter values) also masks any user:password@ of a URL."""
    text = scrub_text(_dumps(obj, indent))
    try:
        json.loads(text)
    except ValueError:
        text = _dumps(scrub(obj), indent)
    if urls:
        text = scrub_url(text) or text
    return text


