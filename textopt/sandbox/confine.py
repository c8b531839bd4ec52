"""Keep LLM-written code's file writes inside one folder, in the sandbox worker that runs it.

The sandbox worker is a separate process with a memory limit and a minimal environment, but it can still
write anywhere the user can: a candidate that does `open("/home/me/.bashrc", "w")` or `os.remove(...)`
would change the user's files. `confined(folder)` installs (once per process) a `sys.addaudithook` hook and
arms it for the duration of the block: a write, create, delete, rename or permission change of a path
outside `folder`, and starting a process or loading a C library, raise PermissionError naming the path and
the rule. Reads are allowed (the code may import modules and read its inputs).

An audit hook can't be removed once added, so a candidate can't unhook it; a determined one could still
find the hook's state or use a C extension that is already loaded, so, like the sandbox, this keeps honest
mistakes and careless code in bounds and is not a security boundary.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

#: Audit events whose first argument is a path being changed (os.* and shutil.* functions).
_PATH_EVENTS = frozenset({
    "os.remove", "os.rmdir", "os.mkdir", "os.truncate", "os.chmod", "os.chown", "os.utime", "os.chflags",
    "os.lchflags", "os.setxattr", "os.removexattr", "shutil.rmtree", "shutil.chown",
})
#: Events with a source and a destination path; the destination is what is written (both, for a move).
_TWO_PATH_EVENTS = frozenset({"os.rename", "os.link", "os.symlink", "shutil.copyfile", "shutil.copymode",
                              "shutil.copystat", "shutil.copytree", "shutil.move"})
#: Ways out of the process (or of Python) that no path check can follow.
_REFUSED = frozenset({"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                      "os.forkpty", "pty.spawn", "ctypes.dlopen", "os.startfile"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

# The armed folder (realpath), or None. A one-element list so the hook reads the current value.
_armed: list[str | None] = [None]
_installed: list[bool] = [False]


def _inside(path: Any, folder: str) -> bool:
    if isinstance(path, int):
        return True  # an already-open file descriptor: its opening was checked
    try:
        real = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return real == folder or real.startswith(folder + os.sep) or real == os.devnull


def _writes(mode: Any, flags: Any) -> bool:
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def _refuse(what: str, path: Any = None) -> None:
    where = f" {os.fsdecode(path)!r}" if path is not None and not isinstance(path, int) else ""
    raise PermissionError(f"textopt's sandbox refused {what}{where}: code under test may only write inside its own "
                          f"temporary folder ({_armed[0]}) and may not start processes or load C libraries")


def _hook(event: str, args: tuple[Any, ...]) -> None:
    folder = _armed[0]
    if folder is None:
        return
    if event == "open":
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        if _writes(mode, flags) and not _inside(path, folder):
            _refuse("writing", path)
    elif event in _PATH_EVENTS:
        if args and not _inside(args[0], folder):
            _refuse(f"{event} on", args[0])
    elif event in _TWO_PATH_EVENTS:
        for path in args[:2]:
            if not _inside(path, folder):
                _refuse(f"{event} of", path)
    elif event in _REFUSED or event.startswith("os.spawn") or event.startswith("os.exec"):
        _refuse(event)


@contextlib.contextmanager
def confined(folder: str) -> Iterator[None]:
    """Within the block, refuse writes outside `folder` (and new processes); `tempfile` points into it."""
    if not _installed[0]:
        sys.addaudithook(_hook)
        _installed[0] = True
    previous, previous_tmp = _armed[0], tempfile.tempdir
    _armed[0] = os.path.realpath(folder)
    tempfile.tempdir = _armed[0]
    try:
        yield
    finally:
        _armed[0], tempfile.tempdir = previous, previous_tmp
