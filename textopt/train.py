"""Training runs people can trust: minibatch steps, validation with revert-if-worse, budgets, and a
checkpoint after every step from which a killed run resumes to the same result.

A step: the forward passes of a minibatch run concurrently (bounded by `concurrency`), their losses are
joined with `to.aggregate` into one backward, and the optimizer makes one update. Then validation decides,
with keep_best, whether the new values stay. The run directory, usage and cost, the log, checkpoints,
budgets and callbacks belong to the run layer (`textopt.run.Run`, `trainer.run`); the Trainer owns
only the training state (parameters, optimizer state, history, RNG and data order).

Resuming. A Python-made run can't pickle its functions, so `run_dir/spec.json` records the options and a
fingerprint of the data, and `resume(run_dir, forward=..., loss=..., optimizer=..., train=..., val=...)`
takes the code again. A run made from a recipe (`textopt optimize`, see textopt.recipes) records the
recipe's name and arguments (engine *spec strings*, never keys), so `resume(run_dir)` rebuilds it alone.
Every LLM call of the resumed steps is re-asked with the same request, so the disk cache serves what
was already paid for and the run ends exactly where an uninterrupted run would.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Sequence

from ._sync import sync_twin
from .datasets import exact_match
from .errors import BudgetExceeded, EngineError
from .evaluate import aevaluate, default_metric
from .usercall import call as _call
from .ops.sum import aggregate
from .optim.base import Optimizer
from .run import CHECKPOINT, SPEC, Budgets, Callback, History, Progress, Run, RunError, read_spec, usage_columns
from .variable import Variable

if TYPE_CHECKING:
    from .engines.base import Engine
    from .evaluate import EvalReport

__all__ = ["CHECKPOINT", "SPEC", "History", "TrainState", "Trainer", "default_metric", "fingerprint", "resume"]

PARAMETERS = "parameters.json"
HISTORY = "history.json"

Forward = Callable[[Any], "Variable | Awaitable[Variable]"]
Loss = Callable[[Any, Variable], "Variable | Awaitable[Variable]"]
Metric = Callable[[Any, Variable], "float | None"]


def fingerprint(examples: Sequence[Any]) -> str:
    """A stable hash of a data set, so a resumed run can tell it got the same data."""
    blob = json.dumps([repr(e) for e in examples], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


class _Stop(BaseException):
    """Carries an engine failure out of `evaluate` (which turns ordinary errors into rows)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


def _as_variable(value: Any, what: str) -> Variable:
    if not isinstance(value, Variable):
        raise TypeError(f"the {what} function must return a textopt Variable, got {type(value).__name__}")
    return value


def _backward_engine(explicit: Any, optimizer: "Optimizer", losses: list[Variable]) -> Any:
    """Explicit backward_engine, else the optimizer's engine, else the engine that computed the losses
    (a sum of losses has no engine of its own), else the scoped default."""
    if explicit is not None:
        return explicit
    if optimizer.engine is not None:
        return optimizer.engine
    for loss in losses:
        ctx = loss.ctx
        engine = getattr(ctx, "engine", None) if not isinstance(ctx, dict) else ctx.get("engine")
        if engine is not None:
            return engine
    return None


def _check_options(train: list[Any], ints: dict[str, Any], optional: dict[str, Any]) -> None:
    if not train:
        raise ValueError("train is empty: pass a list of examples to learn from (e.g. to.datasets.load('object_counting'))")
    for name, value in ints.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    for name, value in optional.items():
        if value is not None and (not isinstance(value, int) or value < 0):
            raise ValueError(f"{name} must be a non-negative integer or None, got {value!r}")


