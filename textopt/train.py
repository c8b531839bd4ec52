"""Training runs people can trust: minibatch steps, validation with revert-if-worse, budgets, and a
checkpoint after every step from which a killed run resumes to the same result.

A step: the forward passes of a minibatch run concurrently (bounded by `concurrency`), their losses are
joined with `to.sum` into one backward, and the optimizer makes one update. Then validation decides,
with keep_best, whether the new values stay. After the step, `run_dir/checkpoint.json` holds all the
state (parameters, optimizer state, history, RNG and data order, token totals), written atomically.

Resuming. A Python-made run can't pickle its functions, so `run_dir/spec.json` records the options and a
fingerprint of the data, and `resume(run_dir, forward=..., loss=..., optimizer=..., train=..., val=...)`
takes the code again. A run made by `textopt optimize` records its command-line arguments in spec.json
(engine *spec strings*, never keys), so `resume(run_dir)` / `textopt resume run_dir` rebuilds it alone.
Every LLM call of the resumed steps is re-asked with the same request, so the disk cache serves what
was already paid for and the run ends exactly where an uninterrupted run would.
"""
from __future__ import annotations

import asyncio
import difflib
import hashlib
import inspect
import json
import math
import random
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from ._sync import run_sync
from .checkpoint import atomic_write_json, read_json, save
from .errors import BudgetExceeded
from .variable import Variable

if TYPE_CHECKING:
    from .engines.base import Engine
    from .optim.base import Optimizer

CHECKPOINT = "checkpoint.json"
SPEC = "spec.json"
PARAMETERS = "parameters.json"
HISTORY = "history.json"

Forward = Callable[[Any], "Variable | Awaitable[Variable]"]
Loss = Callable[[Any, Variable], "Variable | Awaitable[Variable]"]
Metric = Callable[[Any, Variable], "float | None"]


def default_metric(example: Any, output: Variable) -> float | None:
    """Exact match against `example.answer` (or example["answer"]); None when the example has no answer."""
    from .datasets import exact_match

    answer = example.get("answer") if isinstance(example, dict) else getattr(example, "answer", None)
    if answer is None:
        return None
    return float(exact_match(output.text, str(answer)))


