"""One long-lived textopt event loop, in a daemon thread, behind every sync entry point.

The async path is the real one. `run_sync` submits a coroutine to the textopt loop and blocks for its result,
so a script, a worker thread and a notebook (whose own loop is already running) all behave the same: every
sync call lands on the same loop, where engines keep one client, one connection pool and one concurrency
limit for their whole life. The loop starts on first use, never at import, and again after a fork.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import os
import threading
import weakref
from typing import Any, Callable, Coroutine, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None
_pid: int | None = None


class LoopReentryError(RuntimeError):
    """A sync textopt call was made on the textopt loop's own thread, where blocking would deadlock."""


def textopt_loop() -> asyncio.AbstractEventLoop:
    """The textopt event loop, started (in a daemon thread named "textopt-loop") on first use."""
    global _loop, _thread, _pid
    loop, thread = _loop, _thread
    if loop is not None and thread is not None and thread.is_alive() and _pid == os.getpid():
        return loop
    with _lock:
        if _loop is None or _thread is None or not _thread.is_alive() or _pid != os.getpid():
            new = asyncio.new_event_loop()
            started = threading.Event()

            def serve() -> None:
                asyncio.set_event_loop(new)
                new.call_soon(started.set)
                while True:
                    try:
                        new.run_forever()
                        return
                    except (KeyboardInterrupt, SystemExit):
                        # A task raised it (a sync metric interrupted in its thread, say): asyncio re-raises it
                        # out of the loop, which would leave every waiting caller hanging. The task holds it
                        # as its result, so it still reaches whoever awaits it (and run_sync's caller):
                        # keep serving.
                        continue

            thread = threading.Thread(target=serve, name="textopt-loop", daemon=True)
            thread.start()
            started.wait()
            _loop, _thread, _pid = new, thread, os.getpid()
        return _loop


def on_textopt_loop() -> bool:
    """True when called from the textopt loop's own thread."""
    return _thread is not None and _pid == os.getpid() and threading.current_thread() is _thread


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the textopt loop, with the caller's contextvars, and block until it is done.

    Works from any thread, with or without a running loop of the caller's own (Jupyter, IPython).
    Ctrl-C (or any BaseException while waiting) cancels the coroutine and waits for it to wind down.
    From inside the textopt loop's thread this raises LoopReentryError: blocking there would deadlock;
    async code there must `await` the async form (e.g. `acomplete`, `acall`, `abackward`, `astep`) instead.
    """
    if on_textopt_loop():
        coro.close()
        raise LoopReentryError(
            "a sync textopt call (e.g. engine.complete, llm(x), loss.backward(), optimizer.step()) was made on "
            "the textopt event loop's own thread, where waiting for it would deadlock; from async code, await "
            "the async form instead (acomplete, acall, abackward, astep)"
        )
    loop = textopt_loop()
    ctx = contextvars.copy_context()
    done: concurrent.futures.Future[Any] = concurrent.futures.Future()
    tasks: list[asyncio.Task[Any]] = []

    def start() -> None:
        task = loop.create_task(_guarded(coro), context=ctx)
        tasks.append(task)
        task.add_done_callback(lambda t: _settle(t, done))

    loop.call_soon_threadsafe(start)
    try:
        ok, value = done.result()
    except BaseException:
        if not done.done():  # interrupted while waiting: cancel the work and give it a moment to wind down
            loop.call_soon_threadsafe(lambda: [t.cancel() for t in tasks])
            with contextlib.suppress(BaseException):  # a second Ctrl-C stops the waiting
                concurrent.futures.wait([done], timeout=30)
        raise
    if not ok:
        raise value
    return value


async def run_on_textopt_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Await `coro` on the textopt loop from any loop: directly when already there, else handed over (with
    the caller's contextvars) and awaited without blocking the caller's loop. Cancelling the caller cancels it.

    Every engine call from a user's own loop comes through here, so the hand-over is kept cheap: no
    concurrent.futures.Future per call, and each loop is woken once per batch of hand-overs, not per call
    (`_Mailbox`)."""
    loop = textopt_loop()
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        return await coro
    if running is None:  # not in a coroutine driven by an asyncio loop: the old, general path
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))
    waiter: asyncio.Future[T] = running.create_future()
    reply_to = _mailbox(running)
    started: list[asyncio.Task[T]] = []

    def start() -> None:
        if waiter.cancelled():  # the caller gave up before the work began
            coro.close()
            return
        task = loop.create_task(coro, context=ctx)
        started.append(task)
        task.add_done_callback(lambda t: reply_to.post(_deliver, t, waiter))

    ctx = contextvars.copy_context()
    _mailbox(loop).post(start)
    try:
        return await waiter
    except asyncio.CancelledError:
        _mailbox(loop).post(lambda: [t.cancel() for t in started])
        raise


