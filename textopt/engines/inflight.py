"""Identical requests in flight share one provider call.

Used on the textopt loop only (every provider call runs there), so a plain dict is enough. Only requests
with a cache key are shared: with the cache off, two identical requests are two samples and both are sent.
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Generic, TypeVar

T = TypeVar("T")


class InFlight(Generic[T]):
    """`await run(key, make)`: the first caller for `key` runs `make()` in its own task; callers arriving
    before it is done wait for its result. No extra task per call (this is on every cached call's path).

    A waiter that is cancelled leaves the call alone. A first caller that is cancelled cancels its call, as
    any caller's cancellation does with the cache off; the callers waiting on it then make the call
    themselves (the first of them runs it, the others wait on that one), so none of them loses its result."""

    def __init__(self) -> None:
        self._calls: dict[str, asyncio.Future[T]] = {}

    def __len__(self) -> int:
        return len(self._calls)

    async def run(self, key: str, make: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The result and whether it came from another caller's call."""
        loop = asyncio.get_running_loop()
        while (shared := self._calls.get(key)) is not None and shared.get_loop() is loop:
            try:
                return await asyncio.shield(shared), True
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if shared.cancelled() and (task is None or not task.cancelling()):
                    continue  # the first caller was cancelled, not this one: make the call here
                raise
        mine: asyncio.Future[T] = loop.create_future()
        self._calls[key] = mine
        try:
            result = await make()
        except BaseException as exc:
            if self._calls.get(key) is mine:
                del self._calls[key]
            if isinstance(exc, asyncio.CancelledError):
                mine.cancel()
            else:
                mine.set_exception(exc)
                mine.exception()  # retrieved here: no "exception was never retrieved" when nobody waited
            raise
        if self._calls.get(key) is mine:
            del self._calls[key]
        mine.set_result(result)
        return result, False
