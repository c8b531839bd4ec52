"""Identical requests in flight share one provider call.

Used on the textopt loop only (every provider call runs there), so a plain dict is enough. Only requests
with a cache key are shared: with the cache off, two identical requests are two samples and both are sent.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, TypeVar

T = TypeVar("T")


class InFlight(Generic[T]):
    """`await run(key, make)`: the first caller for `key` runs `make()`; callers arriving before it is done
    await the same task. A cancelled waiter doesn't cancel the shared call (its result still gets cached)."""

    def __init__(self) -> None:
        self._tasks: dict[str, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    async def run(self, key: str, make: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The result and whether it came from another caller's call."""
        task = self._tasks.get(key)
        shared = task is not None and task.get_loop() is asyncio.get_running_loop()
        if task is None or not shared:
            task = asyncio.ensure_future(make())
            self._tasks[key] = task
            task.add_done_callback(lambda t: self._done(key, t))
        return await asyncio.shield(task), shared

    def _done(self, key: str, task: asyncio.Task[T]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved here, so no "Task exception was never retrieved" if every waiter left
