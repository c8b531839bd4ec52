"""A disk cache of completions keyed by a stable hash of (engine kind, model, messages, options).

One JSON file per entry, written atomically, so that another process (or a resumed run) hits.
Nothing in the key or the entry ever holds an API key or header.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
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


class DiskCache:
    """Directory of `<key[:2]>/<key>.json`. The directory is created on the first write, not before."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_dir()

    def _file(self, key: str) -> Path:
        return self.path / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            with open(self._file(key), encoding="utf-8") as fh:
                return json.load(fh)
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None  # a torn or foreign file is a miss, never a crash

    def set(self, key: str, value: dict[str, Any]) -> None:
        target = self._file(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(value, fh, ensure_ascii=False)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def __len__(self) -> int:
        if not self.path.exists():
            return 0
        return sum(1 for _ in self.path.glob("*/*.json"))