def _deliver(task: asyncio.Task[T], waiter: asyncio.Future[T]) -> None:
    """On the caller's loop: the finished task's outcome into the caller's future."""
    if waiter.done():
        if not task.cancelled():
            task.exception()  # retrieved: the caller left, nobody else will
        return
    if task.cancelled():
        waiter.cancel()
    elif task.exception() is not None:
        waiter.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        waiter.set_result(task.result())


class _Mailbox:
    """Callbacks for one loop, posted from other threads: the loop is woken (a write to its self-pipe) only
    when the box goes from empty to not empty, so a burst of hand-overs costs one wake-up."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # weak: the box lives in a WeakKeyDictionary keyed by this loop
        self._items: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._lock = threading.Lock()
        self._armed = False

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop()
        with self._lock:
            if loop is None or loop.is_closed():  # nobody is waiting there any more
                self._items.clear()
                return
            self._items.append((fn, args))
            if self._armed:
                return
            self._armed = True
        try:
            loop.call_soon_threadsafe(self._drain)  # in a fresh copy of a context: one Context can't run in two threads
        except RuntimeError:  # closed in the meantime
            with self._lock:
                self._items.clear()

    def _drain(self) -> None:
        with self._lock:
            items, self._items, self._armed = self._items, [], False
        for fn, args in items:
            try:
                fn(*args)
            except Exception as exc:  # one bad callback must not lose the others' results
                asyncio.get_running_loop().call_exception_handler(
                    {"message": "textopt hand-over callback failed", "exception": exc})


_mailboxes: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox]" = weakref.WeakKeyDictionary()


def _mailbox(loop: asyncio.AbstractEventLoop) -> _Mailbox:
    box = _mailboxes.get(loop)
    if box is None:
        with _lock:
            box = _mailboxes.get(loop)
            if box is None:
                box = _mailboxes[loop] = _Mailbox(loop)
    return box


async def _guarded(coro: Coroutine[Any, Any, T]) -> tuple[bool, Any]:
    """KeyboardInterrupt/SystemExit escaping a task would stop the loop itself: carry them to the caller."""
    try:
        return True, await coro
    except (KeyboardInterrupt, SystemExit) as exc:
        return False, exc


def _settle(task: asyncio.Task[Any], done: concurrent.futures.Future[Any]) -> None:
    if done.done():
        return
    if task.cancelled():
        done.cancel()
        done.set_running_or_notify_cancel()
    elif task.exception() is not None:
        done.set_exception(task.exception())
    else:
        done.set_result(task.result())


def _after_fork() -> None:
    global _loop, _thread, _pid
    _loop, _thread, _pid = None, None, None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def sync_twin(async_fn: Callable[..., Coroutine[Any, Any, T]], doc: str | None = None) -> Callable[..., T]:
    """The sync twin of an async function or method: the same arguments, run to completion with `run_sync`
    (so it works in a script, in a worker thread and inside a running event loop, e.g. a notebook's).

        class Trainer:
            async def afit(self) -> History: ...
            fit = sync_twin(afit)

    A method's twin looks the async method up on the instance at call time, so a subclass that overrides
    `afit` (or `acall`, `abackward`...) gets its own override from the inherited sync name."""
    name = async_fn.__name__
    method = "." in async_fn.__qualname__ and not async_fn.__qualname__.endswith(f"<locals>.{name}")

    @functools.wraps(async_fn)
    def twin(*args: Any, **kwargs: Any) -> T:
        if method:
            return run_sync(getattr(args[0], name)(*args[1:], **kwargs))
        return run_sync(async_fn(*args, **kwargs))

    twin.__doc__ = doc or f"Sync `{name}`: the same arguments, run to completion (works inside a running event loop too)."
    twin.__name__ = name[1:] if name.startswith("a") else name
    twin.__qualname__ = async_fn.__qualname__.rsplit(".", 1)[0] + "." + twin.__name__ if method else twin.__name__
    return twin
