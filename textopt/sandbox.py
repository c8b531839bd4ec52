"""Run LLM-written code in a separate, warm worker process, so that what it does can't end or wedge ours.

Why a process: code an optimizer writes can loop forever at module level, call sys.exit or os._exit,
raise KeyboardInterrupt, catch BaseException to dodge a thread's time limit, allocate until the
machine swaps, or read API keys from os.environ. In a worker process each of these becomes an error
the caller can record: the worker is killed (SIGKILL to its process group) and a fresh one starts on
the next call.

What the worker is:
- a new interpreter started with exec (subprocess, never a fork of a process that has threads) by a small
  launcher in its own session (Ctrl-C in the terminal reaches only the parent), so the parent is never
  the worker's parent; stdin closed; only the two pipe ends it talks over (every other file descriptor
  of the parent stays closed to it);
- on Linux, where unprivileged user namespaces work, in its own user, pid and mount namespaces with its own
  /proc (nested once more, so that /proc can't be unmounted): the parent has no pid there, so the worker
  can't read the parent's /proc/<pid>/environ or signal it, and whatever it starts dies with it. Elsewhere
  (no user namespaces, a locked-down /proc) it falls back silently to the launcher and session only, where a
  worker that looks for the parent in /proc can still find it; `Sandbox.mode` says which one holds;
- started with a minimal environment (PATH, HOME, locale, TMPDIR... see MINIMAL_ENVIRON), less anything
  whose name contains KEY, TOKEN, SECRET, PASSWORD or CREDENTIAL or whose value holds credentials in a URL.
  The worker is *started* with it (not cleaned afterwards), so /proc/self/environ has no key either;
- limited to `memory_limit` bytes of address space (RLIMIT_AS), no core dumps;
- warm: it is reused between calls (its start-up, ~0.3 s, is paid once) and keeps what it imported.

The parent reads every reply whole under the call's time limit, with a cap on the length a reply declares
(MAX_REPLY_BYTES), so a worker that writes a fake length, stalls mid-reply or floods the pipe is killed
and reported, never waited on. The worker's reply path is bound before user code runs, and builtins the
code replaced are put back before the reply is made.

What the isolated code sees: builtins; the function's module, imported by name in the worker when it
is an importable module (so module globals are the worker's own import, not the parent's current
values); for a function of `__main__` (a script or notebook) instead the globals its code names (names,
not attributes: `subprocess.run` names `subprocess`), sent as pickled copies (modules by name); closure
values it names, as pickled copies. Arguments are pickled in; the result is pickled out and read back
with a restricted unpickler that only builds plain values (str, numbers, containers, bytes, datetime,
Decimal...) and classes of the function's own module, so a result can't run code in the parent when it is
unpickled; constructors may only copy values already built (no `bytearray(600 MiB)`, no
`list(range(10**9))`), and a result over MAX_RESULT_ITEMS elements (a shared part counted as often as it is
reached) or MAX_RESULT_DEPTH levels is refused, naming the cap. Whatever can't cross the boundary is a
clear IsolationError that says how to opt out (`isolation="thread"` or `"none"`).

It is not a security sandbox: the code still runs as the user, with the user's file system and network.
"""
from __future__ import annotations

import asyncio
import ast
import atexit
import builtins
import collections
import functools
import io
import os
import pickle
import re
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


#: The variables a worker gets from os.environ by default (Sandbox(env=...) gives it others, less secrets).
MINIMAL_ENVIRON = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "TERM",
                   "PYTHONHOME", "PYTHONHASHSEED", "PYTHONIOENCODING", "PYTHONUTF8", "VIRTUAL_ENV", "LD_LIBRARY_PATH")


