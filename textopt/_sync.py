"""Run a coroutine from sync code, also inside a notebook whose event loop is already running.

The async path is the real one; every sync entry point goes through `run_sync`.
"""
from __future__ import annotations

import asyncio
import contextvars
import threading
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion and return its result.

    Without a running loop this is `asyncio.run`. With one (Jupyter, IPython), the coroutine runs
    on a fresh loop in a helper thread, with the caller's contextvars, and this call blocks until
    it is done: no nest_asyncio patching, and the notebook's own loop is never re-entered.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)

    ctx = contextvars.copy_context()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = ctx.run(asyncio.run, coro)
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="textopt-run-sync", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
