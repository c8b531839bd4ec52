"""How any value reads wherever an LLM sees it (prompts, feedback, traces): one function, `as_text`."""
from __future__ import annotations

import json
from typing import Any

from .image import Image


def as_text(value: Any) -> str:
    """How a value reads wherever an LLM sees it: str as is, JSON when it can be, else repr."""
    if isinstance(value, str):
        return value
    if isinstance(value, Image):  # an image reads as a short description (its bytes go to the model as image content)
        return value.describe()
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(value)