@dataclass
class TrainState:
    """The mutable state of a training run (all of it goes into the checkpoint): where the run is, its data
    order and RNG, the validation bookkeeping, and the history rows."""

    seed: int = 0
    global_step: int = 0
    epoch: int = 0
    cursor: int = 0
    order: list[int] = field(default_factory=list)
    best_val: float | None = None
    bad_steps: int = 0
    baseline_done: bool = False
    stopped: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    initial: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def next_batch(self, n_train: int, batch_size: int) -> list[int]:
        """Indices of the next minibatch; a new shuffled epoch when the last one is used up."""
        if self.cursor >= len(self.order):
            self.order = list(range(n_train))
            self.rng.shuffle(self.order)
            self.epoch += 1
            self.cursor = 0
        idx = self.order[self.cursor : self.cursor + batch_size]
        self.cursor += len(idx)
        return idx

    def record_val(self, val: float | None) -> None:
        if val is not None and (self.best_val is None or val > self.best_val):
            self.best_val, self.bad_steps = val, 0
        elif val is not None:
            self.bad_steps += 1

    def snapshot(self) -> tuple[Any, ...]:
        return self.epoch, self.cursor, list(self.order), self.rng.getstate()

    def restore(self, snap: tuple[Any, ...]) -> None:
        self.epoch, self.cursor, self.order, rng = snap
        self.rng.setstate(rng)

    def to_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"step": self.global_step, "epoch": self.epoch, "cursor": self.cursor, "order": self.order,
                "rng": [version, list(internal), gauss], "best_val": self.best_val, "bad_steps": self.bad_steps,
                "baseline_done": self.baseline_done, "stopped": self.stopped}

    def load(self, state: dict[str, Any], history: dict[str, Any]) -> None:
        """Read everything first (a malformed checkpoint raises before anything changes), then set."""
        version, internal, gauss = state["rng"]
        rng = (int(version), tuple(int(x) for x in internal), gauss)
        values = (int(state["step"]), int(state["epoch"]), int(state["cursor"]), [int(i) for i in state["order"]],
                  state["best_val"], int(state["bad_steps"]), bool(state["baseline_done"]), state.get("stopped"),
                  list(history["rows"]), dict(history["initial"]))
        (self.global_step, self.epoch, self.cursor, self.order, self.best_val, self.bad_steps, self.baseline_done,
         self.stopped, self.rows, self.initial) = values
        self.rng.setstate(rng)


