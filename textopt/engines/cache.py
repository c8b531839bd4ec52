"""A disk cache of completions keyed by a stable hash of (engine kind, model, messages, options).

One JSON file per entry, written atomically, so that another process (or a resumed run) hits.
Nothing in the key or the entry ever holds an API key or header.

Entries are written by one background thread per process, not on the event loop: a write (create, write,
rename) costs about 0.1 ms of the loop's time per fresh call otherwise. Until written, an entry is served
from memory; `flush()` waits for the writes, and the process flushes at exit.
"""
from __future__ import annotations

import atexit
import collections
import contextlib
import hashlib
import json
import os
import queue
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any


def default_cache_dir() -> Path:
    """`$TEXTOPT_CACHE_DIR`, else `$XDG_CACHE_HOME/textopt`, else `~/.cache/textopt`."""
    if os.environ.get("TEXTOPT_CACHE_DIR"):
        return Path(os.environ["TEXTOPT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "textopt"


def cache_key(payload: dict[str, Any]) -> str:
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class Draws:
    """Identical requests at temperature > 0 are separate samples, not copies: the n-th of them in an
    engine's life is draw n, with its own cache entry (draw 0 keeps the plain key) and, on the local model,
    its own seed. So k proposals sampled from one prompt differ, and a rerun on the same cache replays the
    same k samples in the same order. At temperature 0 every identical request is draw 0: one answer."""

    def __init__(self) -> None:
        self._seen: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def take(self, payload: dict[str, Any], sampled: bool) -> tuple[int, str]:
        """(draw, cache key) of the next request with this key payload."""
        base = cache_key(payload)
        if not sampled:
            return 0, base
        with self._lock:
            n = self._seen[base]
            self._seen[base] = n + 1
        return n, (cache_key({**payload, "draw": n}) if n else base)


class DiskCache:
    """Directory of `<key[:2]>/<key>.json`. The directory is created on the first write, not before."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_dir()
        # sub-directories this object has made (or found), so not again per write; no annotation: pdoc
        # would read `set` in it as the method below
        self._made = set()
        # key -> the entry's bytes until the writer has written them; shared by every DiskCache of this
        # process on the same folder, so a second cache object on it sees them too
        self._pending = _PENDING.setdefault(os.path.abspath(self.path), {})
        self._failed = None  # the first write error, reported once

    def _file(self, key: str) -> Path:
        return self.path / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        data = self._pending.get(key)
        if data is not None:
            return json.loads(data)
        try:
            with open(os.path.join(self.path, key[:2], key + ".json"), encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None  # missing, unreadable, torn or foreign: a miss, never a crash

    def set(self, key: str, value: dict[str, Any]) -> None:
        """Keep the entry (readable by `get` at once) and hand it to the writer thread."""
        data = json.dumps(value, ensure_ascii=False).encode("utf-8")
        self._pending[key] = data
        _writer.put(self, key, data)

    def flush(self) -> None:
        """Wait until every entry handed over so far (by any cache of this process) is on disk."""
        _writer.flush()

    def _write(self, key: str, data: bytes) -> None:
        """Write one entry atomically: a private temporary file in the same folder, then a rename over the
        target (on the writer thread)."""
        try:
            self._write_file(key, data)
        except OSError as exc:
            if self._failed is None:
                self._failed = exc
                warnings.warn(f"textopt: could not write the completion cache at {self.path} ({exc}); calls go on "
                              "uncached. Point TEXTOPT_CACHE_DIR at a writable folder, or pass cache=False.",
                              RuntimeWarning, stacklevel=2)
        finally:
            if self._pending.get(key) is data:
                del self._pending[key]

    def _write_file(self, key: str, data: bytes) -> None:
        parent = os.path.join(self.path, key[:2])
        target = os.path.join(parent, key + ".json")
        if parent not in self._made:
            os.makedirs(parent, exist_ok=True)
            self._made.add(parent)
        try:
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=".tmp-", suffix=".json")
        except FileNotFoundError:  # the folder was removed while this process ran: make it again
            os.makedirs(parent, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=".tmp-", suffix=".json")
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def __len__(self) -> int:
        self.flush()
        if not self.path.exists():
            return 0
        return sum(1 for _ in self.path.glob("*/*.json"))


class _Writer:
    """The process's cache-writing thread, started on the first write. A daemon (it never keeps a process
    alive), flushed at interpreter exit, and forgotten in a forked child (the parent writes its entries).
    No lock on the way in: a put is one C-level queue append; `flush` queues a marker and waits for it."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[DiskCache, str, bytes] | threading.Event] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def put(self, cache: DiskCache, key: str, data: bytes) -> None:
        if self._thread is None:
            self._start()
        self._queue.put((cache, key, data))

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            if not _exit_hook:
                atexit.register(_flush_at_exit)
                _exit_hook.append(True)
            thread = threading.Thread(target=self._run, name="textopt-cache-writer", daemon=True)
            thread.start()
            self._thread = thread

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
                continue
            cache, key, data = item
            with contextlib.suppress(Exception):  # _write reports OSError and clears the entry itself;
                cache._write(key, data)  # nothing else may stop the thread (flush would wait forever)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every entry handed over before this call is written; False if `timeout` passed first."""
        if self._thread is None:
            return True
        marker = threading.Event()
        self._queue.put(marker)  # FIFO: set once everything queued before it is done
        return marker.wait(timeout)

    def after_fork(self) -> None:
        self.__init__()  # type: ignore[misc]  # the thread and its queue stay with the parent


_writer = _Writer()
_PENDING: dict[str, dict[str, bytes]] = {}
_exit_hook: list[bool] = []


def _flush_at_exit() -> None:
    _writer.flush(timeout=30)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_writer.after_fork)
