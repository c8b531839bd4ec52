"""A disk cache of completions keyed by a stable hash of (engine kind, model, messages, options).

One JSON file per entry, written atomically, so that another process (or a resumed run) hits.
Nothing in the key or the entry ever holds an API key or header.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import tempfile
import threading
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

    def _file(self, key: str) -> Path:
        return self.path / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            with open(os.path.join(self.path, key[:2], key + ".json"), encoding="utf-8") as fh:
                return json.load(fh)
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None  # a torn or foreign file is a miss, never a crash

    def set(self, key: str, value: dict[str, Any]) -> None:
        """Write the entry atomically: a private temporary file in the same folder, then a rename over the
        target. It runs once per fresh call on the event loop, so it costs what it must (create, write,
        rename) and no more: the text is encoded once and written in one go."""
        parent = os.path.join(self.path, key[:2])
        target = os.path.join(parent, key + ".json")
        data = json.dumps(value, ensure_ascii=False).encode("utf-8")
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
        if not self.path.exists():
            return 0
        return sum(1 for _ in self.path.glob("*/*.json"))