def fingerprint(examples: Sequence[Any]) -> str:
    """A stable hash of a data set, so a resumed run can tell it got the same data."""
    blob = json.dumps([repr(e) for e in examples], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


async def _call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a user function that may be async, sync, or sync returning an awaitable.
    Sync functions run in a worker thread so that a batch still runs concurrently."""
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)):
        result = await fn(*args)
    else:
        result = await asyncio.to_thread(fn, *args)
    while inspect.isawaitable(result):
        result = await result
    return result


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


# ---------------------------------------------------------------------------------------------------
@dataclass
class History:
    """What a run did. `rows`: one dict per step (step 0 = the validation baseline before any update)
    with step, epoch, train (metric on the batch, before the update), val, best_val, accepted, tokens,
    calls, cached_calls, seconds, failures. `initial` / `final`: parameter values before and after."""

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

    def to_dict(self) -> dict[str, Any]:
        return {"stopped": self.stopped, "initial": self.initial, "final": self.final, "rows": self.rows}

    @classmethod
    def from_dict(cls, data: dict[str, Any], run_dir: str | None = None) -> "History":
        return cls(list(data.get("rows", [])), dict(data.get("initial", {})), dict(data.get("final", {})), data.get("stopped"), run_dir)

    @classmethod
    def load(cls, run_dir: str | Path) -> "History":
        """The history of a run directory (from its checkpoint)."""
        path = Path(run_dir) / CHECKPOINT
        if not path.exists():
            raise FileNotFoundError(f"{run_dir} holds no {CHECKPOINT}: is it a run directory made by the Trainer (run_dir=...)?")
        data = read_json(path)
        return cls.from_dict(data["history"], str(run_dir))

    def diff(self, name: str, width: int = 90) -> list[str]:
        """A line diff of one parameter's value, before -> after (values are wrapped to `width`)."""
        def lines(text: Any) -> list[str]:
            out: list[str] = []
            for para in str(text).splitlines() or [""]:
                out.extend(textwrap.wrap(para, width) or [""])
            return out

        before, after = lines(self.initial.get(name, "")), lines(self.final.get(name, ""))
        return list(difflib.unified_diff(before, after, f"{name} (before)", f"{name} (after)", lineterm="", n=2))

    def summary(self) -> str:
        """A plain-text table of the steps, the totals, and a diff of every parameter."""
        out = []
        steps = [r for r in self.rows if r["step"] > 0]
        where = f"{self.run_dir}: " if self.run_dir else ""
        out.append(f"{where}{len(steps)} step(s), stopped: {self.stopped or 'not finished'}")
        out.append(f"{'step':>4} {'epoch':>5} {'train':>6} {'val':>6} {'best':>6} {'kept':>5} {'tokens':>7} {'calls':>5} {'cached':>6} {'sec':>6}")
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        for r in self.rows:
            kept = "base" if r["step"] == 0 else ("yes" if r.get("accepted") else "NO")
            out.append(
                f"{r['step']:>4} {r.get('epoch', 0):>5} {fmt(r.get('train')):>6} {fmt(r.get('val')):>6} {fmt(r.get('best_val')):>6} "
                f"{kept:>5} {r.get('tokens', 0):>7} {r.get('calls', 0):>5} {r.get('cached_calls', 0):>6} {r.get('seconds', 0):>6.1f}"
            )
        calls = sum(int(r.get("calls", 0)) for r in self.rows)
        cached = sum(int(r.get("cached_calls", 0)) for r in self.rows)
        out.append(f"best val: {fmt(self.best_val)}; rejected steps: {self.rejected or 'none'}; "
                   f"tokens: {self.tokens} in {calls} paid calls, {cached} served by the cache")
        for name in self.initial:
            d = self.diff(name)
            out.append(f"\nparameter {name}: " + ("unchanged" if not d else "before -> after"))
            out.extend(d[2:] if d else [])
        return "\n".join(out)

    def plot(self, path: str | Path | None = None) -> Any:
        """A matplotlib Figure: train/val metric per step (rejected steps marked), tokens per step, and the
        before/after diff of each parameter. With `path`, also saved there as PNG. Needs matplotlib."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError as exc:
            raise ImportError("History.plot needs matplotlib: pip install matplotlib") from exc

        diffs = {name: self.diff(name)[2:] for name in self.initial}
        diff_lines = sum(min(len(d), 40) + 2 for d in diffs.values()) or 2
        fig = Figure(figsize=(10, 6 + 0.17 * diff_lines))
        FigureCanvasAgg(fig)
        grid = fig.add_gridspec(3, 1, height_ratios=[3, 2, max(1.0, 0.17 * diff_lines)])
        ax1, ax2, ax3 = fig.add_subplot(grid[0]), fig.add_subplot(grid[1]), fig.add_subplot(grid[2])
        steps = [r["step"] for r in self.rows]
        train = [(r["step"], r["train"]) for r in self.rows if r.get("train") is not None]
        val = [(r["step"], r["val"]) for r in self.rows if r.get("val") is not None]
        if train:
            ax1.plot(*zip(*train), "o-", label="train (batch, before update)")
        if val:
            ax1.plot(*zip(*val), "s-", label="validation")
        rej = [(r["step"], r["val"]) for r in self.rows if not r.get("accepted", True) and r.get("val") is not None]
        if rej:
            ax1.plot(*zip(*rej), "x", color="red", markersize=12, mew=2, label="rejected (reverted)")
        ax1.set_ylabel("metric")
        ax1.set_title(f"run {self.run_dir or ''} - stopped: {self.stopped or 'not finished'}")
        ax1.legend(loc="best", fontsize=8)
        ax1.grid(alpha=0.3)
        ax2.bar(steps, [r.get("tokens", 0) for r in self.rows], color="tab:gray", label="paid tokens")
        ax2.set_ylabel("tokens")
        ax2.set_xlabel("step (0 = baseline)")
        ax2.grid(alpha=0.3)
        for ax in (ax1, ax2):
            if steps:
                ax.set_xticks(steps)
        ax3.axis("off")
        y = 1.0
        dy = 1.0 / (diff_lines + 1)
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


# ---------------------------------------------------------------------------------------------------
class Trainer:
    """Minibatch training with validation, revert-if-worse, budgets and per-step checkpoints.

    forward(example) -> Variable and loss(example, output) -> Variable may be sync or async.
    metric(example, output) -> float (default: exact match on `example.answer`) scores train batches and
    the validation set; with keep_best an update is reverted (and recorded) when validation gets worse.
    patience: stop after that many steps without a validation improvement. steps: total updates
    (default: `epochs` passes over `train`). budget_tokens / budget_calls: stop cleanly, checkpointed,
    once that many paid tokens / calls were spent (checked between steps; a step in flight finishes).
    run_dir: where checkpoints go (resume with `textopt.resume`). progress: tqdm bar (default: only on a
    terminal). log: a callable that receives one dict per event (the CLI's --json mode prints them).
    """

    def __init__(
        self,
        forward: Forward,
        loss: Loss,
        optimizer: "Optimizer",
        *,
        train: Sequence[Any],
        val: Sequence[Any] | None = None,
        batch_size: int = 4,
        concurrency: int = 8,
        steps: int | None = None,
        epochs: int = 1,
        budget_tokens: int | None = None,
        budget_calls: int | None = None,
        keep_best: bool = True,
        patience: int | None = None,
        metric: Metric | None = None,
        backward_engine: "Engine | str | None" = None,
        run_dir: str | Path | None = None,
        seed: int = 0,
        progress: bool | None = None,
        log: Callable[[dict[str, Any]], None] | None = None,
        spec: dict[str, Any] | None = None,
    ) -> None:
        from .optim.base import Optimizer

        if not callable(forward) or not callable(loss):
            raise TypeError("Trainer needs forward(example) -> Variable and loss(example, output) -> Variable functions")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a textopt Optimizer (e.g. to.TGD([...])), got {type(optimizer).__name__}")
        train = list(train)
        if not train:
            raise ValueError("train is empty: pass a list of examples to learn from (e.g. to.datasets.load('object_counting'))")
        for name, value, low in (("batch_size", batch_size, 1), ("concurrency", concurrency, 1), ("epochs", epochs, 1)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name, value in (("steps", steps), ("budget_tokens", budget_tokens), ("budget_calls", budget_calls), ("patience", patience)):
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")
        self.forward, self.loss, self.optimizer = forward, loss, optimizer
        self.train = train
        self.val = list(val) if val else []
        self.batch_size, self.concurrency, self.epochs = batch_size, concurrency, epochs
        self.total_steps = steps if steps is not None else epochs * math.ceil(len(train) / batch_size)
        self.budget_tokens, self.budget_calls = budget_tokens, budget_calls
        self.keep_best, self.patience = keep_best, patience
        self.metric = metric or default_metric
        self.backward_engine = backward_engine
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.seed = seed
        self.progress, self.log = progress, log
        self.spec = spec
        # mutable run state (all of it goes into the checkpoint)
        self.step = 0
        self.epoch = 0
        self.cursor = 0
        self.order: list[int] = []
        self.rng = random.Random(seed)
        self.best_val: float | None = None
        self.bad_steps = 0
        self.baseline_done = False
        self.stopped: str | None = None
        self.totals = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "calls": 0, "cached_calls": 0}
        self.rows: list[dict[str, Any]] = []
        self.initial = self._values()
        self.resumed = False

    # -- public --------------------------------------------------------------------------------
    @property
    def parameters(self) -> list[Variable]:
        return list(self.optimizer.parameters)

    @property
    def history(self) -> History:
        return History(self.rows, dict(self.initial), self._values(), self.stopped, str(self.run_dir) if self.run_dir else None)

    def fit(self) -> History:
        """Run to the end (steps done, early stop, or budget) and return the History. Sync wrapper of `afit`."""
        return run_sync(self.afit())

    async def afit(self) -> History:
        if self.run_dir is not None:
            self._prepare_run_dir()
        self.stopped = None
        bar = self._bar()
        self._emit({"event": "start", "step": self.step, "total_steps": self.total_steps, "resumed": self.resumed,
                    "run_dir": str(self.run_dir) if self.run_dir else None})
        try:
            if not self.baseline_done:
                await self._baseline()
            while True:
                reason = self._stop_reason()
                if reason:
                    self.stopped = reason
                    break
                try:
                    await self._one_step()
                except BudgetExceeded as exc:  # an engine's own budget: stop cleanly at the last completed step
                    self.stopped = "budget_engine"
                    self._emit({"event": "budget", "message": str(exc)})
                    break
                if bar is not None:
                    r = self.rows[-1]
                    bar.update(1)
                    bar.set_postfix(train=r["train"], val=r["val"], kept=r["accepted"], tokens=self.totals["total_tokens"], refresh=False)
        finally:
            if bar is not None:
                bar.close()
        self._checkpoint()
        self._emit({"event": "end", "stopped": self.stopped, "step": self.step, "best_val": self.best_val, "usage": dict(self.totals)})
        return self.history

    async def evaluate(self, examples: Sequence[Any]) -> float | None:
        """Mean metric of the current parameters on `examples` (forward passes only, concurrently)."""
        if not examples:
            return None
        sem = asyncio.Semaphore(self.concurrency)

        async def one(ex: Any) -> float | None:
            async with sem:
                out = await _call(self.forward, ex)
            return self.metric(ex, self._as_variable(out, "forward"))

        scores = await asyncio.gather(*(one(ex) for ex in examples))
        score = _mean(scores)
        if score is None:
            raise ValueError("the validation examples have no score: pass metric=fn(example, output) -> float, "
                             "or use examples with an 'answer'")
        return score

    # -- one step ------------------------------------------------------------------------------
    async def _baseline(self) -> None:
        from .engines.usage import track_usage

        start = time.perf_counter()
        with track_usage() as usage:
            val = await self.evaluate(self.val) if self.val else None
        self.best_val = val
        self.baseline_done = True
        self._add_usage(usage.to_dict())
        self.rows.append({"step": 0, "epoch": 0, "train": None, "val": val, "best_val": val, "accepted": True,
                          **self._usage_cols(usage.to_dict()), "seconds": round(time.perf_counter() - start, 3), "failures": 0})
        self._checkpoint()  # saved first: a "step" event means the step is on disk
        self._emit({"event": "step", **self.rows[-1]})

    def _next_batch(self) -> list[int]:
        if self.cursor >= len(self.order):
            self.order = list(range(len(self.train)))
            self.rng.shuffle(self.order)
            self.epoch += 1
            self.cursor = 0
        idx = self.order[self.cursor : self.cursor + self.batch_size]
        self.cursor += len(idx)
        return idx

    async def _one_step(self) -> None:
        from .engines.usage import track_usage
        from .ops.sum import sum as tsum

        saved = self._state_for_rollback()
        start = time.perf_counter()
        try:
            with track_usage() as usage:
                batch = [self.train[i] for i in self._next_batch()]
                sem = asyncio.Semaphore(self.concurrency)

                async def one(ex: Any) -> tuple[Variable, Variable]:
                    async with sem:
                        out = self._as_variable(await _call(self.forward, ex), "forward")
                        return out, self._as_variable(await _call(self.loss, ex, out), "loss")

                pairs = await asyncio.gather(*(one(ex) for ex in batch))
                train_score = _mean([self.metric(ex, out) for ex, (out, _) in zip(batch, pairs)])
                self.optimizer.zero_grad()
                losses = [loss for _, loss in pairs]
                total = losses[0] if len(losses) == 1 else tsum(losses)
                await total.abackward(self._backward_engine(losses))
                failures_before = len(self.optimizer.failures)
                before = self._values()
                await self.optimizer.astep()
                failures = len(self.optimizer.failures) - failures_before
                changed = [n for n, v in self._values().items() if v != before[n]]
                val = await self.evaluate(self.val) if self.val else None
        except BaseException:
            self._rollback(saved)  # the step never happened; the checkpoint still holds the last completed one
            raise
        accepted = True
        if val is not None and self.best_val is not None and val < self.best_val and self.keep_best:
            accepted = False
            for p in self.parameters:
                p.set_value(before[p.name])
        if val is not None and (self.best_val is None or val > self.best_val):
            self.best_val = val
            self.bad_steps = 0
        elif val is not None:
            self.bad_steps += 1
        self.optimizer.zero_grad()
        self.step += 1
        self._add_usage(usage.to_dict())
        self.rows.append({
            "step": self.step, "epoch": self.epoch, "train": train_score, "val": val, "best_val": self.best_val,
            "accepted": accepted, **self._usage_cols(usage.to_dict()), "seconds": round(time.perf_counter() - start, 3),
            "failures": failures, "changed": changed,
        })
        self._checkpoint()  # saved first: a "step" event means the step is on disk
        self._emit({"event": "step", **self.rows[-1]})

    def _backward_engine(self, losses: list[Variable]) -> Any:
        """Explicit backward_engine, else the optimizer's engine, else the engine that computed the losses
        (a sum of losses has no engine of its own), else the scoped default."""
        if self.backward_engine is not None:
            return self.backward_engine
        if self.optimizer.engine is not None:
            return self.optimizer.engine
        for loss in losses:
            engine = loss.ctx.get("engine") if loss.ctx is not None else None
            if engine is not None:
                return engine
        return None

    def _stop_reason(self) -> str | None:
        if self.step >= self.total_steps:
            return "completed"
        if self.budget_tokens is not None and self.totals["total_tokens"] >= self.budget_tokens:
            return "budget_tokens"
        if self.budget_calls is not None and self.totals["calls"] >= self.budget_calls:
            return "budget_calls"
        if self.patience and self.bad_steps >= self.patience:
            return "early_stop"
        return None

    # -- state ---------------------------------------------------------------------------------
    def _values(self) -> dict[str, Any]:
        return {p.name: p.value for p in self.optimizer.parameters}

    @staticmethod
    def _as_variable(value: Any, what: str) -> Variable:
        if not isinstance(value, Variable):
            raise TypeError(f"the {what} function must return a textopt Variable, got {type(value).__name__}")
        return value

    @staticmethod
    def _usage_cols(u: dict[str, int]) -> dict[str, int]:
        return {"tokens": u["total_tokens"], "calls": u["calls"], "cached_calls": u["cached_calls"]}

    def _add_usage(self, u: dict[str, int]) -> None:
        for k in self.totals:
            self.totals[k] += int(u.get(k, 0))

    def _state_for_rollback(self) -> dict[str, Any]:
        return {"values": self._values(), "epoch": self.epoch, "cursor": self.cursor, "order": list(self.order),
                "rng": self.rng.getstate(), "optimizer": json.loads(json.dumps(self.optimizer.state_dict()))}

    def _rollback(self, saved: dict[str, Any]) -> None:
        for p in self.parameters:
            p.set_value(saved["values"][p.name])
        self.epoch, self.cursor, self.order = saved["epoch"], saved["cursor"], saved["order"]
        self.rng.setstate(saved["rng"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.optimizer.zero_grad()

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, as plain JSON."""
        version, internal, gauss = self.rng.getstate()
        return {
            "format": "textopt.checkpoint", "version": 1,
            "step": self.step, "total_steps": self.total_steps, "epoch": self.epoch, "cursor": self.cursor,
            "order": self.order, "rng": [version, list(internal), gauss],
            "best_val": self.best_val, "bad_steps": self.bad_steps, "baseline_done": self.baseline_done,
            "stopped": self.stopped, "usage": dict(self.totals),
            "parameters": self._values(), "optimizer": self.optimizer.state_dict(),
            "history": self.history.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != "textopt.checkpoint":
            raise ValueError("not a textopt checkpoint (expected format 'textopt.checkpoint')")
        names = {p.name for p in self.parameters}
        saved = set(state["parameters"])
        if names != saved:
            raise ValueError(f"the checkpoint's parameters {sorted(saved)} don't match the optimizer's {sorted(names)}; "
                             "create the Variables with the same name=... as in the original run")
        for p in self.parameters:
            p.set_value(state["parameters"][p.name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.epoch, self.cursor = int(state["step"]), int(state["epoch"]), int(state["cursor"])
        self.order = list(state["order"])
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.best_val, self.bad_steps = state["best_val"], int(state["bad_steps"])
        self.baseline_done = bool(state["baseline_done"])
        self.stopped = state.get("stopped")
        self.totals = {k: int(state["usage"].get(k, 0)) for k in self.totals}
        hist = state["history"]
        self.rows = list(hist["rows"])
        self.initial = dict(hist["initial"])
        self.resumed = True

    def _spec(self) -> dict[str, Any]:
        if self.spec is not None:
            return self.spec
        return {
            "kind": "python",
            "options": {
                "batch_size": self.batch_size, "concurrency": self.concurrency, "steps": self.total_steps,
                "epochs": self.epochs, "budget_tokens": self.budget_tokens, "budget_calls": self.budget_calls,
                "keep_best": self.keep_best, "patience": self.patience, "seed": self.seed,
            },
            "parameters": [p.name for p in self.parameters],
            "train_fingerprint": fingerprint(self.train),
            "val_fingerprint": fingerprint(self.val),
        }

    def _prepare_run_dir(self) -> None:
        assert self.run_dir is not None
        if (self.run_dir / CHECKPOINT).exists() and not self.resumed:
            raise FileExistsError(f"{self.run_dir} already holds a run; continue it with textopt.resume({str(self.run_dir)!r}, ...) "
                                  "(or `textopt resume` for runs made by the CLI), or pick a new run_dir")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not (self.run_dir / SPEC).exists():
            atomic_write_json(self.run_dir / SPEC, self._spec())

    def _checkpoint(self) -> None:
        if self.run_dir is None:
            return
        state = self.state_dict()
        save(state["parameters"], self.run_dir / PARAMETERS)  # human copy of the current values
        atomic_write_json(self.run_dir / HISTORY, state["history"])  # human copy of the history
        atomic_write_json(self.run_dir / CHECKPOINT, state)  # the authoritative state, written last

    def _bar(self) -> Any:
        show = self.progress if self.progress is not None else sys.stderr.isatty()
        if not show:
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=self.step, desc="textopt", unit="step", file=sys.stderr)

    def _emit(self, event: dict[str, Any]) -> None:
        if self.log is not None:
            self.log(event)


def resume(
    run_dir: str | Path,
    *,
    forward: Forward | None = None,
    loss: Loss | None = None,
    optimizer: "Optimizer | None" = None,
    train: Sequence[Any] | None = None,
    val: Sequence[Any] | None = None,
    metric: Metric | None = None,
    **overrides: Any,
) -> Trainer:
    """A Trainer that continues the run in `run_dir` from its last completed step; call `.fit()` on it.

    Runs made by `textopt optimize` rebuild themselves from spec.json. Runs made in Python need the code
    again: forward, loss, an optimizer over Variables with the same names, and the same train/val data
    (checked by fingerprint). overrides (e.g. steps=10, budget_tokens=...) replace saved options.
    """
    run_dir = Path(run_dir)
    if not (run_dir / SPEC).exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {SPEC}); start a run with Trainer(..., run_dir=...) "
                                "or `textopt optimize --out DIR`")
    spec = read_json(run_dir / SPEC)
    if spec.get("kind") == "command":
        from .commands.optimize import build_trainer

        trainer = build_trainer(spec, run_dir=run_dir, **overrides)
    elif spec.get("kind") == "python":
        missing = [n for n, v in (("forward", forward), ("loss", loss), ("optimizer", optimizer), ("train", train)) if v is None]
        if missing:
            raise TypeError(f"{run_dir} was made from Python, so its code can't be rebuilt from disk: pass "
                            f"{', '.join(missing)} to textopt.resume (the same ones as the original run)")
        for name, data in (("train", train), ("val", val)):
            if fingerprint(list(data or [])) != spec.get(f"{name}_fingerprint"):
                raise ValueError(f"the {name} data differs from the original run's; pass the same examples in the same order")
        options = {**spec["options"], **overrides}
        trainer = Trainer(forward, loss, optimizer, train=train, val=val, metric=metric, run_dir=run_dir,  # type: ignore[arg-type]
                          **options)
    else:
        raise ValueError(f"{run_dir / SPEC} has unknown kind {spec.get('kind')!r}")
    if (run_dir / CHECKPOINT).exists():
        trainer.load_state_dict(read_json(run_dir / CHECKPOINT))
        if "steps" in overrides:
            trainer.total_steps = overrides["steps"]
    trainer.resumed = True
    return trainer
