"""Token accounting: every engine counts, and any number of `track_usage()` scopes count too."""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Iterator


@dataclass
class Usage:
    """Tokens and calls. `cached_calls` were served from the cache and cost nothing."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0
    cached_calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, prompt_tokens: int, completion_tokens: int, cached: bool) -> None:
        if cached:
            self.cached_calls += 1
            return
        self.calls += 1
        self.prompt_tokens += prompt_tokens
        self.completion_tokens += completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "calls": self.calls,
            "cached_calls": self.cached_calls,
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


def active_trackers() -> tuple[Usage, ...]:
    return _trackers.get()
