"""The parent's side: a warm worker process, the `Sandbox` that owns it (time limits, restarts), the
default sandbox, and the entry points `@trace` uses (`run_isolated`, `arun_isolated`, `check_isolation`)."""
from __future__ import annotations

import asyncio
import atexit
import builtins
import os
import pickle
import select
import signal
import struct
import subprocess
import sys
import threading
import time
import traceback
import types
from typing import Any, Callable

from .boundary import _load, build_job
from . import common
from .common import (
    DEFAULT_MEMORY_LIMIT, IMPORT_TIMEOUT, MAX_REPLY_BYTES, OPT_OUT, START_TIMEOUT, IsolatedCodeError, IsolationError, clean_environ, minimal_environ,
)
from .worker import _BOOT, _LAUNCHER, _run_job


# -- the parent's side ---------------------------------------------------------------------------
class _Dead(Exception):
    pass


def _exit_text(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            sig = signal.Signals(-code).name
        except ValueError:
            sig = f"signal {-code}"
        hint = " (killed: out of memory?)" if -code == signal.SIGKILL else ""
        return f"was killed by {sig}{hint}"
    return f"exited with code {code} (os._exit, or a crash in C code)"


class _Worker:
    """One worker (behind its launcher) and the two pipes to it. Every read and write of the parent has a
    deadline, and a reply can't declare more than MAX_REPLY_BYTES: a worker that stalls, lies about a length
    or floods the pipe is killed, never waited on."""

    def __init__(self, memory_limit: int, env: dict[str, str], namespaces: bool) -> None:
        child_reads, self.tx = os.pipe()
        self.rx, child_writes = os.pipe()
        lifeline, self.lifeline = os.pipe()  # the launcher reads EOF when this process is gone
        worker = [sys.executable, "-c", _BOOT, str(child_reads), str(child_writes), str(memory_limit)]
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _LAUNCHER, str(lifeline), "1" if namespaces else "0", "--", *worker],
                pass_fds=(child_reads, child_writes, lifeline), env=env, stdin=subprocess.DEVNULL,
                start_new_session=True)
        except BaseException:
            for fd in (self.tx, self.rx, self.lifeline):
                os.close(fd)
            raise
        finally:
            for fd in (child_reads, child_writes, lifeline):
                os.close(fd)
        os.set_blocking(self.tx, False)
        self.closed = False
        self.imported: set[str] = set()
        self.mode = ""
        try:
            self._send(pickle.dumps(list(sys.path)), time.monotonic() + START_TIMEOUT)
            reply = self.wait(START_TIMEOUT)
        except (_Dead, OSError) as exc:
            self.kill()
            raise IsolationError(f"the isolated worker process failed to start: it {exc}; see its output above") from None
        if reply is None or reply[0] != "ready":
            self.kill()
            raise IsolationError(f"the isolated worker process did not start within {START_TIMEOUT:g} s")
        self.mode = reply[2]

    def _read(self, n: int, deadline: float) -> bytes | None:
        """Exactly n bytes from the worker, None when the deadline passes first; EOFError when it is gone."""
        parts: list[bytes] = []
        poller = select.poll()
        poller.register(self.rx, select.POLLIN)
        while n:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                return None
            chunk = os.read(self.rx, min(n, 1 << 20))
            if not chunk:
                raise EOFError
            parts.append(chunk)
            n -= len(chunk)
        return b"".join(parts)

    def _frame(self, deadline: float) -> bytes | None:
        head = self._read(8, deadline)
        if head is None:
            return None
        (size,) = struct.unpack("!Q", head)
        if size > MAX_REPLY_BYTES:
            raise _Dead(f"declared a reply of {size:,} bytes, over the cap of {MAX_REPLY_BYTES // 2**20} MiB "
                        "(textopt.sandbox.MAX_REPLY_BYTES)")
        return self._read(size, deadline)

    def _send(self, data: bytes, deadline: float) -> None:
        """Write a frame; OSError when the worker is gone, TimeoutError when it stops reading."""
        view = memoryview(struct.pack("!Q", len(data)) + data)
        poller = select.poll()
        poller.register(self.tx, select.POLLOUT)
        while view:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise TimeoutError("the isolated worker stopped reading its requests")
            try:
                view = view[os.write(self.tx, view):]
            except BlockingIOError:
                continue

    def wait(self, timeout: float) -> Any:
        """The next reply, whole, within `timeout` (None when it isn't there in time); raises _Dead when the
        worker has gone or sent nonsense. An "ok" reply comes back as ("ok", pickled result, exiting?)."""
        deadline = time.monotonic() + timeout
        try:
            data = self._frame(deadline)
            if data is None:
                return None
            reply = _load(data, None)
            if reply[0] == "ok" and reply[2]:
                body = self._frame(deadline)
                return None if body is None else ("ok", body, reply[1])
            return reply
        except (EOFError, OSError) as exc:
            try:
                code = self.proc.wait(2)
            except subprocess.TimeoutExpired:
                code = None
            self.kill()
            raise _Dead(_exit_text(code) if code is not None else f"broke its pipe ({type(exc).__name__})") from None
        except _Dead:
            self.kill()
            raise
        except Exception as exc:  # unpickling refused or failed: the worker wrote something we didn't ask for
            self.kill()
            raise _Dead(f"sent an unreadable reply ({type(exc).__name__}: {exc})") from None

    def request(self, message: tuple, timeout: float) -> Any:
        data = pickle.dumps(message)
        try:
            self._send(data, time.monotonic() + max(timeout, 5.0))
        except TimeoutError:
            return None
        except OSError:
            return self.wait(0.5) or self.wait(0)  # the worker is gone: wait() says how
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the launcher, the worker and anything they started
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        if not self.closed:
            self.closed = True
            for fd in (self.tx, self.rx, self.lifeline):
                os.close(fd)


