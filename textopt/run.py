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

import contextlib
import dataclasses
import difflib
import json
import math
import os
import re
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

from .checkpoint import atomic_write_text
from .errors import EngineError, TextoptError

if TYPE_CHECKING:
    from .engines.usage import Usage

CHECKPOINT = "checkpoint.json"
BACKUP = "checkpoint.prev.json"
SPEC = "spec.json"
LOG = "log.jsonl"
LOCK = ".lock"
EVALS = "evals"
FORMAT = "textopt.checkpoint"
VERSION = 2
USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens", "calls", "cached_calls")


class RunError(TextoptError):
    """A run directory can't be used as asked (in use, corrupt, not a run). The message says what to do."""


class RunLocked(RunError):
    """Another run holds the directory's lock."""


class CheckpointError(RunError):
    """No readable checkpoint (neither the newest nor its backup)."""


class AuthenticationFailed(EngineError):
    """The provider refused the credentials (401/403): going on would only spend on calls that can't help."""


# -- secrets --------------------------------------------------------------------------------------
def scrub_text(text: str) -> str:
    """Mask known secret values in one string: environment keys, configured keys, URL passwords
    (textopt.secrets.mask). By value only: a prompt that merely looks like a key is written unchanged."""
    from .secrets import mask

    return mask(text)


def scrub(obj: Any) -> Any:
    """`scrub_text` applied to every string (keys included) of a JSON-like structure."""
    if isinstance(obj, str):
        return scrub_text(obj)
    if isinstance(obj, Mapping):
        return {scrub(k) if isinstance(k, str) else k: scrub(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub(v) for v in obj]
    return obj


def _dumps(obj: Any, indent: int | None = 2) -> str:
    """JSON text that can always be written as UTF-8 (a lone surrogate falls back to \\u escapes)."""
    text = json.dumps(obj, indent=indent, ensure_ascii=False, default=str)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, indent=indent, ensure_ascii=True, default=str)
    return text


def scrubbed_json(obj: Any, indent: int | None = 2, *, urls: bool = False) -> str:
    """`obj` as JSON text with secrets masked: the text is scrubbed in one pass (a masked value never
    contains a quote, so the JSON stays valid; if it ever didn't, every string is scrubbed one by one).
    urls=True (a spec: configuration, not parameter values) also masks any user:password@ of a URL."""
    from .secrets import scrub_url

    text = scrub_text(_dumps(obj, indent))
    try:
        json.loads(text)
    except ValueError:
        text = _dumps(scrub(obj), indent)
    if urls:
        text = scrub_url(text) or text
    return text


def is_auth_error(error: Any) -> bool:
    """True for a provider's 401/403 (an exception, its cause, or the text of a recorded failure)."""
    seen = 0
    while isinstance(error, BaseException) and seen < 5:
        if isinstance(error, AuthenticationFailed):
            return True
        for attr in ("status", "status_code", "http_status"):
            if getattr(error, attr, None) in (401, 403):
                return True
        if type(error).__name__ in ("AuthenticationError", "PermissionDeniedError"):
            return True
        nxt = error.__cause__ or error.__context__
        if nxt is None:
            error = str(error)
            break
        error, seen = nxt, seen + 1
    text = str(getattr(error, "error", error))
    return bool(re.search(r"AuthenticationError|PermissionDeniedError|\b(?:Error code|status(?: code)?|HTTP)\W{0,3}(?:401|403)\b"
                          r"|\b401 Unauthorized\b|\b403 Forbidden\b|[Ii]ncorrect API key|[Ii]nvalid API key", text))


