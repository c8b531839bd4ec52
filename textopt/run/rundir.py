"""The run layer: one piece under Trainer, Search and the AEGIS loop that owns a run directory.

A `Run` holds the lock on its directory for the life of the run, writes `spec.json` (how to rebuild the
run), counts usage (tokens, calls, cached calls, dollars) of everything run inside `run.track()`,
checks budgets and says why a run stops, appends every event to `log.jsonl` and hands it to the
callbacks, writes checkpoints atomically (the previous one kept as `checkpoint.prev.json`, used when the
newest can't be read), keeps every evaluation report under `evals/`, and draws plots on a best-effort
basis (a missing matplotlib costs a line of output, never a finished run). Everything it writes is
scrubbed of keys and URL credentials.

    with Run("runs/x", kind="trainer", spec={...}, budgets=Budgets(usd=2.0)) as run:
        with run.track():
            ...                                   # LLM calls made here are counted
        run.save_checkpoint(state)                # atomic, previous kept as backup
        run.step({"step": 1, "val": 0.5})         # log.jsonl + callbacks
        if run.stop_reason(step=1, total_steps=10): ...
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from filelock import FileLock, Timeout

from ..checkpoint import atomic_write_text
from ..engines.usage import Usage, counting_into, track_usage
from ..errors import AuthenticationFailed, CheckpointError, RunError, RunLocked, is_auth_error
from ..secrets import scrub as scrub_error
from .budgets import Budgets
from .callbacks import Callback, as_callback
from .files import (
    BACKUP, CHECKPOINT, EVALS, FORMAT, LOCK, LOG, SPEC, USAGE_KEYS, VERSION, _dumps, scrub_text, scrubbed_json,
)


# -- reading run directories ----------------------------------------------------------------------
def _read_state(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"not a textopt checkpoint (no \"format\": {FORMAT!r})")
    return data


def read_checkpoint(run_dir: str | Path, apply: Callable[[dict[str, Any]], Any] | None = None,
                    warn: Callable[[str], Any] | None = None) -> dict[str, Any] | None:
    """The newest readable checkpoint of a run directory (the backup when the newest is unreadable or
    `apply` rejects it), or None when there is none. Raises a one-line CheckpointError when neither works."""
    folder = Path(run_dir)
    problems: list[str] = []
    for path in (folder / CHECKPOINT, folder / BACKUP):
        if not path.exists():
            continue
        try:
            data = _read_state(path)
            if apply is not None:
                apply(data)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc) or type(exc).__name__
            problems.append(f"{path} is unreadable ({type(exc).__name__}: {reason.splitlines()[0][:160]})")
            continue
        if problems and warn is not None:
            warn(f"{problems[0]}; resuming from the backup {path.name}")
        return data
    if problems:
        raise CheckpointError("; ".join(problems) + f". Fix or delete the file(s), or start over in a new run directory")
    return None


def has_run(run_dir: str | Path) -> bool:
    folder = Path(run_dir)
    return (folder / CHECKPOINT).exists() or (folder / BACKUP).exists()


def read_spec(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / SPEC
    if not path.exists():
        raise RunError(f"{run_dir} is not a run directory (no {SPEC}); start one with `textopt optimize --out DIR` "
                       "or Trainer(..., run_dir=DIR)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RunError(f"{path} is unreadable ({type(exc).__name__}); restore it or start a new run directory") from None
    if not isinstance(data, dict):
        raise RunError(f"{path} is not a run spec (expected a JSON object); restore it or start a new run directory")
    return data


def read_log(run_dir: str | Path) -> list[dict[str, Any]]:
    """The events of log.jsonl (a torn last line, from a kill mid-write, is skipped)."""
    path = Path(run_dir) / LOG
    out: list[dict[str, Any]] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def lock_run_dir(run_dir: Path) -> Any:
    """The held lock of a run directory (a filelock on run_dir/.lock); RunLocked at once if another run has it."""
    lock = FileLock(str(run_dir / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunLocked(f"{run_dir} is in use by another run (its lock {run_dir / LOCK} is held); wait for that "
                        "run to finish or pick another run directory") from None
    return lock


def check_not_busy(run_dir: str | Path) -> None:
    """Raise RunLocked now (before anything is built or spent) if a live run holds the directory."""
    folder = Path(run_dir)
    if (folder / LOCK).exists():
        lock_run_dir(folder).release()


# -- the run --------------------------------------------------------------------------------------

class Run:
    """One run directory (or none: run_dir=None keeps accounting, budgets and callbacks in memory)."""

    def __init__(self, run_dir: str | Path | None, *, kind: str, spec: Mapping[str, Any] | None = None,
                 budgets: Budgets | None = None, callbacks: Sequence[Callback | Callable[[dict[str, Any]], Any]] = (),
                 resume: bool = False) -> None:
        self.dir = Path(run_dir) if run_dir is not None else None
        self.kind, self.spec = kind, dict(spec or {})
        self.budgets = budgets or Budgets()
        self.callbacks = [as_callback(c) for c in callbacks]
        self.resuming = resume
        self.totals: dict[str, Any] = {**{k: 0 for k in USAGE_KEYS}, "cost_usd": 0.0}
        self.metric_calls = 0
        # the calls of this process's track() scopes, counted as they are made (totals grow only as a scope
        # ends): what the progress heartbeat reads mid-step
        self.live = Usage()
        self.stopped: str | None = None
        self.loaded_from: Path | None = None
        self._lock: Any = None
        self._depth = 0
        self._wrote = False  # this Run wrote the checkpoint there: reopening it is not a clash
        self._started = False

    def __repr__(self) -> str:
        return f"Run({str(self.dir) if self.dir else None!r}, kind={self.kind!r})"

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> "Run":
        self.open()
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is not None and self._depth == 1:
                kind = "interrupted" if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError)) else "error"
                self.log({"event": kind, "error": f"{type(exc).__name__}: {exc}"})
        finally:
            self.close()

    def open(self) -> None:
        """Lock the directory (fails at once if another run holds it) and write spec.json."""
        self._depth += 1
        if self._depth > 1:
            return
        self._started = False
        if self.dir is None:
            return
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._acquire()
            if has_run(self.dir) and not (self.resuming or self._wrote):
                raise FileExistsError(
                    f"{self.dir} already holds a run; continue it with `textopt resume {self.dir}` (Python: "
                    f"textopt.resume({str(self.dir)!r}, ...)), or pick a new run directory")
            if (self.dir / SPEC).exists() and (self.resuming or self._wrote):
                saved = read_spec(self.dir)
                if saved.get("kind") not in (None, self.kind):
                    raise RunError(f"{self.dir} holds a {saved.get('kind')!r} run, not a {self.kind!r} run; "
                                   "pick the matching command")
                if not self.spec:
                    return
            atomic_write_text(self.dir / SPEC, scrubbed_json({"kind": self.kind, **self.spec}, urls=True) + "\n")
        except BaseException:
            self._depth = 0
            self._release()
            raise

    def close(self) -> None:
        self._depth = max(0, self._depth - 1)
        if self._depth == 0:
            self._release()

    def _acquire(self) -> None:
        assert self.dir is not None
        self._lock = lock_run_dir(self.dir)

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- usage and budgets -------------------------------------------------------------------
    @contextlib.contextmanager
    def track(self) -> Iterator["Usage"]:
        """Count what runs inside (tokens, calls, cached calls, cost in USD) into this run's totals (as the
        scope ends) and into `live` (call by call)."""
        with counting_into(self.live), track_usage() as usage:
            try:
                yield usage
            finally:
                self.add_usage(usage)

    def add_usage(self, usage: "Usage | Mapping[str, Any]") -> None:
        u = usage if isinstance(usage, Mapping) else {**usage.to_dict(), "cost_usd": getattr(usage, "cost_usd", 0.0)}
        for k in USAGE_KEYS:
            self.totals[k] += int(u.get(k, 0) or 0)
        self.totals["cost_usd"] = round(self.totals["cost_usd"] + float(u.get("cost_usd", 0.0) or 0.0), 8)
        if u.get("cost_known", True) is False:
            self.totals["cost_known"] = False  # some call's price was unknown: cost_usd is a lower bound

    def stop_reason(self, *, step: int, total_steps: int | None, metric_calls: int | None = None) -> str | None:
        """"completed" once step >= total_steps, a "budget_*" reason once a budget is spent, else None."""
        if total_steps is not None and step >= total_steps:
            return "completed"
        return self.budgets.exceeded(self.totals, self.metric_calls if metric_calls is None else metric_calls)

    def check_failures(self, failures: Iterable[Any]) -> None:
        """Raise AuthenticationFailed when a recorded failure is a 401/403: stop instead of spending on."""
        for f in failures:
            if is_auth_error(f):
                text = scrub_error(str(getattr(f, "error", f)))
                raise AuthenticationFailed(f"the provider refused the credentials, so the run stops here: {text[:300]}. "
                                           "Check the API key (and --base-url), then resume")

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        """Write the state atomically, with this run's usage; the previous checkpoint becomes the backup."""
        if self.dir is None:
            return
        payload = {"format": FORMAT, "version": VERSION, "kind": self.kind, **state,
                   "usage": dict(self.totals), "metric_calls": self.metric_calls}
        text = scrubbed_json(payload) + "\n"
        current = self.dir / CHECKPOINT
        if current.exists():
            os.replace(current, self.dir / BACKUP)  # until the next line lands, the backup is the newest
        atomic_write_text(current, text)
        self._wrote = True

    def load_checkpoint(self, apply: Callable[[dict[str, Any]], Any] | None = None) -> dict[str, Any] | None:
        """The newest readable checkpoint (falling back to the backup), its usage restored; None if there is none."""
        if self.dir is None:
            return None
        state = read_checkpoint(self.dir, apply, warn=lambda m: self.warn(m))
        if state is not None:
            self.loaded_from = self.dir / CHECKPOINT
            usage = state.get("usage") or {}
            self.totals = {**{k: int(usage.get(k, 0)) for k in USAGE_KEYS}, "cost_usd": float(usage.get("cost_usd", 0.0))}
            if usage.get("cost_known", True) is False:
                self.totals["cost_known"] = False
            self.metric_calls = int(state.get("metric_calls", 0))
        return state

    def _inside(self, name: str) -> Path:
        """run_dir/name, refused (ValueError) unless it stays inside the run directory."""
        assert self.dir is not None
        parts = Path(name).parts
        if not name or Path(name).is_absolute() or ".." in parts:
            raise ValueError(f"{name!r} is not a file name inside the run directory; use a relative name such as "
                             "'result.json' (no '..', no absolute path)")
        path = self.dir / name
        root = self.dir.resolve()
        if root not in path.resolve().parents:
            raise ValueError(f"{name!r} leads outside the run directory {self.dir} (a symlink?); use a plain file name")
        return path

    def write_json(self, name: str, obj: Any) -> Path | None:
        """A side file of the run directory (result.json, history.json, ...), scrubbed, atomic. `name` must stay
        inside the run directory (ValueError otherwise)."""
        if self.dir is None:
            return None
        path = self._inside(name)
        atomic_write_text(path, scrubbed_json(obj) + "\n")
        return path

    def write_text(self, name: str, text: str) -> Path | None:
        if self.dir is None:
            return None
        path = self._inside(name)
        atomic_write_text(path, scrub_text(text))
        return path

    # -- events ------------------------------------------------------------------------------
    def log(self, event: Mapping[str, Any]) -> None:
        """Append the event to log.jsonl and hand it to the callbacks (by kind, then on_event)."""
        ev = json.loads(scrubbed_json(dict(event), indent=None))  # plain JSON, secrets masked
        if self.dir is not None and self.dir.exists():
            with open(self.dir / LOG, "a", encoding="utf-8") as fh:
                fh.write(_dumps({**ev, "time": round(time.time(), 3)}, indent=None) + "\n")
        kind = ev.get("event")
        for cb in self.callbacks:
            if kind == "start":
                cb.on_start(self, ev)
            elif kind == "step":
                cb.on_step(self, ev)
            elif kind == "candidate":
                cb.on_candidate(self, ev)
            elif kind == "end":
                cb.on_end(self, ev)
            cb.on_event(self, ev)

    def start(self, **info: Any) -> None:
        """The "start" event, once per opening (a job that starts its run first keeps an inner start quiet)."""
        if not self._started:
            self._started = True
            self.log({"event": "start", **info})

    def step(self, row: Mapping[str, Any]) -> None:
        self.log({"event": "step", **row})

    def candidate(self, candidate: Mapping[str, Any]) -> None:
        self.log({"event": "candidate", **candidate})

    def end(self, **summary: Any) -> None:
        self.log({"event": "end", **summary})

    def warn(self, message: str) -> None:
        """A one-line notice (stderr, log.jsonl, callbacks)."""
        print(f"textopt: {message}", file=sys.stderr, flush=True)
        self.log({"event": "warning", "message": message})

    def save_eval(self, name: str, report: Any) -> Path | None:
        """Keep an evaluation report as run_dir/evals/<name>.jsonl (scrubbed) and tell the callbacks."""
        path = None
        if self.dir is not None:
            path = self._inside(f"{EVALS}/{name}.jsonl")
            path.parent.mkdir(parents=True, exist_ok=True)
            if hasattr(report, "save"):
                report.save(path)
                atomic_write_text(path, scrub_text(path.read_text(encoding="utf-8")))
            else:
                rows = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else r for r in getattr(report, "rows", [])]
                atomic_write_text(path, "".join(scrubbed_json(r, indent=None) + "\n" for r in rows))
        for cb in self.callbacks:
            cb.on_eval(self, name, report)
        self.log({"event": "eval", "name": name, "mean": getattr(report, "mean", None),
                  "ci95": getattr(report, "ci95", None), "n": len(getattr(report, "rows", []) or []),
                  "path": str(path) if path else None})
        return path

    def plot(self, draw: Callable[[Path], Any], name: str = "curves.png") -> Path | None:
        """Best effort: draw(path) into the run directory; a missing library or a drawing error is one line."""
        if self.dir is None:
            return None
        path = self.dir / name
        try:
            draw(path)
        except ImportError as exc:
            self.warn(f"plot {name} skipped: {getattr(exc, 'name', None) or 'matplotlib'} is not installed "
                      "(pip install matplotlib); the run's results are saved")
            return None
        except Exception as exc:  # noqa: BLE001 - a plot never costs a finished run its result
            self.warn(f"plot {name} skipped: {type(exc).__name__}: {exc}")
            return None
        return path


# -- the Trainer's history (shared by its report and plot) ----------------------------------------
