"""Inside the worker: serve jobs over the pipe, and the boot code and launcher that start it (in its own
session and, where Linux allows, its own user, pid and mount namespaces)."""
from __future__ import annotations

import asyncio
import builtins
import os
import pickle
import select
import signal
import struct
import sys
import threading
import time
import traceback
from typing import Any, Callable

from . import common
from .common import MAX_REPLY_BYTES, OPT_OUT, IsolationError


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

    common.IN_WORKER = True  # read by the parent side's Sandbox when traced code calls traced code
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
    "from textopt.sandbox.worker import _serve\n"
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


