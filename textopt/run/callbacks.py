"""Callbacks a run hands its events to: plain functions, JSON lines, the progress display, MLflow."""
from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, Callable, Mapping

from ..engines.usage import active_trackers
from .files import EVALS, _dumps, scrubbed_json


class Callback:
    """Hooks a run calls (`run` is the `textopt.run.Run`); override the ones you need. `on_event` sees every event (start, step, eval,
    candidate, warning, error, end) as the dict written to log.jsonl; the others see their own kind."""

    def on_start(self, run: Any, info: dict[str, Any]) -> None: ...
    def on_step(self, run: Any, row: dict[str, Any]) -> None: ...
    def on_eval(self, run: Any, name: str, report: Any) -> None: ...
    def on_candidate(self, run: Any, candidate: dict[str, Any]) -> None: ...
    def on_end(self, run: Any, summary: dict[str, Any]) -> None: ...
    def on_event(self, run: Any, event: dict[str, Any]) -> None: ...


class FunctionCallback(Callback):
    """A plain function called with every event dict."""

    def __init__(self, fn: Callable[[dict[str, Any]], Any]) -> None:
        self.fn = fn

    def on_event(self, run: Any, event: dict[str, Any]) -> None:
        self.fn(event)


class JsonLines(Callback):
    """Machine mode: one JSON object per event on `stream` (stdout by default)."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream

    def on_event(self, run: Any, event: dict[str, Any]) -> None:
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
    elif "task_id" in row:  # a problem of a code run (textopt.recipes.humaneval_job)
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
    (with the calls and tokens of the stretch so far) or, without a bar, a line is printed whenever `every`
    seconds passed without output. Calls are counted live, as each one is made (task model and proposer
    alike): from the run's own counter (`Run.live`, fed by every `run.track()` scope) and from the outermost
    usage tracker active where the event was logged (a job's, which also sees calls outside run.track());
    the larger count of the stretch is shown, since neither counts a call that wasn't made."""

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
            from tqdm.auto import tqdm  # optional (tqdm): without it progress is printed as lines
        except ImportError:
            self.want_bar = False
            self._print("textopt: no progress bar (pip install tqdm); printing lines instead")
            return None
        return tqdm(file=self.stream or sys.stderr, **kw)

    # -- the heartbeat ---------------------------------------------------------------------------
    def _begin(self, label: str, total: int | None = None, run: Any = None) -> None:
        """A stretch of work starts: counted from now, shown until the next one (or the end)."""
        counters = [u for u in (getattr(run, "live", None), *active_trackers()[:1]) if u is not None]
        if len(counters) == 2 and counters[0] is counters[1]:
            counters.pop()
        with self._lock:
            self._close_phase_bar()
            self._work = {"label": label, "since": time.monotonic(), "total": total,
                          "start": [(u, *self._count(u)) for u in counters]}
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
    def _count(usage: Any) -> tuple[int, int]:
        """(calls, tokens) so far: paid and cached calls, the tokens of the paid ones."""
        return int(usage.calls + usage.cached_calls), int(usage.total_tokens)

    def _done(self, work: dict[str, Any]) -> tuple[int, int]:
        """(calls, tokens) made since the stretch began: a few integer reads, cheap enough for every beat."""
        best = (0, 0)
        for usage, calls0, tokens0 in work["start"]:
            calls, tokens = self._count(usage)
            best = max(best, (calls - calls0, tokens - tokens0))
        return best

    def _beat(self) -> None:
        while True:
            time.sleep(min(1.0, self.every / 3))
            with self._lock:
                work = self._work
                if work is None:
                    self._thread = None
                    return
                done, tokens = self._done(work)
                elapsed = time.monotonic() - work["since"]
                if self._phase_bar is not None:
                    self._phase_bar.n = min(done, work["total"])
                    self._phase_bar.refresh()
                elif self._bar is not None:
                    self._bar.set_postfix_str(f"{work['label']}: {done} calls, {tokens} tokens, {elapsed:.0f} s",
                                              refresh=True)
                elif time.monotonic() - self._shown >= self.every:
                    count = f"{min(done, work['total'])}/{work['total']} done" if work["total"] else f"{done} calls"
                    self._print(f"  ... {work['label']}: {count}, {tokens} tokens, {elapsed:.0f} s")

    def _close_phase_bar(self) -> None:
        if self._phase_bar is not None:
            work = self._work
            if work is not None and work["total"]:
                self._phase_bar.n = min(work["total"], self._done(work)[0])
            self._phase_bar.close()
            self._phase_bar = None

    def _next(self, run: Any, done: int, *, seeded: bool = True) -> None:
        """The stretch of work after `done` steps (search iterations, AEGIS rounds) have completed."""
        if run.kind == "search":
            self._begin(f"search iteration {done + 1}" if seeded else "search: scoring the starting prompt on validation",
                        run=run)
        elif run.kind == "aegis":
            self._begin(f"aegis round {done + 1}", run=run)
        elif run.kind == "code":  # a problem of `textopt optimize --task humaneval`
            if self._total and done >= self._total:
                self._idle()
            else:
                self._begin(f"problem {done + 1}" + (f" of {self._total}" if self._total else ""), run=run)
        else:
            of = f" of {self._total}" if self._total else ""
            self._begin(f"{self.desc} step {done + 1}{of}", run=run)

    # -- callbacks -------------------------------------------------------------------------------
    def on_start(self, run: Any, info: dict[str, Any]) -> None:
        with self._lock:
            self._idle()
            self._total = info.get("total_steps")
            if self.want_bar:
                self._bar = self._tqdm(total=self._total, initial=info.get("step", 0), desc=self.desc, unit="step")
        step = int(info.get("step") or 0)
        self._next(run, step, seeded=bool(info.get("resumed")) or step > 0)

    def on_step(self, run: Any, row: dict[str, Any]) -> None:
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

    def on_event(self, run: Any, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "phase":
            what = str(event.get("what") or event.get("phase") or "working")
            if not self.want_bar:
                self._print(what)
            self._begin(what, event.get("total") if isinstance(event.get("total"), int) else None, run=run)
        elif kind in ("error", "interrupted", "result"):
            self.on_end(run, event)
        elif kind == "budget" and self._bar is None:
            self._print(event.get("message", ""))

    def on_end(self, run: Any, summary: dict[str, Any]) -> None:
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
            from mlflow.tracking import MlflowClient  # optional heavy dependency (mlflow), loaded only when asked for
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

    def on_start(self, run: Any, info: dict[str, Any]) -> None:
        from mlflow.entities import Param  # optional heavy dependency (mlflow)

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

    def on_step(self, run: Any, row: dict[str, Any]) -> None:
        if self.run_id is None:
            return
        step = int(row.get("step", row.get("round", 0)) or 0)
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("step", "round", "epoch"):
                self.client.log_metric(self.run_id, key, float(value), step=step)
        if run.dir is not None and (run.dir / "parameters.json").exists():
            self.client.log_artifact(self.run_id, str(run.dir / "parameters.json"), f"parameters/step_{step}")

    def on_eval(self, run: Any, name: str, report: Any) -> None:
        run_id = self.run_id or self._ended
        if run_id is None:
            self._early.append((run, name, report))
            return
        if getattr(report, "mean", None) is not None:
            self.client.log_metric(run_id, f"eval_{name}_mean", float(report.mean))
        path = run.dir / EVALS / f"{name}.jsonl" if run.dir else None
        if path is not None and path.exists():
            self.client.log_artifact(run_id, str(path), "evals")

    def on_candidate(self, run: Any, candidate: dict[str, Any]) -> None:
        if self.run_id is not None:
            self.client.log_dict(self.run_id, json.loads(scrubbed_json(candidate)), f"candidates/{candidate.get('id', 'x')}.json")

    def on_event(self, run: Any, event: dict[str, Any]) -> None:
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

    def on_end(self, run: Any, summary: dict[str, Any]) -> None:
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