_exception_types: dict[tuple[str, str], type] = {}


def _rebuild(desc: dict[str, Any], module: str | None) -> BaseException:
    """The worker's exception as one the caller can catch: builtin types rebuilt, others named like the original."""
    cls = getattr(builtins, desc["type"], None) if desc["module"] == "builtins" else None
    exc: BaseException | None = None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            args = _load(desc["args"], module) if desc["args"] is not None else (desc["message"],)
            exc = cls(*args) if not issubclass(cls, MemoryError) else cls(desc["message"])
        except Exception:
            exc = cls(desc["message"])
    elif (desc["module"], desc["type"]) == (__name__, "IsolationError"):
        exc = IsolationError(desc["message"])
    elif not desc["fatal"]:
        key = (desc["module"], desc["type"])
        if key not in _exception_types:
            _exception_types[key] = type(desc["type"].rsplit(".", 1)[-1], (IsolatedCodeError,), {"__module__": desc["module"]})
        exc = _exception_types[key](desc["message"])
    if exc is None:  # SystemExit, KeyboardInterrupt, GeneratorExit, ...: never re-raised as such in the caller
        what = {"SystemExit": f"sys.exit({desc['exit_code']!r})", "KeyboardInterrupt": "KeyboardInterrupt"}.get(desc["type"], desc["type"])
        exc = IsolationError(f"the code raised {what} in the isolated worker, which was stopped and will be replaced"
                             + (f": {desc['message']}" if desc["message"] and desc["type"] != "SystemExit" else ""))
    exc.textopt_frames = [traceback.FrameSummary(f, n, name, line=line) for f, n, name, line in desc["frames"]]
    return exc


