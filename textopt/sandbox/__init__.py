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

The parts: `common` (limits, errors, the minimal environment), `boundary` (what crosses: the job in, the
result out), `worker` (the serve loop, its boot code and launcher), `parent` (the worker process, `Sandbox`,
the entry points `@trace` uses).
"""
from __future__ import annotations

from .boundary import MAX_RESULT_DEPTH, MAX_RESULT_ITEMS, _names, build_job, check_size, importable
from .common import (
    DEFAULT_MEMORY_LIMIT, IMPORT_TIMEOUT, MAX_REPLY_BYTES, MINIMAL_ENVIRON, SECRET_MARKERS, START_TIMEOUT, IsolatedCodeError,
    IsolationError, clean_environ, minimal_environ,
)
from .parent import ISOLATION_MODES, Sandbox, arun_isolated, check_isolation, default_sandbox, run_isolated
from .worker import _serve

__all__ = [
    "Sandbox", "IsolationError", "IsolatedCodeError", "default_sandbox", "check_isolation", "run_isolated",
    "arun_isolated", "build_job", "check_size", "importable", "clean_environ", "minimal_environ", "ISOLATION_MODES",
    "MAX_REPLY_BYTES", "MAX_RESULT_ITEMS", "MAX_RESULT_DEPTH", "MINIMAL_ENVIRON", "SECRET_MARKERS",
    "DEFAULT_MEMORY_LIMIT", "START_TIMEOUT", "IMPORT_TIMEOUT",
]