def minimal_environ(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's default environment: only MINIMAL_ENVIRON and LC_* from `environ` (default os.environ),
    less anything that looks like a secret. Code gets nothing it wasn't meant to have, whatever its name."""
    env = os.environ if environ is None else environ
    return clean_environ({k: v for k, v in env.items() if k in MINIMAL_ENVIRON or k.startswith("LC_")})


def clean_environ(environ: dict[str, str] | None = None) -> dict[str, str]:
    """`environ` (default os.environ) without variables that look like secrets, by name or by a URL with credentials."""
    env = dict(os.environ if environ is None else environ)
    return {k: v for k, v in env.items()
            if not any(m in k.upper() for m in SECRET_MARKERS) and not _URL_CREDENTIALS.search(v)}


# -- what crosses the boundary -------------------------------------------------------------------
#: Most elements a result may hold, counting a shared part as often as it is reached (what printing it costs),
#: and elements copied by constructors while it is unpickled.
MAX_RESULT_ITEMS = 10_000_000
#: Deepest nesting of containers in a result (printing a deeper one would overflow the stack).
MAX_RESULT_DEPTH = 200


_budget = threading.local()  # elements copied by the guarded constructors during the current unpickling


def _charge(n: int) -> None:
    _budget.used = getattr(_budget, "used", 0) + n
    if _budget.used > MAX_RESULT_ITEMS:
        raise pickle.UnpicklingError(f"the result builds over {MAX_RESULT_ITEMS:,} elements, the cap of a result "
                                     "of isolated code (textopt.sandbox.MAX_RESULT_ITEMS)")


_CONCRETE = (str, bytes, bytearray, list, tuple, dict, set, frozenset, collections.deque)


def _size_refused(what: str, args: tuple) -> pickle.UnpicklingError:
    kinds = ", ".join(type(a).__name__ for a in args)
    return pickle.UnpicklingError(f"{what}({kinds}) is refused in a result: a constructor may only copy values that "
                                  "are already built (no size argument, no lazy iterable)")


def _copying(base: type, name: str, extra: int = 0) -> type:
    """`base` for the unpickler: built from a container already there (its length is charged), never from a
    size or a lazy iterable. Instances are plain `base` objects (__new__ returns one)."""
    def __new__(cls: type, *args: Any) -> Any:
        if len(args) > 1 + extra or (args and not isinstance(args[0], _CONCRETE)):
            raise _size_refused(name, args)
        if args:
            _charge(len(args[0]))
        return base(*args)
    return type(f"_{name}", (base,), {"__new__": __new__, "__module__": __name__, "_real": base})


def _scalar(base: type, name: str, allowed: tuple) -> type:
    """`base` for the unpickler, from text or numbers only (bytes(600 * 2**20) and str(container) are refused)."""
    def __new__(cls: type, *args: Any) -> Any:
        if len(args) > 3 or not all(isinstance(a, allowed) for a in args) or (
                base in (bytes, bytearray) and args and isinstance(args[0], int)):
            raise _size_refused(name, args)
        return base(*args)
    return type(f"_{name}", (base,), {"__new__": __new__, "__module__": __name__, "_real": base})


def _defaultdict(factory: Any = None, *args: Any) -> Any:
    if len(args) > 1 or (args and not isinstance(args[0], _CONCRETE)):
        raise _size_refused("defaultdict", args)
    if args:
        _charge(len(args[0]))
    return collections.defaultdict(getattr(factory, "_real", factory), *args)


def _fraction(*args: Any) -> Any:
    import fractions

    if len(args) > 2 or not all(isinstance(a, int) or (isinstance(a, str) and len(a) < 10_000 and not re.search(r"[eE]", a))
                                for a in args):
        raise _size_refused("Fraction", args)  # Fraction("1e999999999") would compute 10**999999999
    return fractions.Fraction(*args)


_TEXT = (str, bytes, bytearray, int, float, bool, type(None))
#: The constructors a result may call, by the name pickle gives them ("builtins." left out).
_GUARDS: dict[str, Any] = {
    "list": _copying(list, "list"), "tuple": _copying(tuple, "tuple"), "set": _copying(set, "set"),
    "frozenset": _copying(frozenset, "frozenset"), "dict": _copying(dict, "dict"),
    "bytearray": _scalar(bytearray, "bytearray", (bytes, bytearray, str)),
    "bytes": _scalar(bytes, "bytes", (bytes, bytearray, str)),
    "str": _scalar(str, "str", _TEXT), "int": _scalar(int, "int", _TEXT[:-1]),
    "collections.deque": _copying(collections.deque, "deque", extra=1),
    "collections.OrderedDict": _copying(collections.OrderedDict, "OrderedDict"),
    "collections.Counter": _copying(collections.Counter, "Counter"),
    "collections.defaultdict": _defaultdict, "fractions.Fraction": _fraction,
}


_SAFE_BUILTINS = {"float", "complex", "bool", "slice"}  # plus the guarded constructors of _GUARDS
_SAFE_GLOBALS = {
    ("datetime", "date"), ("datetime", "datetime"), ("datetime", "time"), ("datetime", "timedelta"),
    ("datetime", "timezone"), ("decimal", "Decimal"),
}


class _ResultUnpickler(pickle.Unpickler):
    """Builds plain values, and classes defined in `module` (the function's own); anything else is refused.
    Constructors only copy values already built (bytearray(600 MiB) or list(range(10**9)) are refused)
    and what they copy counts toward MAX_RESULT_ITEMS."""

    def __init__(self, data: bytes, module: str | None) -> None:
        super().__init__(io.BytesIO(data))
        self.module = module

    def find_class(self, module: str, name: str) -> Any:
        key = name if module == "builtins" else f"{module}.{name}"
        if key in _GUARDS:
            return _GUARDS[key]
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


_LEAVES = frozenset({str, bytes, bytearray, int, float, bool, complex, type(None), slice})


def _parts(obj: Any) -> list[Any] | None:
    """What a container holds (dict: keys and values), None for a leaf."""
    if type(obj) in _LEAVES:
        return None
    if isinstance(obj, dict):
        return [*obj.keys(), *obj.values()]
    if isinstance(obj, (list, tuple, set, frozenset, collections.deque)):
        return list(obj)
    if isinstance(obj, BaseException):
        return list(obj.args)
    state = getattr(obj, "__dict__", None)
    return list(state.values()) if isinstance(state, dict) else None


def check_size(obj: Any, *, max_items: int = MAX_RESULT_ITEMS, max_depth: int = MAX_RESULT_DEPTH) -> str | None:
    """Why `obj` is too big to take in (None when it isn't): more than `max_items` elements counting a shared
    part as often as it is reached (a few bytes of pickle can share a list 2**100 times), or nested deeper than
    `max_depth`. Linear in the distinct objects; a cycle counts once."""
    sizes: dict[int, int] = {}
    depths: dict[int, int] = {}
    parts: dict[int, tuple[list[Any], int]] = {}
    open_: set[int] = set()
    stack = [obj]
    while stack:
        top = stack[-1]
        i = id(top)
        if i in sizes:
            stack.pop()
            continue
        if i not in parts:
            inner = _parts(top)
            if inner is None:
                sizes[i], depths[i] = 1, 0
                stack.pop()
                continue
            kids = [k for k in inner if type(k) not in _LEAVES]
            parts[i] = (kids, len(inner) - len(kids))
        kids, leaves = parts[i]
        if i not in open_:
            open_.add(i)
            pending = [k for k in kids if id(k) not in sizes and id(k) not in open_]
            if pending:
                stack.extend(pending)
                continue
        size = 1 + leaves + sum(sizes.get(id(k), 1) for k in kids)  # a kid still open is a cycle: counted once
        depth = 1 + max((depths.get(id(k), 0) for k in kids), default=0)
        if size > max_items:
            return (f"it has over {max_items:,} elements (counting a shared part as often as it is reached), the cap "
                    "of a result of isolated code (textopt.sandbox.MAX_RESULT_ITEMS)")
        if depth > max_depth:
            return (f"it is nested over {max_depth} levels deep, the cap of a result of isolated code "
                    "(textopt.sandbox.MAX_RESULT_DEPTH)")
        sizes[i], depths[i] = size, depth
        open_.discard(i)
        del parts[i]
        stack.pop()
    return None


def _load(data: bytes, module: str | None) -> Any:
    _budget.used = 0
    value = _ResultUnpickler(data, module).load()
    problem = check_size(value)
    if problem is not None:
        raise pickle.UnpicklingError(problem)
    return value


@functools.lru_cache(maxsize=64)
def _names(source: str, filename: str) -> tuple[frozenset[str], frozenset[str]]:
    """(global names the code reads, names its top level binds). Attribute names are not globals: in
    `subprocess.run(...)` only `subprocess` is. Parses and builds symbol tables; never runs anything."""
    import symtable

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
    tables = [symtable.symtable(source, filename, "exec")]
    while tables:
        table = tables.pop()
        top = table.get_type() == "module"
        for sym in table.get_symbols():
            if sym.is_referenced() and (top or sym.is_global()):
                used.add(sym.get_name())
        tables.extend(table.get_children())
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


def _serve(in_fd: int, out_fd: int, memory_limit: int, mode: str) -> None:
    """The worker's loop: read a job, run it, send ("ok", exiting?, size) and the pickled result, or
    ("error", description).

    Everything the reply path uses is bound here, before any code of the user or the LLM runs: code that
    replaces builtins.len, os.write or pickle.dumps (or this module's functions) can't break the reply. A
    job that changed the builtins gets them back before its reply is made, and the worker is replaced after it."""
    import resource
    import struct

    global _IN_WORKER
    _IN_WORKER = True
    write, read, exit_, dumps, loads = os.write, os.read, os._exit, pickle.dumps, pickle.loads
    pack, unpack, size_of, view_of, active = struct.Struct("!Q").pack, struct.Struct("!Q").unpack, len, memoryview, threading.active_count
    describe, run_job, error_type, cap, base_exc = _describe, _run_job, IsolationError, MAX_REPLY_BYTES, BaseException
    table = builtins.__dict__
    saved = dict(table)

    def send(*chunks: bytes) -> None:
        for chunk in chunks:
            view = view_of(chunk)
            while view:
                view = view[write(out_fd, view):]

    def frame(data: bytes) -> None:
        send(pack(size_of(data)), data)

    def recv(n: int) -> bytes:
        parts, left = [], n
        while left:
            chunk = read(in_fd, min(left, 1 << 20))
            if not chunk:
                exit_(0)  # the parent is gone
            parts.append(chunk)
            left -= size_of(chunk)
        return b"".join(parts)

    def builtins_changed() -> bool:
        if size_of(table) != size_of(saved):
            return True
        for key, value in saved.items():
            if table.get(key, table) is not value:
                return True
        return False

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if memory_limit:
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        limit = memory_limit if hard == resource.RLIM_INFINITY else min(memory_limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    threading.stack_size(256 * 1024)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    cache: dict[tuple, tuple[dict, Callable]] = {}
    frame(dumps(("ready", os.getpid(), mode)))
    while True:
        kind, body = loads(recv(unpack(recv(8))[0]))
        fatal = False
        data = b""
        try:
            if kind == "import":
                sys.path[:] = body[1]
                __import__(body[0])  # the function's own module (the user's code): what it sets up is kept
                saved = dict(table)
                reply: tuple = ("ok", False, 0)
            else:
                threads = active()
                result = run_job(body, cache)
                fatal = active() > threads  # the code left threads running: start clean next time
                if builtins_changed():
                    table.clear()
                    table.update(saved)
                    fatal = True  # what else it changed can't be known
                try:
                    data = dumps(result)
                except Exception as exc:
                    raise error_type(f"the result (a {type(result).__name__}) can't be sent back from the isolated "
                                     f"worker ({type(exc).__name__}: {exc}); return plain values") from None
                del result
                if size_of(data) > cap:
                    raise error_type(f"the result is {size_of(data) / 2**20:.0f} MiB once pickled, over the cap of "
                                     f"{cap // 2**20} MiB for a result of isolated code (textopt.sandbox.MAX_REPLY_BYTES)")
                reply = ("ok", fatal, size_of(data))
        except base_exc as exc:
            data = b""
            if builtins_changed():
                table.clear()
                table.update(saved)
                fatal = True
            try:
                desc = describe(exc, memory_limit)
            except base_exc:
                desc = {"type": "IsolationError", "module": __name__, "args": None, "frames": [], "fatal": True,
                        "exit_code": None, "message": "the code broke the isolated worker's error report"}
            fatal = fatal or desc["fatal"]
            desc["fatal"] = fatal
            reply = ("error", desc)
        try:
            head = dumps(reply)
            if size_of(head) > cap:
                head = dumps(("error", {**reply[1], "args": None, "frames": [], "message": reply[1]["message"][:2000]}))
            frame(head)
            if data:
                frame(data)
        except base_exc:
            exit_(3)
        if fatal:  # an exit, an interrupt, a MemoryError, threads left, builtins replaced: start clean
            exit_(0)


#: Started as `python -c _BOOT in_fd out_fd memory_limit mode` (by the launcher): reads sys.path, then serves.
_BOOT = (
    "import os, sys, pickle, struct\n"
    "def _read(fd, n):\n"
    "    b = b''\n"
    "    while len(b) < n:\n"
    "        c = os.read(fd, n - len(b))\n"
    "        if not c:\n"
    "            os._exit(0)\n"
    "        b += c\n"
    "    return b\n"
    "_fd = int(sys.argv[1])\n"
    "sys.path[:] = pickle.loads(_read(_fd, struct.unpack('!Q', _read(_fd, 8))[0]))\n"
    "from textopt.sandbox import _serve\n"
    "_serve(_fd, int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])\n"
)

#: The launcher, started as `python -I -S -c _LAUNCHER lifeline_fd want_namespaces -- worker argv...` in its
#: own session with the minimal environment. It is the only direct child of the parent: the worker is its
#: grandchild (or further down), so the worker's getppid() is never the parent. Where Linux allows an
#: unprivileged user namespace, the worker runs in new user, pid and mount namespaces with its own /proc,
#: nested once more so that /proc can't be unmounted: the parent has no pid there, so the worker can neither
#: read its /proc/<pid>/environ nor signal it, and everything the worker starts dies with it. Where that
#: fails (no user namespaces, a locked-down /proc), it falls back to the plain chain, with no message.
#: It mirrors the worker's exit status (code or signal) as its own, and kills its whole process group when
#: the parent goes away (the lifeline pipe reads EOF).
_LAUNCHER = r"""
import os, select, signal, sys

IGNORED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
NEWNS, NEWUSER, NEWPID = 0x00020000, 0x10000000, 0x20000000
REC, PRIVATE, NOSUID, NODEV, NOEXEC = 16384, 1 << 18, 2, 4, 8


def libc():
    try:
        import ctypes
        lib = ctypes.CDLL(None, use_errno=True)
        return lib, ctypes
    except Exception:
        return None, None


def check(ok, what, ctypes):
    if ok != 0:
        err = ctypes.get_errno()
        raise OSError(err, what + ": " + os.strerror(err))


def enter(lib, ctypes, flags, uid, gid):
    check(lib.unshare(flags), "unshare", ctypes)
    for name, text in (("setgroups", "deny"), ("uid_map", "%d %d 1" % (uid, uid)), ("gid_map", "%d %d 1" % (gid, gid))):
        with open("/proc/self/" + name, "w") as fh:
            fh.write(text)


def die_with_parent(lib, parent):
    if lib is not None:
        lib.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if parent and os.getppid() != parent:
        os._exit(0)


def report(fd, text):
    os.write(fd, text.encode())


def supervise(lib, fd, argv, mode):
    me = os.getpid()
    pid = os.fork()
    if pid == 0:
        die_with_parent(lib, me)
        for s in IGNORED:
            signal.signal(s, signal.SIG_DFL)
        os.execv(argv[0], argv + [mode])
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(0)
        if got == pid:
            report(fd, "S%d\n" % status)
            os._exit(0)


def chain(lib, ctypes, fd, argv, mode, launcher):
    die_with_parent(lib, launcher)
    if mode == "session":
        supervise(lib, fd, argv, mode)
    uid, gid = os.getuid(), os.getgid()
    try:
        enter(lib, ctypes, NEWUSER | NEWPID | NEWNS, uid, gid)
    except OSError:
        report(fd, "F\n")
        os._exit(0)
    pid = os.fork()  # pid 1 of the new pid namespace
    if pid == 0:
        die_with_parent(lib, 0)
        try:
            check(lib.mount(b"none", b"/", None, REC | PRIVATE, None), "mount", ctypes)
            check(lib.mount(b"proc", b"/proc", b"proc", NOSUID | NODEV | NOEXEC, None), "mount proc", ctypes)
            enter(lib, ctypes, NEWUSER | NEWNS, uid, gid)  # nested: the new /proc is locked, it can't be unmounted
        except OSError:
            report(fd, "F\n")
            os._exit(0)
        supervise(lib, fd, argv, mode)
    try:
        os.waitpid(pid, 0)
    finally:
        os._exit(0)


def mirror(status):
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            signal.signal(-code, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):
            pass
        os.kill(os.getpid(), -code)
        os._exit(128 - code)
    os._exit(code)


def main():
    lifeline, want = int(sys.argv[1]), sys.argv[2] == "1"
    os.set_inheritable(lifeline, False)  # the worker gets its two pipes and nothing else
    argv = sys.argv[sys.argv.index("--") + 1:]
    for s in IGNORED:
        signal.signal(s, signal.SIG_IGN)
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    except Exception:
        pass
    lib, ctypes = libc()
    modes = ["namespaces", "session"] if want and lib is not None and sys.platform.startswith("linux") else ["session"]
    me = os.getpid()
    for mode in modes:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(r)
                chain(lib, ctypes, w, argv, mode, me)
            finally:
                os._exit(70)
        os.close(w)
        text = b""
        while True:
            ready = select.select([r, lifeline], [], [])[0]
            if lifeline in ready and not os.read(lifeline, 1):  # the parent is gone: so is everything here
                os.killpg(0, signal.SIGKILL)
            if r in ready:
                chunk = os.read(r, 64)
                if not chunk:
                    break
                text += chunk
        os.close(r)
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        if text.startswith(b"S"):
            mirror(int(text[1:]))
        if not text.startswith(b"F"):
            os._exit(70)
    os._exit(70)


main()
"""


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
