"""Calling user functions (forwards, metrics, losses) that may be sync or async.

An async function is awaited on the running loop. A sync one runs on a worker thread, so a slow or blocking
metric (a sandboxed test run, an HTTP call) never stalls the loop and a batch stays concurrent. The thread
hop costs about 0.2 ms of CPU per call, which is most of an evaluation's own overhead when the metric is a
string comparison; a sync function marked `nonblocking` is called on the loop directly instead.
"""
from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
from concurrent.futures import Executor
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: The attribute `nonblocking` sets. textopt's own quick metrics set it directly (datasets.py is loadable
#: on its own, without this module).
NONBLOCKING = "__textopt_nonblocking__"


def nonblocking(fn: F) -> F:
    """Mark a sync function as quick and non-blocking (no I/O, no sleep, microseconds of work), so textopt
    calls it on the event loop instead of a worker thread. For metrics like an exact-match check; never for
    one that runs code, reads files or calls a model, since while it runs nothing else in the loop does.

        @to.nonblocking
        def metric(example, output):
            return output.text.strip() == example["answer"]
    """
    setattr(fn, NONBLOCKING, True)
    return fn


def is_async(fn: Any) -> bool:
    """A coroutine function, a partial of one, or an object whose __call__ is one."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None))


def is_nonblocking(fn: Any) -> bool:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return bool(getattr(fn, NONBLOCKING, False))


async def call(fn: Callable[..., Any], *args: Any, pool: Executor | None = None) -> Any:
    """fn(*args), awaited if async, on the loop if marked `nonblocking`, else on a worker thread of `pool`
    (the loop's default executor when None) with the caller's contextvars, so usage tracking and
    `to.using` follow it. An awaitable result is awaited too."""
    if is_async(fn):
        result = await fn(*args)
    elif is_nonblocking(fn):
        result = fn(*args)
    else:
        ctx = contextvars.copy_context()
        result = await asyncio.get_running_loop().run_in_executor(pool, functools.partial(ctx.run, fn, *args))
    while inspect.isawaitable(result):
        result = await result
    return result
