"""Saving and loading parameter values as plain, human-readable JSON, written atomically.

A checkpoint must never be half-written: a run can be SIGKILLed at any moment. Every write goes to a
temporary file in the same folder, is flushed to disk, and then replaces the target with `os.replace`
(atomic on POSIX and Windows), so a reader sees either the old file or the new one, never a torn one.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

from .variable import Variable

FORMAT = "textopt.parameters"
VERSION = 1


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write `text` to `path` so that the file is either the old one or the complete new one."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a run's files are meant to be read
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomic, indented, UTF-8 JSON (readable in any editor, diffable in git)."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, with an error that names the file and what to do."""
    p = Path(path)
    try:
        with open(p, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"{p} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p} is not valid JSON ({exc.msg} at line {exc.lineno}); was it edited by hand?") from exc


def _values(parameters: Mapping[str, Any] | Iterable[Variable]) -> dict[str, str]:
    if isinstance(parameters, Mapping):
        out = {}
        for name, v in parameters.items():
            out[str(name)] = v.text if isinstance(v, Variable) else v
        return out
    out = {}
    for v in parameters:
        if not isinstance(v, Variable):
            raise TypeError(f"save takes Variables or a dict of name -> value, got {type(v).__name__}")
        if v.name in out:
            raise ValueError(f"two parameters share the name {v.name!r}; give them unique names")
        out[v.name] = v.text
    return out


def save(parameters: Mapping[str, Any] | Iterable[Variable], path: str | os.PathLike[str]) -> None:
    """Write parameter values (Variables, or a dict name -> value) to `path` as JSON, atomically."""
    values = _values(parameters)
    for name, value in values.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise TypeError(f"parameter {name!r} holds a {type(value).__name__}, which JSON can't store; save text") from None
    atomic_write_json(path, {"format": FORMAT, "version": VERSION, "parameters": values})


def load(path: str | os.PathLike[str], into: Iterable[Variable] | None = None) -> dict[str, Any]:
    """Read a file written by `save` -> dict name -> value. With `into`, also set those Variables' values
    (every Variable must be in the file: a missing one is an error, not a silent skip)."""
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("parameters"), dict):
        raise ValueError(f"{path} is not a textopt parameters file (expected {{'format': {FORMAT!r}, 'parameters': {{...}}}})")
    if int(data.get("version", 0)) > VERSION:
        raise ValueError(f"{path} has format version {data['version']}; this textopt reads up to {VERSION}: upgrade textopt")
    values: dict[str, Any] = dict(data["parameters"])
    if into is not None:
        variables = list(into)
        missing = [v.name for v in variables if v.name not in values]
        if missing:
            raise KeyError(f"{path} has no value for {', '.join(map(repr, missing))} (it has {', '.join(map(repr, values)) or 'none'})")
        for v in variables:
            v.set_value(values[v.name])
    return values
