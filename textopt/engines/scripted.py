"""An engine that answers from a script: fast, deterministic, and it records every request.

For unit tests of logic (graph, backward, parsing, scheduling), never as a stand-in for a real model.
"""
from __future__ import annotations

import asyncio
import threading
from typing import Any, Callable, Sequence

from .base import Engine
from .types import Completion, Message, Request

Reply = str | BaseException | Sequence[str | BaseException] | Callable[[list[Message]], str | BaseException]


class ScriptedEngine(Engine):
    """Replies from a str (always the same), a list (in order) or a callable(messages) -> str.

    latency (seconds) is slept per call, inside the concurrency limit, so that scheduling can be
    measured. `.calls` holds every request's messages; `.requests` the full requests. A reply that
    is an Exception instance is raised instead of returned (to script outages). Calls cost $0.
    """

    kind = "scripted"
    free = True

    def __init__(self, reply: Reply = "", *, latency: float = 0.0, model: str = "scripted", **kwargs: Any) -> None:
        kwargs.setdefault("cache", False)
        kwargs.setdefault("retry_wait", 0.0)
        super().__init__(model, **kwargs)
        self.reply = reply
        self.latency = latency
        self.calls: list[list[Message]] = []
        self.requests: list[Request] = []
        self._index = 0
        self._lock = threading.Lock()
        self.max_in_flight = 0
        self._in_flight = 0

    def _next(self, messages: list[Message]) -> Any:
        if callable(self.reply):
            return self.reply(messages)
        if isinstance(self.reply, (str, BaseException)):
            return self.reply
        with self._lock:
            if self._index >= len(self.reply):
                raise IndexError(
                    f"ScriptedEngine ran out of replies after {len(self.reply)} calls; give more replies or a callable"
                )
            out = self.reply[self._index]
            self._index += 1
        return out

    async def _acomplete(self, request: Request) -> Completion:
        with self._lock:
            self.calls.append(request.messages)
            self.requests.append(request)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            out = self._next(request.messages)
            if isinstance(out, BaseException):
                raise out
            text = str(out)
        finally:
            with self._lock:
                self._in_flight -= 1
        prompt_tokens = sum(len(m["content"]) for m in request.messages) // 4 + 1
        return Completion(text=text, prompt_tokens=prompt_tokens, completion_tokens=len(text) // 4 + 1, model=self.model)