class Sandbox:
    """A pool of warm worker processes for isolated code, all with the same memory limit and environment.

    env: the worker's environment (default: `minimal_environ()`, PATH, HOME, locale...); a given dict is passed
    less the variables that look like secrets. namespaces=True (default) runs each worker in its own user, pid
    and mount namespaces where Linux allows it (see `mode`), False never tries."""

    def __init__(self, *, memory_limit: int = DEFAULT_MEMORY_LIMIT, max_workers: int = 2,
                 env: dict[str, str] | None = None, namespaces: bool = True) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.memory_limit, self.max_workers = int(memory_limit), max_workers
        self._env = env
        self.namespaces = bool(namespaces)
        #: How the latest worker is kept apart: "namespaces" (own user/pid/mount namespaces: it can't see or
        #: signal this process) or "session" (own session behind a launcher only); "" before the first.
        self.mode = ""
        self._idle: list[_Worker] = []
        self._live = 0
        self._cond = threading.Condition()
        self.started = 0  # workers started so far (a count that tests and benchmarks read)

    def _checkout(self) -> _Worker:
        with self._cond:
            while True:
                while self._idle:
                    worker = self._idle.pop()
                    if worker.proc.poll() is None:
                        return worker
                    worker.kill()  # closes its pipes
                    self._live -= 1
                if self._live < self.max_workers:
                    self._live += 1
                    break
                self._cond.wait()
        try:
            env = minimal_environ() if self._env is None else clean_environ(self._env)
            worker = _Worker(self.memory_limit, env, self.namespaces)
        except BaseException:
            self._release(None)
            raise
        self.started += 1
        self.mode = worker.mode
        _register(self)
        return worker

    def _release(self, worker: _Worker | None) -> None:
        with self._cond:
            if worker is not None and worker.proc.poll() is None:
                self._idle.append(worker)
            else:
                self._live -= 1
            self._cond.notify()

    def call(self, job: dict[str, Any], timeout: float) -> Any:
        """Run a job from `build_job`; returns the result or raises (an error of the code, TimeoutError, IsolationError)."""
        if common.IN_WORKER:  # a traced function called from isolated code: already inside a worker and its limit
            return _run_job(job, {})
        name = job["name"]
        worker = self._checkout()
        keep = False
        try:
            module = job["module"]
            if module and module not in worker.imported:
                reply = worker.request(("import", (module, list(sys.path))), max(IMPORT_TIMEOUT, timeout))
                if reply is None:
                    raise IsolationError(f"importing {module!r} in the isolated worker took over "
                                         f"{max(IMPORT_TIMEOUT, timeout):g} s; {OPT_OUT}")
                if reply[0] == "error":
                    d = reply[1]
                    raise IsolationError(
                        f"importing {name}'s module {module!r} in the isolated worker failed with {d['type']}: "
                        f"{d['message'].splitlines()[0] if d['message'] else ''} (the worker has a minimal environment: "
                        f"textopt.sandbox.Sandbox(env=...) gives it more); {OPT_OUT}")
                worker.imported.add(module)
            reply = worker.request(("run", job), timeout)
            if reply is None:
                raise TimeoutError(
                    f"{name} did not finish within {timeout:g} s (time limit of trainable code; raise it with "
                    f"@trace(trainable=True, timeout=...)) - an endless loop or a very slow step? The isolated worker "
                    "was killed and will be replaced")
            kind, body = reply[:2]
            if kind == "ok":
                keep = not reply[2]
                try:
                    return _load(body, module)
                except Exception as exc:  # refused, or a constructor failed on what it was given
                    raise IsolationError(f"the result of {name} was refused: {exc}. Isolated code returns plain values "
                                         f"(str, numbers, bool, None, containers, bytes) or classes of its own module; {OPT_OUT}") from None
            keep = not body["fatal"]
            raise _rebuild(body, module)
        except _Dead as dead:
            raise IsolationError(f"the isolated worker running {name} {dead}; it will be replaced") from None
        finally:
            if not keep:
                worker.kill()
            self._release(worker)

    async def acall(self, job: dict[str, Any], timeout: float) -> Any:
        """`call` off the event loop."""
        return await asyncio.to_thread(self.call, job, timeout)

    def close(self) -> None:
        """Stop the idle workers (busy ones stop when their call ends or times out)."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._live -= len(idle)
        for worker in idle:
            worker.kill()


_registered: list[Sandbox] = []
_default: Sandbox | None = None
_default_lock = threading.Lock()


def _register(box: Sandbox) -> None:
    if not _registered:
        atexit.register(lambda: [b.close() for b in _registered])
    if box not in _registered:
        _registered.append(box)


def default_sandbox() -> Sandbox:
    """The process-wide pool used by `@trace(trainable=True)` (created on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Sandbox()
        return _default


ISOLATION_MODES = ("process", "thread", "none")


def check_isolation(isolation: "str | Sandbox | None", *, trainable: bool, timeout: float | None) -> "str | Sandbox":
    """How a traced function's code runs: "process" (default for trainable code: a worker of the default
    pool), a Sandbox (a worker of that pool), "thread" (this process, with the time limit) or "none"
    (this process, called directly, no limit). Raises ValueError for combinations that mean nothing."""
    if isolation is None:
        return "process" if trainable else "none"
    if not isinstance(isolation, Sandbox) and isolation not in ISOLATION_MODES:
        raise ValueError(f'isolation must be "process", "thread", "none" or a textopt.sandbox.Sandbox, got {isolation!r}')
    if not trainable and isolation != "none":
        raise ValueError("isolation applies to trainable code: use @trace(trainable=True, isolation=...)")
    if isolation == "none" and timeout is not None:
        raise ValueError('isolation="none" calls the code directly, without a time limit; '
                         'use isolation="thread" for a time limit in this process')
    return isolation


def _pool(sandbox: "Sandbox | str | None") -> Sandbox:
    return sandbox if isinstance(sandbox, Sandbox) else default_sandbox()


def run_isolated(fn: Callable[..., Any], *, name: str, source: str, is_async: bool, args: tuple, kwargs: dict,
                 timeout: float, sandbox: Sandbox | str | None = None) -> Any:
    """Compile `source` and call its function in a worker process: the one entry point @trace uses.
    `fn` is the original function (its module, closure and globals say what the code may see)."""
    job = build_job(fn, name=name, source=source, is_async=is_async, args=args, kwargs=kwargs)
    return _pool(sandbox).call(job, timeout)


async def arun_isolated(fn: Callable[..., Any], *, name: str, source: str, is_async: bool, args: tuple, kwargs: dict,
                        timeout: float, sandbox: Sandbox | str | None = None) -> Any:
    """`run_isolated` for async callers (the event loop stays free)."""
    job = build_job(fn, name=name, source=source, is_async=is_async, args=args, kwargs=kwargs)
    return await _pool(sandbox).acall(job, timeout)
