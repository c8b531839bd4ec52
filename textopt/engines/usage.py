"""Token accounting: every engine counts, and any number of `track_usage()` scopes count too."""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Iterator


@dataclass
class Usage:
    """Tokens, calls and dollars. `cached_calls` were served from the cache and cost nothing.

    cost_usd sums the calls whose price is known (litellm's cost map; local and scripted models are $0);
    cost_known turns False once a call's price was unknown, so cost_usd is then a lower bound. seconds sums
    the wall time of the provider calls (where a run's time goes; concurrent calls overlap, so it can
    exceed the elapsed time).
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cached_calls: int = 0
    cost_usd: float = 0.0
    cost_known: bool = True
    seconds: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, prompt_tokens: int, completion_tokens: int, cached: bool, cost_usd: float | None = 0.0,
            seconds: float = 0.0) -> None:
        """Count one call; `cost_usd=None` means its price is unknown."""
        if cached:
            self.cached_calls += 1
            return
        self.calls += 1
        self.seconds += seconds
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens
        if cost_usd is None:
            self.cost_known = False
        else:
            self.cost_usd += cost_usd

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "calls": self.calls,
            "cached_calls": self.cached_calls,
            "cost_usd": self.cost_usd,
            "cost_known": self.cost_known,
            "seconds": round(self.seconds, 3),
        }


_trackers: contextvars.ContextVar[tuple[Usage, ...]] = contextvars.ContextVar("textopt_trackers", default=())


@contextlib.contextmanager
def track_usage() -> Iterator[Usage]:
    """Count the tokens of every engine call made in this scope (tasks and `run_sync` threads included)."""
    usage = Usage()
    token = _trackers.set(_trackers.get() + (usage,))
    try:
        yield usage
    finally:
        _trackers.reset(token)


@contextlib.contextmanager
def counting_into(usage: Usage) -> Iterator[Usage]:
    """Count the engine calls of this scope into an existing `usage` too, as they happen (a run's live
    counter). Inside a scope that already counts into it, nothing is added, so no call is counted twice."""
    active = _trackers.get()
    if any(u is usage for u in active):  # by identity: two Usage with the same numbers compare equal
        yield usage
        return
    token = _trackers.set(active + (usage,))
    try:
        yield usage
    finally:
        _trackers.reset(token)


def active_trackers() -> tuple[Usage, ...]:
    return _trackers.get()