# -- budgets and callbacks ------------------------------------------------------------------------
@dataclass
class Budgets:
    """Limits checked between steps (a step in flight finishes). None = no limit."""

    tokens: int | None = None
    calls: int | None = None
    usd: float | None = None
    metric_calls: int | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or math.isnan(v)):
                raise ValueError(f"budget {f.name} must be a non-negative number or None, got {v!r}")

    def exceeded(self, totals: Mapping[str, float], metric_calls: int = 0) -> str | None:
        """The stop reason ("budget_tokens", "budget_calls", "budget_usd", "budget_metric_calls") or None."""
        if self.tokens is not None and totals.get("total_tokens", 0) >= self.tokens:
            return "budget_tokens"
        if self.calls is not None and totals.get("calls", 0) >= self.calls:
            return "budget_calls"
        if self.usd is not None and (totals.get("cost_usd", 0.0) >= self.usd or totals.get("cost_known") is False):
            return "budget_usd"  # a call whose price is unknown: the dollar budget can't be held, so stop
        if self.metric_calls is not None and metric_calls >= self.metric_calls:
            return "budget_metric_calls"
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Callback:
    """Hooks a run calls; override the ones you need. `on_event` sees every event (start, step, eval,
    candidate, warning, error, end) as the dict written to log.jsonl; the others see their own kind."""

    def on_start(self, run: "Run", info: dict[str, Any]) -> None: ...
    def on_step(self, run: "Run", row: dict[str, Any]) -> None: ...
    def on_eval(self, run: "Run", name: str, report: Any) -> None: ...
    def on_candidate(self, run: "Run", candidate: dict[str, Any]) -> None: ...
    def on_end(self, run: "Run", summary: dict[str, Any]) -> None: ...
    def on_event(self, run: "Run", event: dict[str, Any]) -> None: ...


class FunctionCallback(Callback):
    """A plain function called with every event dict."""

    def __init__(self, fn: Callable[[dict[str, Any]], Any]) -> None:
        self.fn = fn

    def on_event(self, run: "Run", event: dict[str, Any]) -> None:
        self.fn(event)


