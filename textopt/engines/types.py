"""The one request/response model every engine shares: a `Request` in, a `Completion` out."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]


@dataclass
class Completion:
    """What an engine returns: the text, the tokens and dollars it cost, and whether the cache served it.

    cost_usd is None when the model's price is unknown (cached replies cost 0). seconds is the wall time
    of the provider call once the engine's own concurrency limit let it through (0 for a cached reply).
    """

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    model: str = ""
    cost_usd: float | None = None
    seconds: float = 0.0


@dataclass
class Request:
    """What was asked: chat messages plus the options that change the answer.

    timeout is set per attempt by the retry policy (seconds this attempt may take); it never enters the cache key.
    draw numbers identical requests sampled at temperature > 0 (`cache.Draws`): 0 for the first.
    """

    messages: list[Message]
    json_schema: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    draw: int = 0