class Trainer:
    """Minibatch training with validation, revert-if-worse, budgets and per-step checkpoints.

    forward(example) -> Variable and loss(example, output) -> Variable may be sync or async.
    metric(example, output) -> float (default: exact match on `example.answer`) scores train batches and
    the validation set; with keep_best an update is reverted (and recorded) when validation gets worse.
    patience: stop after that many steps without a validation improvement. steps: total updates
    (default: `epochs` passes over `train`). budget_tokens / budget_calls / budget_usd: stop cleanly,
    checkpointed, once that much was spent (checked between steps; a step in flight finishes).
    run_dir: where checkpoints go (resume with `textopt.resume`). progress: the progress display (default:
    only on a terminal). callbacks: `textopt.run.Callback`s or functions(event) (every step, eval, end).
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
        budget_usd: float | None = None,
        keep_best: bool = True,
        patience: int | None = None,
        metric: Metric | None = None,
        backward_engine: "Engine | str | None" = None,
        run_dir: str | Path | None = None,
        seed: int = 0,
        progress: bool | None = None,
        callbacks: Sequence[Callback | Callable[[dict[str, Any]], Any]] = (),
        spec: dict[str, Any] | None = None,
    ) -> None:
        if not callable(forward) or not callable(loss):
            raise TypeError("Trainer needs forward(example) -> Variable and loss(example, output) -> Variable functions")
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"optimizer must be a textopt Optimizer (e.g. to.TGD([...])), got {type(optimizer).__name__}")
        train = list(train)
        _check_options(train, {"batch_size": batch_size, "concurrency": concurrency, "epochs": epochs},
                       {"steps": steps, "budget_tokens": budget_tokens, "budget_calls": budget_calls, "patience": patience})
        self.forward, self.loss, self.optimizer = forward, loss, optimizer
        self.train, self.val = train, list(val) if val else []
        self.batch_size, self.concurrency, self.epochs = batch_size, concurrency, epochs
        self.total_steps = steps if steps is not None else epochs * math.ceil(len(train) / batch_size)
        self.keep_best, self.patience = keep_best, patience
        self.metric = metric or default_metric
        self.backward_engine = backward_engine
        self.seed = seed
        budgets = Budgets(tokens=budget_tokens, calls=budget_calls, usd=budget_usd)
        cbs = list(callbacks)
        if progress if progress is not None else sys.stderr.isatty():
            cbs.append(Progress(bar=True))
        self.options = {"batch_size": batch_size, "concurrency": concurrency, "steps": self.total_steps, "epochs": epochs,
                        "budget_tokens": budget_tokens, "budget_calls": budget_calls, "budget_usd": budget_usd,
                        "keep_best": keep_best, "patience": patience, "seed": seed}
        self.run = Run(run_dir, kind="trainer", spec=spec if spec is not None else self._python_spec(), budgets=budgets,
                       callbacks=cbs)
        self.state = TrainState(seed=seed, initial=self._values())  # everything a checkpoint holds besides values
        self.resumed = False

    # -- public --------------------------------------------------------------------------------
    @property
    def parameters(self) -> list[Variable]:
        return list(self.optimizer.parameters)

    @property
    def run_dir(self) -> Path | None:
        return self.run.dir

    @property
    def global_step(self) -> int:
        """Completed optimizer steps of this run (resumed ones included)."""
        return self.state.global_step

    @property
    def totals(self) -> dict[str, Any]:
        """Usage of the whole run so far (tokens, calls, cached calls, cost_usd), resumed parts included."""
        return self.run.totals

    @property
    def history(self) -> History:
        st = self.state
        return History(st.rows, dict(st.initial), self._values(), st.stopped, str(self.run.dir) if self.run.dir else None)


    async def afit(self) -> History:
        st = self.state
        with self.run:
            st.stopped = None
            self.run.start(step=st.global_step, total_steps=self.total_steps, resumed=self.resumed,
                           run_dir=str(self.run.dir) if self.run.dir else None)
            if not st.baseline_done:
                await self._baseline()
            while not st.stopped:
                st.stopped = self.run.stop_reason(step=st.global_step, total_steps=self.total_steps) or (
                    "early_stop" if self.patience and st.bad_steps >= self.patience else None)
                if st.stopped:
                    break
                try:
                    await self._one_step()
                except BudgetExceeded as exc:  # an engine's own budget: stop cleanly at the last completed step
                    st.stopped = "budget_engine"
                    self.run.log({"event": "budget", "message": str(exc)})
            self._checkpoint()
            self.run.end(stopped=st.stopped, step=st.global_step, best_val=st.best_val, usage=dict(self.run.totals))
        return self.history

    fit = sync_twin(afit, "Run to the end (steps done, early stop, or budget) and return the History (sync `afit`).")

    async def evaluate(self, examples: Sequence[Any], name: str | None = None) -> "EvalReport":
        """Score the current parameters on `examples` (forward passes only, `concurrency` at a time) with
        `textopt.evaluate`: per-example rows, mean and interval. With `name`, the report is kept in the run
        directory (evals/<name>.jsonl). A provider failure stops the run instead of scoring 0."""
        async def forward(example: Any) -> Any:
            try:
                return await _call(self.forward, example)
            except EngineError as exc:
                raise _Stop(exc) from None  # evaluate keeps errors as rows; an outage must end the step instead

        try:
            report = await aevaluate(forward, list(examples), self.metric, concurrency=self.concurrency, seed=self.seed)
        except _Stop as stop:
            raise stop.error from None
        self.run.metric_calls += len(report.rows)
        if examples and report.mean is None:
            raise ValueError("the validation examples have no score: pass metric=fn(example, output) -> float, "
                             "or use examples with an 'answer'")
        if name is not None:
            self.run.save_eval(name, report)
        return report

    # -- one step ------------------------------------------------------------------------------
    async def _score(self, example: Any, output: Variable) -> float | None:
        self.run.metric_calls += 1
        value = await _call(self.metric, example, output)  # a sync metric may make sync LLM calls: not on the loop
        value = value[0] if isinstance(value, tuple) else getattr(value, "value", value)  # to.Score / (score, why)
        return None if value is None else float(value)

    async def _baseline(self) -> None:
        start = time.perf_counter()
        with self.run.track() as usage:
            val = (await self.evaluate(self.val, "val_step0")).mean if self.val else None
        self.state.best_val, self.state.baseline_done = val, True
        self._record({"step": 0, "epoch": 0, "train": None, "val": val, "best_val": val, "accepted": True,
                      **usage_columns(usage), "seconds": round(time.perf_counter() - start, 3), "failures": 0})

    async def _one_step(self) -> None:
        st = self.state
        saved = (self._values(), st.snapshot(), json.loads(json.dumps(self.optimizer.state_dict())))
        start = time.perf_counter()
        try:
            with self.run.track() as usage:
                batch = [self.train[i] for i in st.next_batch(len(self.train), self.batch_size)]
                sem = asyncio.Semaphore(self.concurrency)

                async def one(ex: Any) -> tuple[Variable, Variable]:
                    async with sem:
                        out = _as_variable(await _call(self.forward, ex), "forward")
                        return out, _as_variable(await _call(self.loss, ex, out), "loss")

                pairs = await asyncio.gather(*(one(ex) for ex in batch))
                train_score = _mean(await asyncio.gather(*(self._score(ex, out) for ex, (out, _) in zip(batch, pairs))))
                self.optimizer.zero_grad()
                losses = [loss for _, loss in pairs]
                total = losses[0] if len(losses) == 1 else aggregate(losses)
                await self.optimizer.abackward(total, engine=_backward_engine(self.backward_engine, self.optimizer, losses))  # the optimizer's feedback hook
                failures_before = len(self.optimizer.failures)
                before = self._values()
                report = await self.optimizer.astep()
                self.run.check_failures(self.optimizer.failures[failures_before:])  # 401/403: stop, don't spend on
                failures = len(self.optimizer.failures) - failures_before
                changed = [n for n, v in self._values().items() if v != before[n]]
                val = (await self.evaluate(self.val, f"val_step{st.global_step + 1}")).mean if self.val else None
        except BaseException:
            self._rollback(*saved)  # the step never happened; the checkpoint still holds the last completed one
            raise
        accepted = not (val is not None and st.best_val is not None and val < st.best_val and self.keep_best)
        if not accepted:
            for p in self.parameters:
                p.set_value(before[p.name])
        st.record_val(val)
        self.optimizer.zero_grad()
        st.global_step += 1
        self._record({"step": st.global_step, "epoch": st.epoch, "train": train_score, "val": val, "best_val": st.best_val,
                      "accepted": accepted, **usage_columns(usage), "seconds": round(time.perf_counter() - start, 3),
                      "failures": failures, "changed": changed, "reasoning": dict(getattr(report, "reasoning", {}) or {})})

    def _record(self, row: dict[str, Any]) -> None:
        self.state.rows.append(row)
        self._checkpoint()  # saved first: a "step" event means the step is on disk
        self.run.step(row)

    # -- state ---------------------------------------------------------------------------------
    def _values(self) -> dict[str, Any]:
        return {p.name: p.value for p in self.optimizer.parameters}

    def _rollback(self, values: dict[str, Any], snap: tuple[Any, ...], optimizer: dict[str, Any]) -> None:
        for p in self.parameters:
            p.set_value(values[p.name])
        self.state.restore(snap)
        self.optimizer.load_state_dict(optimizer)
        self.optimizer.zero_grad()

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs, as plain JSON (the run layer adds usage and the format tag)."""
        return {**self.state.to_dict(), "total_steps": self.total_steps, "parameters": self._values(),
                "optimizer": self.optimizer.state_dict(), "history": self.history.to_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names, saved = {p.name for p in self.parameters}, set(state["parameters"])
        if names != saved:
            raise RunError(f"the checkpoint's parameters {sorted(saved)} don't match the optimizer's {sorted(names)}; "
                           "create the Variables with the same name=... as in the original run")
        self.state.load(state, state["history"])
        self.optimizer.load_state_dict(state["optimizer"])
        for p in self.parameters:
            p.set_value(state["parameters"][p.name])
        self.resumed = self.run.resuming = True

    def _python_spec(self) -> dict[str, Any]:
        return {"recipe": None, "options": self.options, "parameters": [p.name for p in self.parameters],
                "train_fingerprint": fingerprint(self.train), "val_fingerprint": fingerprint(self.val)}

    def _checkpoint(self) -> None:
        if self.run.dir is None:
            return
        state = self.state_dict()
        self.run.write_json(PARAMETERS, {"format": "textopt.parameters", "version": 1, "parameters": state["parameters"]})
        self.run.write_json(HISTORY, state["history"])  # human copy of the history
        self.run.save_checkpoint(state)  # the authoritative state, written last


def trainer_from_run_dir(
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
    """The Trainer that continues a run made in Python (`Trainer(..., run_dir=...)`) from its last completed
    step; call `.fit()` on it. `textopt.resume` (textopt.recipes) calls this for such runs and rebuilds recipe
    runs itself. It needs the code again: forward, loss, an optimizer over Variables with the same names, and
    the same train/val data (checked by fingerprint). overrides (e.g. steps=10, budget_tokens=...,
    callbacks=[...]) replace saved options.
    """
    spec = read_spec(run_dir)
    if spec.get("recipe"):
        raise RunError(f"{run_dir} was made by the {spec['recipe']!r} recipe; continue it with textopt.resume(run_dir) "
                       f"or `textopt resume {run_dir}`")
    if spec.get("kind") != "trainer":
        raise RunError(f"{Path(run_dir) / SPEC} holds a {spec.get('kind')!r} run, not a Trainer run")
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
    trainer.run.resuming = trainer.resumed = True
    trainer.run.load_checkpoint(trainer.load_state_dict)
    if "steps" in overrides:
        trainer.total_steps = overrides["steps"]
    return trainer