class JsonLines(Callback):
    """Machine mode: one JSON object per event on `stream` (stdout by default)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream

    def on_event(self, run: "Run", event: dict[str, Any]) -> None:
        print(_dumps(event, indent=None), file=self.stream or sys.stdout, flush=True)


def as_callback(cb: Callback | Callable[[dict[str, Any]], Any]) -> Callback:
    if isinstance(cb, Callback):
        return cb
    if callable(cb):
        return FunctionCallback(cb)
    raise TypeError(f"a callback must be a textopt.run.Callback or a function(event), got {type(cb).__name__}")


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def describe_row(row: Mapping[str, Any]) -> str:
    """One line for a step row of any run kind (Trainer, Search, AEGIS)."""
    if "round" in row:
        head = f"round {row['round']} {row.get('side', '')}".rstrip()
        parts = [f"{k} {_fmt(row[k])}" for k in ("tpr", "tnr", "asr", "score_gain") if k in row]
    elif "task_id" in row:  # a problem of a code run (textopt.code_job)
        head = f"problem {row.get('step', '?')} {row['task_id']}"
        parts = [str(row.get("outcome") or ("passed" if row.get("passed") else "failed"))]
    elif row.get("kind") in ("seed", "mutation", "merge"):  # a Search iteration
        head = f"iteration {row.get('step', '?')} {row['kind']}"
        parts = [f"{k} {_fmt(row[k])}" for k in ("parent_train", "train", "val", "best_val") if row.get(k) is not None]
        parts.append(f"added #{row['added']}" if row.get("added") is not None else
                     str(row.get("rejected") or row.get("skipped") or "nothing added"))
    else:
        head = f"step {row.get('step', '?')}"
        parts = [f"{k} {_fmt(row.get(k))}" for k in ("train", "val") if k in row]
        if "accepted" in row and row.get("step", 1) != 0:
            parts.append("kept" if row["accepted"] else "REVERTED (validation got worse)")
    if row.get("failures"):
        parts.append(f"{row['failures']} failed update(s)")
    parts.append(f"{row.get('tokens', 0)} tokens")
    if row.get("cost_usd"):
        parts.append(f"${row['cost_usd']:.4f}")
    return f"{head}: " + ", ".join(parts)


class Progress(Callback):
    """The one progress display: a tqdm bar on a terminal (bar=None: only if stderr is one), else a line
    per step on stderr. Without tqdm it falls back to lines.

    It also keeps a heartbeat, so no long stretch is silent: a "phase" event (e.g. scoring on the test set),
    a run's start and each step begin a stretch of work; while one lasts, the bar is refreshed every second
    (with the calls made so far) or, without a bar, a line is printed whenever `every` seconds passed
    without output. Calls are counted from the usage trackers active where the event was logged."""

    def __init__(self, bar: bool | None = None, *, desc: str = "textopt", stream: Any = None, every: float = 8.0) -> None:
        self.stream = stream
        self.want_bar = bar if bar is not None else (stream or sys.stderr).isatty()
        self.desc, self._bar, self._phase_bar = desc, None, None
        self.every = every
        self._lock = threading.RLock()
        self._work: dict[str, Any] | None = None  # label, since, total, usage, calls0
        self._shown = time.monotonic()
        self._thread: threading.Thread | None = None
        self._total: int | None = None

    # -- output ----------------------------------------------------------------------------------
    def _print(self, text: str) -> None:
        with self._lock:
            print(text, file=self.stream or sys.stderr, flush=True)
            self._shown = time.monotonic()

    def _tqdm(self, **kw: Any) -> Any:
        if not self.want_bar:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.want_bar = False
            self._print("textopt: no progress bar (pip install tqdm); printing lines instead")
            return None
        return tqdm(file=self.stream or sys.stderr, **kw)

    # -- the heartbeat ---------------------------------------------------------------------------
    def _begin(self, label: str, total: int | None = None) -> None:
        """A stretch of work starts: counted from now, shown until the next one (or the end)."""
        from .engines.usage import active_trackers

        trackers = active_trackers()
        usage = trackers[0] if trackers else None
        with self._lock:
            self._close_phase_bar()
            self._work = {"label": label, "since": time.monotonic(), "total": total, "usage": usage,
                          "calls0": self._calls(usage)}
            if total and self.want_bar and self._bar is None:
                self._phase_bar = self._tqdm(total=total, desc=label, unit="example")
            if self._thread is None:  # the beat thread clears this under the lock as it ends: no lost restart
                self._thread = threading.Thread(target=self._beat, name="textopt-progress", daemon=True)
                self._thread.start()

    def _idle(self) -> None:
        with self._lock:
            self._work = None
            self._close_phase_bar()

    @staticmethod
    def _calls(usage: Any) -> int:
        return 0 if usage is None else int(usage.calls + usage.cached_calls)

    def _beat(self) -> None:
        while True:
            time.sleep(min(1.0, self.every / 3))
            with self._lock:
                work = self._work
                if work is None:
                    self._thread = None
                    return
                done = self._calls(work["usage"]) - work["calls0"]
                elapsed = time.monotonic() - work["since"]
                if self._phase_bar is not None:
                    self._phase_bar.n = min(done, work["total"])
                    self._phase_bar.refresh()
                elif self._bar is not None:
                    self._bar.set_postfix_str(f"{work['label']}: {done} calls, {elapsed:.0f} s", refresh=True)
                elif time.monotonic() - self._shown >= self.every:
                    count = f"{min(done, work['total'])}/{work['total']} done" if work["total"] else f"{done} calls"
                    self._print(f"  ... {work['label']}: {count}, {elapsed:.0f} s")

    def _close_phase_bar(self) -> None:
        if self._phase_bar is not None:
            work = self._work
            if work is not None and work["total"]:
                self._phase_bar.n = min(work["total"], self._calls(work["usage"]) - work["calls0"])
            self._phase_bar.close()
            self._phase_bar = None

    def _next(self, run: "Run", done: int, *, seeded: bool = True) -> None:
        """The stretch of work after `done` steps (search iterations, AEGIS rounds) have completed."""
        if run.kind == "search":
            self._begin(f"search iteration {done + 1}" if seeded else "search: scoring the starting prompt on validation")
        elif run.kind == "aegis":
            self._begin(f"aegis round {done + 1}")
        elif run.kind == "code":  # a problem of `textopt optimize --task humaneval`
            if self._total and done >= self._total:
                self._idle()
            else:
                self._begin(f"problem {done + 1}" + (f" of {self._total}" if self._total else ""))
        else:
            of = f" of {self._total}" if self._total else ""
            self._begin(f"{self.desc} step {done + 1}{of}")

    # -- callbacks -------------------------------------------------------------------------------
    def on_start(self, run: "Run", info: dict[str, Any]) -> None:
        with self._lock:
            self._idle()
            self._total = info.get("total_steps")
            if self.want_bar:
                self._bar = self._tqdm(total=self._total, initial=info.get("step", 0), desc=self.desc, unit="step")
        step = int(info.get("step") or 0)
        self._next(run, step, seeded=bool(info.get("resumed")) or step > 0)

    def on_step(self, run: "Run", row: dict[str, Any]) -> None:
        with self._lock:
            if self._bar is not None:
                if row.get("step", 1) > 0:
                    self._bar.update(1)
                post = {k: row[k] for k in ("train", "val", "accepted") if k in row}
                self._bar.set_postfix(**post, tokens=run.totals["total_tokens"], refresh=True)
            elif row.get("step", row.get("round", 1)) != 0 or "round" in row or "kind" in row:
                self._print(describe_row(row))
        done = row.get("step", row.get("round"))
        if isinstance(done, int):
            self._next(run, done)

    def on_event(self, run: "Run", event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "phase":
            what = str(event.get("what") or event.get("phase") or "working")
            if not self.want_bar:
                self._print(what)
            self._begin(what, event.get("total") if isinstance(event.get("total"), int) else None)
        elif kind in ("error", "interrupted", "result"):
            self.on_end(run, event)
        elif kind == "budget" and self._bar is None:
            self._print(event.get("message", ""))

    def on_end(self, run: "Run", summary: dict[str, Any]) -> None:
        with self._lock:
            self._idle()
            if self._bar is not None:
                self._bar.close()
                self._bar = None


class MLflowCallback(Callback):
    """Track a run in MLflow: spec and budgets as params, every step's numbers as metrics, evaluation reports,
    candidates and the parameter values as artifacts, the run's status at the end. Needs
    `pip install 'textopt[mlflow]'`. tracking_uri: a local store MLflow 3 supports, "sqlite:///mlflow.db"
    (a file), or a tracking server's URL such as "http://127.0.0.1:5000". The store is opened here, so a URI
    it can't use is one line before the run starts. Only tracking is used, never the model registry: its
    URI is set to the tracking URI, so MLflow doesn't look for a registry elsewhere."""

    def __init__(self, tracking_uri: str | None = None, *, experiment: str = "textopt", run_name: str | None = None) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise ImportError("MLflowCallback needs mlflow: pip install 'textopt[mlflow]'", name="mlflow") from exc
        uri = tracking_uri
        if uri and uri.startswith("sqlite:") and not uri.startswith("sqlite:///"):
            raise ValueError(f"--mlflow {uri}: a sqlite store is written sqlite:///PATH (three slashes, then the path), "
                             "e.g. sqlite:///mlflow.db")
        try:
            self.client = MlflowClient(uri, registry_uri=uri)
            self.client.search_experiments(max_results=1)  # opens the store now (a sqlite file is created here)
        except ImportError as exc:
            raise ImportError(f"--mlflow {uri}: this store needs {getattr(exc, 'name', None) or exc}: "
                              "pip install 'textopt[mlflow]'", name=getattr(exc, "name", None)) from None
        except Exception as exc:  # noqa: BLE001 - MlflowException and whatever its stores raise
            text = " ".join(str(exc).split())[:240]
            raise ValueError(f"--mlflow {uri}: MLflow can't use this tracking store ({type(exc).__name__}: {text}); "
                             "use sqlite:///mlflow.db or an MLflow server's URL such as http://127.0.0.1:5000") from None
        self.experiment, self.run_name = experiment, run_name
        self.run_id: str | None = None
        self._ended: str | None = None  # the run just finished: a job's last evaluations and result land there too
        self._early: list[tuple[Any, str, Any]] = []  # evaluations before the run started (a search's test_before)

    def on_start(self, run: "Run", info: dict[str, Any]) -> None:
        from mlflow.entities import Param

        self._ended = None
        exp = self.client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(self.experiment)
        name = self.run_name or (run.dir.name if run.dir else run.kind)
        self.run_id = self.client.create_run(exp_id, run_name=name, tags={"textopt.kind": run.kind,
                                             "textopt.run_dir": str(run.dir or ""), "textopt.resumed": str(info.get("resumed"))}).info.run_id
        flat = {"kind": run.kind, **_flatten(run.spec.get("args") or run.spec.get("options") or {}),
                **{f"budget_{k}": v for k, v in run.budgets.to_dict().items() if v is not None}}
        params = [Param(k[:250], str(v)[:500]) for k, v in flat.items() if v is not None and not isinstance(v, (dict, list))]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        early, self._early = self._early, []
        for r, name, report in early:
            self.on_eval(r, name, report)

    def on_step(self, run: "Run", row: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        step = int(row.get("step", row.get("round", 0)) or 0)
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "round", "epoch"):
                self.client.log_metric(self.run_id, key, float(value), step=step)
        if run.dir is not None and (run.dir / "parameters.json").exists():
            self.client.log_artifact(self.run_id, str(run.dir / "parameters.json"), f"parameters/step_{step}")

    def on_eval(self, run: "Run", name: str, report: Any) -> None:
        run_id = self.run_id or self._ended
        if run_id is None:
            self._early.append((run, name, report))
            return
        if getattr(report, "mean", None) is not None:
            self.client.log_metric(run_id, f"eval_{name}_mean", float(report.mean))
        path = run.dir / EVALS / f"{name}.jsonl" if run.dir else None
        if path is not None and path.exists():
            self.client.log_artifact(run_id, str(path), "evals")

    def on_candidate(self, run: "Run", candidate: dict[str, Any]) -> None:
        if self.run_id is not None:
            self.client.log_dict(self.run_id, json.loads(scrubbed_json(candidate)), f"candidates/{candidate.get('id', 'x')}.json")

    def on_event(self, run: "Run", event: dict[str, Any]) -> None:
        run_id = self.run_id or self._ended
        if run_id is not None and event.get("event") in ("error", "interrupted"):
            self.client.set_terminated(run_id, "FAILED" if event["event"] == "error" else "KILLED")
            self.run_id = self._ended = None
        elif run_id is not None and event.get("event") == "result":  # a job's held-out scores, after the run ended
            for key in ("accuracy_before", "accuracy_after", "gain"):
                if isinstance(event.get(key), (int, float)) and not isinstance(event.get(key), bool):
                    self.client.log_metric(run_id, key, float(event[key]))
            if run.dir is not None and (run.dir / "result.json").exists():
                self.client.log_artifact(run_id, str(run.dir / "result.json"))

    def on_end(self, run: "Run", summary: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        for name in ("parameters.json", "history.json", "spec.json"):
            if run.dir is not None and (run.dir / name).exists():
                self.client.log_artifact(self.run_id, str(run.dir / name))
        self.client.set_tag(self.run_id, "textopt.stopped", str(summary.get("stopped")))
        self.client.set_terminated(self.run_id, "FINISHED")
        self.run_id, self._ended = None, self.run_id


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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
    from filelock import FileLock, Timeout

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
def usage_columns(usage: "Usage") -> dict[str, Any]:
    """The per-row usage columns of a step (tokens, calls, cached_calls, cost_usd), shared by every loop."""
    return {"tokens": usage.total_tokens, "calls": usage.calls, "cached_calls": usage.cached_calls,
            "cost_usd": round(float(getattr(usage, "cost_usd", 0.0) or 0.0), 8),
            **({"cost_known": False} if getattr(usage, "cost_known", True) is False else {})}


class Run:
    """One run directory (or none: run_dir=None keeps accounting, budgets and callbacks in memory)."""

    def __init__(self, run_dir: str | Path | None, *, kind: str, spec: Mapping[str, Any] | None = None,
                 budgets: Budgets | None = None, callbacks: Sequence[Callback | Callable[[dict[str, Any]], Any]] = (),
                 resume: bool = False) -> None:
        self.dir = Path(run_dir) if run_dir is not None else None
        self.kind, self.spec = kind, dict(spec or {})
        self.budgets = budgets or Budgets()
        self.callbacks = [as_callback(c) for c in callbacks]
        self.resume = resume
        self.totals: dict[str, Any] = {**{k: 0 for k in USAGE_KEYS}, "cost_usd": 0.0}
        self.metric_calls = 0
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
                import asyncio

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
            if has_run(self.dir) and not (self.resume or self._wrote):
                raise FileExistsError(
                    f"{self.dir} already holds a run; continue it with `textopt resume {self.dir}` (Python: "
                    f"textopt.resume({str(self.dir)!r}, ...)), or pick a new run directory")
            if (self.dir / SPEC).exists() and (self.resume or self._wrote):
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
        """Count what runs inside (tokens, calls, cached calls, cost in USD) into this run's totals."""
        from .engines.usage import track_usage

        with track_usage() as usage:
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
                from .secrets import scrub as scrub_error

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
@dataclass
class History:
    """What a run did. `rows`: one dict per step (step 0 = the validation baseline before any update)
    with step, epoch, train (metric on the batch, before the update), val, best_val, accepted, tokens,
    calls, cached_calls, cost_usd, seconds, failures. `initial` / `final`: parameter values before and after."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    initial: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None
    run_dir: str | None = None

    @property
    def best_val(self) -> float | None:
        vals = [r["val"] for r in self.rows if r.get("val") is not None and r.get("accepted")]
        return max(vals) if vals else None

    @property
    def rejected(self) -> list[int]:
        """Steps whose update was reverted because validation got worse."""
        return [r["step"] for r in self.rows if not r.get("accepted", True)]

    @property
    def tokens(self) -> int:
        return sum(int(r.get("tokens", 0)) for r in self.rows)

    @property
    def cost_usd(self) -> float:
        return round(sum(float(r.get("cost_usd", 0.0) or 0.0) for r in self.rows), 8)

    def to_dict(self) -> dict[str, Any]:
        return {"stopped": self.stopped, "initial": self.initial, "final": self.final, "rows": self.rows}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], run_dir: str | None = None) -> "History":
        return cls(list(data.get("rows", [])), dict(data.get("initial", {})), dict(data.get("final", {})),
                   data.get("stopped"), run_dir)

    @classmethod
    def load(cls, run_dir: str | Path) -> "History":
        """The history of a run directory (from its checkpoint, or the backup if that is unreadable)."""
        state = read_checkpoint(run_dir)
        if state is None or "history" not in state:
            raise FileNotFoundError(f"{run_dir} holds no Trainer checkpoint ({CHECKPOINT}); is it a run directory made "
                                    "by the Trainer (run_dir=...) or `textopt optimize`?")
        return cls.from_dict(state["history"], str(run_dir))

    def diff(self, name: str, width: int = 90) -> list[str]:
        """A line diff of one parameter's value, before -> after (values are wrapped to `width`)."""
        return text_diff(self.initial.get(name, ""), self.final.get(name, ""), name, width)

    def summary(self) -> str:
        """A plain-text table of the steps, the totals, and a diff of every parameter."""
        from .engines.pricing import format_cost

        steps = [r for r in self.rows if r["step"] > 0]
        where = f"{self.run_dir}: " if self.run_dir else ""
        out = [f"{where}{len(steps)} step(s), stopped: {self.stopped or 'not finished'}",
               f"{'step':>4} {'epoch':>5} {'train':>6} {'val':>6} {'best':>6} {'kept':>5} {'tokens':>7} {'calls':>5} "
               f"{'cached':>6} {'usd':>8} {'sec':>6}"]
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        for r in self.rows:
            kept = "base" if r["step"] == 0 else ("yes" if r.get("accepted") else "NO")
            out.append(
                f"{r['step']:>4} {r.get('epoch', 0):>5} {fmt(r.get('train')):>6} {fmt(r.get('val')):>6} "
                f"{fmt(r.get('best_val')):>6} {kept:>5} {r.get('tokens', 0):>7} {r.get('calls', 0):>5} "
                f"{r.get('cached_calls', 0):>6} {float(r.get('cost_usd', 0) or 0):>8.4f} {r.get('seconds', 0):>6.1f}")
        calls = sum(int(r.get("calls", 0)) for r in self.rows)
        cached = sum(int(r.get("cached_calls", 0)) for r in self.rows)
        out.append(f"best val: {fmt(self.best_val)}; rejected steps: {self.rejected or 'none'}; "
                   f"tokens: {self.tokens} in {calls} paid calls, {cached} served by the cache; "
                   f"cost: {format_cost(self.cost_usd, all(r.get('cost_known', True) for r in self.rows))}")
        why = [(r["step"], n, t) for r in self.rows for n, t in (r.get("reasoning") or {}).items() if t]
        if why:
            out.append("\nwhy the optimizer changed what it changed:")
            out.extend(f"  step {step} {name}: {' '.join(str(text).split())[:300]}" for step, name, text in why)
        for name in self.initial:
            d = self.diff(name)
            out.append(f"\nparameter {name}: " + ("unchanged" if not d else "before -> after"))
            out.extend(d[2:] if d else [])
        return "\n".join(out)

    def plot(self, path: str | Path | None = None) -> Any:
        """A matplotlib Figure: metric per step (rejected steps marked), tokens per step, and the
        before/after diff of each parameter. With `path`, also saved there as PNG. Needs matplotlib."""
        return plot_history(self, path)


def text_diff(before: Any, after: Any, name: str, width: int = 90) -> list[str]:
    def lines(text: Any) -> list[str]:
        out: list[str] = []
        for para in str(text).splitlines() or [""]:
            out.extend(textwrap.wrap(para, width) or [""])
        return out

    return list(difflib.unified_diff(lines(before), lines(after), f"{name} (before)", f"{name} (after)", lineterm="", n=2))


def plot_history(history: History, path: str | Path | None = None) -> Any:
    """See History.plot."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("History.plot needs matplotlib: pip install matplotlib", name="matplotlib") from exc

    diffs = {name: history.diff(name)[2:] for name in history.initial}
    diff_lines = sum(min(len(d), 40) + 2 for d in diffs.values()) or 2
    fig = Figure(figsize=(10, 6 + 0.17 * diff_lines))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, 1, height_ratios=[3, 2, max(1.0, 0.17 * diff_lines)])
    ax1, ax2, ax3 = fig.add_subplot(grid[0]), fig.add_subplot(grid[1]), fig.add_subplot(grid[2])
    rows = history.rows
    steps = [r["step"] for r in rows]
    for key, style, label in (("train", "o-", "train (batch, before update)"), ("val", "s-", "validation")):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax1.plot(*zip(*pts), style, label=label)
    rej = [(r["step"], r["val"]) for r in rows if not r.get("accepted", True) and r.get("val") is not None]
    if rej:
        ax1.plot(*zip(*rej), "x", color="red", markersize=12, mew=2, label="rejected (reverted)")
    ax1.set_ylabel("metric")
    ax1.set_title(f"run {history.run_dir or ''} - stopped: {history.stopped or 'not finished'}")
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(loc="best", fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.bar(steps, [r.get("tokens", 0) for r in rows], color="tab:gray", label="paid tokens")
    ax2.set_ylabel("tokens")
    ax2.set_xlabel("step (0 = baseline)")
    if history.cost_usd:
        ax2.set_title(f"cost ${history.cost_usd:.4f}", fontsize=9)
    ax2.grid(alpha=0.3)
    for ax in (ax1, ax2):
        if steps:
            ax.set_xticks(steps)
    ax3.axis("off")
    y, dy = 1.0, 1.0 / (diff_lines + 1)
    for name, d in diffs.items():
        ax3.text(0, y, f"{name}: " + ("unchanged" if not d else "before (-) / after (+)"), family="monospace",
                 fontsize=8, weight="bold", va="top", transform=ax3.transAxes)
        y -= dy
        for line in d[:40]:
            color = "tab:red" if line.startswith("-") else "tab:green" if line.startswith("+") else "black"
            ax3.text(0, y, line[:120], family="monospace", fontsize=7, color=color, va="top", transform=ax3.transAxes)
            y -= dy
        y -= dy
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig
