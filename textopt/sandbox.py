"""Run LLM-written code in a separate, warm worker process, so that what it does can't end or wedge ours.

Why a process: code an optimizer writes can loop forever at module level, call sys.exit or os._exit,
raise KeyboardInterrupt, catch BaseException to dodge a thread's time limit, allocate until the
machine swaps, or read API keys from os.environ. In a worker process each of these becomes an error
the caller can record: the worker is killed (SIGKILL to its process group) and a fresh one starts on
the next call.

What the worker is:
- a new interpreter started with exec (subprocess, never a fork of a process that has threads), in its
  own session (Ctrl-C in the terminal reaches only the parent), with stdin closed and only the two
  pipe ends it talks over (every other file descriptor of the parent stays closed to it);
- started with an environment that has no secrets: every variable whose name contains KEY, TOKEN,
  SECRET, PASSWORD or CREDENTIAL, or whose value holds credentials in a URL, is left out. The worker
  is *started* with this environment (not cleaned afterwards), so /proc/self/environ has no key either;
  this is why we use subprocess rather than multiprocessing, whose spawn passes the parent's environment;
- limited to `memory_limit` bytes of address space (RLIMIT_AS), no core dumps;
- warm: it is reused between calls (its start-up, ~0.3 s, is paid once) and keeps what it imported.

What the isolated code sees: builtins; the function's module, imported by name in the worker when it
is an importable module (so module globals are the worker's own import, not the parent's current
values); for a function of `__main__` (a script or notebook) instead the globals its code names, sent
as pickled copies (modules by name); closure values it names, as pickled copies. Arguments are pickled
in; the result is pickled out and read back with a restricted unpickler that only builds plain values
(str, numbers, containers, bytes, datetime, Decimal...) and classes of the function's own module, so a
result can't run code in the parent when it is unpickled. Whatever can't cross the boundary is a clear
IsolationError that says how to opt out (`isolation="thread"` or `"none"`).

It is not a security sandbox: the code still runs as the user, with the user's file system and network.
"""
from __future__ import annotations

import asyncio
import ast
import atexit
import builtins
import functools
import io
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import types
from typing import Any, Callable

from .errors import TextoptError

#: Environment variables whose name contains one of these (case-insensitive) don't reach the worker.
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")
_URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@", re.IGNORECASE)
#: Default address-space limit of a worker (bytes).
DEFAULT_MEMORY_LIMIT = 2 * 1024**3
#: Seconds a worker may take to start, and to import the function's module (user code, not LLM code).
START_TIMEOUT = 60.0
IMPORT_TIMEOUT = 60.0
#: Largest reply (bytes) the parent reads from a worker.
MAX_REPLY_BYTES = 256 * 1024**2
OPT_OUT = 'use @trace(trainable=True, isolation="thread") to run the code in this process with a time limit, or isolation="none"'

_IN_WORKER = False


class IsolationError(TextoptError):
    """Isolated code couldn't run or ended the worker: an exit, a crash, a value that can't cross the process boundary."""


class IsolatedCodeError(Exception):
    """Stands in for an exception class of the isolated code that the parent doesn't rebuild (named like the original)."""


def clean_environ(environ: dict[str, str] | None = None) -> dict[str, str]:
    """`environ` (default os.environ) without variables that look like secrets, by name or by a URL with credentials."""
    env = dict(os.environ if environ is None else environ)
    return {k: v for k, v in env.items()
            if not any(m in k.upper() for m in SECRET_MARKERS) and not _URL_CREDENTIALS.search(v)}


# -- what crosses the boundary -------------------------------------------------------------------
_SAFE_BUILTINS = {"str", "bytes", "bytearray", "int", "float", "complex", "bool", "list", "tuple", "dict", "set",
                  "frozenset", "slice", "range"}
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"), ("collections", "deque"), ("collections", "Counter"), ("collections", "defaultdict"),
    ("datetime", "date"), ("datetime", "datetime"), ("datetime", "time"), ("datetime", "timedelta"),
    ("datetime", "timezone"), ("decimal", "Decimal"), ("fractions", "Fraction"), ("copyreg", "_reconstructor"),
}


class _ResultUnpickler(pickle.Unpickler):
    """Builds plain values, and classes defined in `module` (the function's own); anything else is refused."""

    def __init__(self, data: bytes, module: str | None) -> None:
        super().__init__(io.BytesIO(data))
        self.module = module

    def find_class(self, module: str, name: str) -> Any:
        if module == "builtins" and (name in _SAFE_BUILTINS or (
                isinstance(getattr(builtins, name, None), type) and issubclass(getattr(builtins, name), Exception))):
            return getattr(builtins, name)
        if (module, name) in _SAFE_GLOBALS:
            return getattr(sys.modules.get(module) or __import__(module), name)
        mod = sys.modules.get(module)
        obj = getattr(mod, name, None) if mod is not None and module == self.module and "." not in name else None
        if isinstance(obj, type) and obj.__module__ == module:
            return obj
        raise pickle.UnpicklingError(f"{module}.{name} is not a plain value or a class of {self.module or 'the function'}'s module")


def _load(data: bytes, module: str | None) -> Any:
    return _ResultUnpickler(data, module).load()


@functools.lru_cache(maxsize=64)
def _names(source: str, filename: str) -> tuple[frozenset[str], frozenset[str]]:
    """(names the code reads as globals or attributes, names its top level binds). Compiles; never runs anything."""
    tree = ast.parse(source)
    bound: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    used: set[str] = set()
    stack = [compile(tree, filename, "exec", dont_inherit=True)]
    while stack:
        code = stack.pop()
        used.update(code.co_names)
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
    return frozenset(used), frozenset(bound)


def importable(module: str | None) -> bool:
    """True when the worker can import `module` by name (a module loaded from a file, not __main__)."""
    mod = sys.modules.get(module or "")
    return (module not in (None, "__main__", "__mp_main__") and mod is not None
            and getattr(mod, "__spec__", None) is not None and bool(getattr(mod, "__file__", None)))


def _ship(fn_name: str, name: str, value: Any, kind: str) -> tuple[str, Any]:
    if isinstance(value, types.ModuleType):
        if value.__name__ in ("__main__", "__mp_main__"):
            raise IsolationError(f"{fn_name} can't run isolated: the {kind} {name!r} is the __main__ module; {OPT_OUT}")
        return ("module", value.__name__)
    if getattr(value, "__module__", None) == "__main__" and isinstance(value, (type, types.FunctionType)):
        raise IsolationError(
            f"{fn_name} can't run isolated: the {kind} {name!r} is defined in __main__ (your script or notebook), which "
            f"the worker process can't import; move it into a module, pass it as an argument, or {OPT_OUT}")
    try:
        return ("pickle", pickle.dumps(value))
    except Exception as exc:
        raise IsolationError(
            f"{fn_name} can't run isolated: the {kind} {name!r} (a {type(value).__name__}) can't be sent to the worker "
            f"process ({type(exc).__name__}: {exc}); pass it as an argument, or {OPT_OUT}") from None


def build_job(fn: Callable[..., Any], *, name: str, source: str, is_async: bool, args: tuple, kwargs: dict) -> dict[str, Any]:
    """Everything the worker needs to compile `source` and call its function `fn.__name__(*args, **kwargs)`."""
    filename = f"<textopt-code:{name}>"
    used, bound = _names(source, filename)
    closure: dict[str, Any] = {}
    for var, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
        try:
            closure[var] = cell.cell_contents
        except ValueError:  # an empty cell
            pass
    module = fn.__module__ if importable(fn.__module__) else None
    values: dict[str, tuple[str, Any]] = {}
    for var in sorted(used - bound):
        if var in closure:
            values[var] = _ship(name, var, closure[var], "closure variable")
        elif module is None and var in fn.__globals__ and not var.startswith("__"):
            values[var] = _ship(name, var, fn.__globals__[var], "global")
    try:
        payload = pickle.dumps((args, kwargs))
    except Exception as exc:
        raise IsolationError(f"the arguments of {name} can't be sent to the isolated worker "
                             f"({type(exc).__name__}: {exc}); pass plain values, or {OPT_OUT}") from None
    return {"module": module, "source": source, "fn_name": fn.__name__, "filename": filename, "values": values,
            "payload": payload, "is_async": is_async, "name": name}


# -- inside the worker ---------------------------------------------------------------------------
def _describe(exc: BaseException, memory_limit: int) -> dict[str, Any]:
    frames = [(f.filename, f.lineno, f.name, f.line) for f in traceback.extract_tb(exc.__traceback__)
              if f.filename != __file__]
    try:
        message = str(exc)[:20_000]
    except BaseException:
        message = "<the exception's message could not be read>"
    if isinstance(exc, OSError) and exc.errno == 12:  # ENOMEM: an mmap or a thread over the limit
        message += f" (the isolated worker may use at most {memory_limit // 2**20} MiB)"
    if isinstance(exc, MemoryError):
        message = (f"the code ran out of memory: the isolated worker may use at most {memory_limit // 2**20} MiB "
                   "(raise it with textopt.sandbox.Sandbox(memory_limit=...))")
    try:
        args = None if isinstance(exc, MemoryError) or message.endswith(" MiB)") else pickle.dumps(exc.args)
    except BaseException:
        args = None
    return {"type": type(exc).__qualname__, "module": type(exc).__module__, "message": message, "args": args,
            "frames": frames, "fatal": not isinstance(exc, Exception) or isinstance(exc, MemoryError),
            "exit_code": exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, (int, str, type(None))) else None}


def _run_job(job: dict[str, Any], cache: dict[tuple, tuple[dict, Callable]]) -> Any:
    import importlib

    key = (job["module"], job["source"], job["fn_name"], job["filename"])
    values = {}
    for var, (how, blob) in job["values"].items():
        try:
            values[var] = importlib.import_module(blob) if how == "module" else pickle.loads(blob)
        except Exception as exc:
            raise IsolationError(f"the worker can't rebuild {var!r} ({type(exc).__name__}: {exc}); {OPT_OUT}") from None
    entry = cache.pop(key, None)
    if entry is None:
        if job["module"]:
            namespace = dict(importlib.import_module(job["module"]).__dict__)
        else:
            namespace = {"__builtins__": builtins, "__name__": "__textopt_isolated__"}
        namespace.update(values)
        exec(compile(job["source"], job["filename"], "exec"), namespace)  # module-level code: inside the time limit
        entry = (namespace, namespace[job["fn_name"]])
    entry[0].update(values)
    cache[key] = entry
    while len(cache) > 16:
        cache.pop(next(iter(cache)))
    args, kwargs = pickle.loads(job["payload"])
    result = entry[1](*args, **kwargs)
    if job["is_async"]:
        result = asyncio.run(result)
    return result


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            os._exit(0)


def _serve(conn_in: Any, reply_fd: int, memory_limit: int) -> None:
    """The worker's loop: read a job, run it, send ("ok", pickled result, exiting?) or ("error", description)."""
    import resource
    from multiprocessing.connection import Connection

    global _IN_WORKER
    _IN_WORKER = True
    out = Connection(reply_fd, readable=False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_limit:
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        limit = memory_limit if hard == resource.RLIM_INFINITY else min(memory_limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    threading.stack_size(256 * 1024)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    cache: dict[tuple, tuple[dict, Callable]] = {}
    out.send_bytes(pickle.dumps(("ready", os.getpid())))
    while True:
        try:
            kind, body = pickle.loads(conn_in.recv_bytes())
        except (EOFError, OSError):
            os._exit(0)
        fatal = False
        try:
            if kind == "import":
                sys.path[:] = body[1]
                __import__(body[0])
                reply: tuple = ("ok", pickle.dumps(None), False)
            else:
                threads = threading.active_count()
                result = _run_job(body, cache)
                fatal = threading.active_count() > threads  # the code left threads running: start clean next time
                try:
                    reply = ("ok", pickle.dumps(result), fatal)
                except Exception as exc:
                    raise IsolationError(f"the result (a {type(result).__name__}) can't be sent back from the isolated "
                                         f"worker ({type(exc).__name__}: {exc}); return plain values") from None
                del result
        except BaseException as exc:
            try:
                desc = _describe(exc, memory_limit)
            except BaseException:
                os._exit(3)
            fatal = desc["fatal"]
            reply = ("error", desc)
        try:
            out.send_bytes(pickle.dumps(reply))
        except BaseException:
            os._exit(3)
        if fatal:  # an exit, an interrupt or a MemoryError: this interpreter's state can't be trusted
            os._exit(0)


_BOOT = (
    "import sys, pickle\n"
    "from multiprocessing.connection import Connection\n"
    "c = Connection(int(sys.argv[1]), writable=False)\n"
    "sys.path[:] = pickle.loads(c.recv_bytes())\n"
    "from textopt.sandbox import _serve\n"
    "_serve(c, int(sys.argv[2]), int(sys.argv[3]))\n"
)


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
    """One worker process and the two pipes to it."""

    def __init__(self, memory_limit: int, env: dict[str, str]) -> None:
        from multiprocessing.connection import Connection

        child_reads, parent_writes = os.pipe()
        parent_reads, child_writes = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(child_reads), str(child_writes), str(memory_limit)],
                pass_fds=(child_reads, child_writes), env=env, stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            os.close(child_reads)
            os.close(child_writes)
        self.tx = Connection(parent_writes, readable=False)
        self.rx = Connection(parent_reads, writable=False)
        self.imported: set[str] = set()
        try:
            self.tx.send_bytes(pickle.dumps(list(sys.path)))
            reply = self.wait(START_TIMEOUT)
        except (_Dead, OSError) as exc:
            self.kill()
            raise IsolationError(f"the isolated worker process failed to start: it {exc}; see its output above") from None
        if reply is None or reply[0] != "ready":
            self.kill()
            raise IsolationError(f"the isolated worker process did not start within {START_TIMEOUT:g} s")

    def wait(self, timeout: float) -> Any:
        """The next reply, None on timeout; raises _Dead when the worker has gone or sent nonsense."""
        try:
            if not self.rx.poll(timeout):
                return None
            return _load(self.rx.recv_bytes(MAX_REPLY_BYTES), None)
        except (EOFError, OSError) as exc:
            try:
                code = self.proc.wait(2)
            except subprocess.TimeoutExpired:
                code = None
            self.kill()
            raise _Dead(_exit_text(code) if code is not None else f"broke its pipe ({type(exc).__name__})") from None
        except Exception as exc:  # unpickling refused or failed: the worker wrote something we didn't ask for
            self.kill()
            raise _Dead(f"sent an unreadable reply ({type(exc).__name__}: {exc})") from None

    def request(self, message: tuple, timeout: float) -> Any:
        data = pickle.dumps(message)
        try:
            self.tx.send_bytes(data)
        except OSError:
            return self.wait(0.5) or self.wait(0)  # the worker is gone: wait() says how
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the worker and anything it started
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        for conn in (self.tx, self.rx):
            conn.close()


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
    """A pool of warm worker processes for isolated code, all with the same memory limit and environment."""

    def __init__(self, *, memory_limit: int = DEFAULT_MEMORY_LIMIT, max_workers: int = 2,
                 env: dict[str, str] | None = None) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        self.memory_limit, self.max_workers = int(memory_limit), max_workers
        self._env = env
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
                    self._live -= 1
                if self._live < self.max_workers:
                    self._live += 1
                    break
                self._cond.wait()
        try:
            worker = _Worker(self.memory_limit, clean_environ(self._env))
        except BaseException:
            self._release(None)
            raise
        self.started += 1
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
        if _IN_WORKER:  # a traced function called from isolated code: already inside a worker and its limit
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
                        f"{d['message'].splitlines()[0] if d['message'] else ''} (the worker has no secret environment "
                        f"variables); {OPT_OUT}")
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
                except (pickle.UnpicklingError, AttributeError, ImportError) as exc:
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
