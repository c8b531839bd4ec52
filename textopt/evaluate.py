"""Evaluation as a result: one row per example (output, score, feedback, error), a mean with a seeded
bootstrap interval, and a JSONL file you can read back.

`evaluate(forward, examples, metric)` runs `forward(example)` for every example, at most `concurrency`
at a time (sync forwards and metrics run on worker threads, so a sync pipeline is concurrent too), and
scores each output with `metric(example, output)`. A metric may return a number, a bool, None (not
scored) or `Score(value, feedback="why")`: that sentence is what an optimizer's reflection reads
(Search hands it to the proposer). A forward that raises becomes a row with `.error` and score 0, so
one bad example never loses the other results; a metric that raises is a bug in the scoring code and
is raised, naming the example.
"""
from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import json
import math
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator, Sequence

from ._sync import sync_twin
from .checkpoint import atomic_write_text
from .datasets import exact_match
from .errors import BudgetExceeded, EngineUnavailable
from .scores import Score, as_number
from .trace import TraceError
from . import usercall
from .usercall import is_async, is_nonblocking
from .variable import Variable

#: Examples in flight when `concurrency` is None.
DEFAULT_CONCURRENCY = 8
#: Bootstrap resamples for `ci95` (fewer for very large reports: at most ~1M draws in total).
BOOTSTRAP = 1000

Forward = Callable[[Any], "Variable | str | Awaitable[Variable | str]"]
Metric = Callable[[Any, Variable], Any]
_scoring_clocks: contextvars.ContextVar[tuple[list[float], ...]] = contextvars.ContextVar("textopt_scoring", default=())


@contextlib.contextmanager
def time_scoring() -> Iterator[list[float]]:
    """Sum the seconds spent inside metric functions in this scope (tasks included) into a one-item list:
    the "scoring" share of a run's time (a sandboxed code test can cost more than the model call)."""
    clock = [0.0]
    token = _scoring_clocks.set(_scoring_clocks.get() + (clock,))
    try:
        yield clock
    finally:
        _scoring_clocks.reset(token)


@dataclass
class EvalRow:
    """One example's result. `score` is 0.0 for a forward that raised (then `error` says what happened)
    and None when the metric did not score the example."""

    example: Any
    output: str
    score: float | None
    feedback: str = ""
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"example": self.example, "output": self.output, "score": self.score, "feedback": self.feedback,
                "error": self.error}


@dataclass
class EvalReport:
    """Rows in the order of the examples; `mean` over scored rows (errors count as 0), `ci95` a seeded
    percentile-bootstrap interval (low, high) of that mean (None without scores)."""

    rows: list[EvalRow]
    seed: int = 0
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def scores(self) -> list[float]:
        return [r.score for r in self.rows if r.score is not None]

    @property
    def n(self) -> int:
        return len(self.rows)

    @property
    def errors(self) -> int:
        """Rows whose forward raised."""
        return sum(1 for r in self.rows if r.error is not None)

    @property
    def mean(self) -> float | None:
        scores = self.scores
        return math.fsum(scores) / len(scores) if scores else None

    @property
    def ci95(self) -> tuple[float, float] | None:
        key = (self.seed, tuple(self.scores))
        if self._cache.get("ci_key") != key:
            self._cache["ci_key"], self._cache["ci"] = key, bootstrap_ci(self.scores, seed=self.seed)
        return self._cache["ci"]

    def worst(self, k: int = 5) -> list[EvalRow]:
        """The k lowest-scored rows (errors score 0; unscored rows last; ties keep example order)."""
        order = sorted(self.rows, key=lambda r: (r.score is None, r.score if r.score is not None else 0.0))
        return order[: max(k, 0)]

    def save(self, path: str | Path) -> Path:
        """Write one JSON object per row (example, output, score, feedback, error) atomically."""
        lines = [json.dumps({"index": i, **row.to_dict()}, ensure_ascii=False, default=_jsonable) for i, row in enumerate(self.rows)]
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, *, seed: int = 0) -> "EvalReport":
        """Read a file written by `save` (examples come back as plain JSON: a dataclass becomes a dict)."""
        rows = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    d = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno} is not JSON ({exc.msg}); is it an evaluation report?") from exc
                rows.append(EvalRow(d.get("example"), d.get("output", ""), d.get("score"), d.get("feedback", ""), d.get("error")))
        return cls(rows, seed=seed)

    def summary(self) -> str:
        if self.mean is None:
            return f"{self.n} examples, none scored ({self.errors} errors)"
        low, high = self.ci95 or (self.mean, self.mean)
        unscored = self.n - len(self.scores)
        extra = f", {unscored} unscored" if unscored else ""
        return f"mean {self.mean:.3f} (95% CI {low:.3f}-{high:.3f}) on {self.n} examples ({self.errors} errors{extra})"

    def __str__(self) -> str:
        return self.summary()


def bootstrap_ci(scores: Sequence[float], *, seed: int = 0, level: float = 0.95, resamples: int | None = None) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean, from a seeded RNG (same scores, same interval).
    The interval always contains the sample mean."""
    n = len(scores)
    if n == 0:
        return None
    mean = math.fsum(scores) / n
    if n == 1 or min(scores) == max(scores):
        return (mean, mean)
    b = resamples or max(200, min(BOOTSTRAP, 1_000_000 // n))
    rng = random.Random(seed)
    values = list(scores)
    means = sorted(math.fsum(rng.choices(values, k=n)) / n for _ in range(b))
    alpha = (1.0 - level) / 2
    low = means[max(0, math.floor(alpha * b))]
    high = means[min(b - 1, math.ceil((1 - alpha) * b) - 1)]
    return (min(low, mean), max(high, mean))


@usercall.nonblocking
def default_metric(example: Any, output: Variable) -> float | None:
    """Exact match against `example.answer` (or example["answer"]); None when the example has no answer."""
    answer = example.get("answer") if isinstance(example, dict) else getattr(example, "answer", None)
    if answer is None:
        return None
    return float(exact_match(output.text, str(answer)))


def as_score(value: Any) -> tuple[float | None, str]:
    """A metric's return value as (score, feedback). Numpy and pandas scalars count as numbers."""
    if isinstance(value, Score):
        return value.value, value.feedback
    if value is None:
        return None, ""
    number = as_number(value)
    if number is not None and math.isfinite(number):
        return number, ""
    raise TypeError(f"a metric must return a number, a bool, None or to.Score(value, feedback=...), got {value!r}")


@dataclass
class Scored:
    """A row plus what produced it: the output Variable (or a failed trace's error node) for feedback."""

    row: EvalRow
    node: Variable | None = None


class _Caller:
    """Calls user functions that may be sync or async (usercall.call); sync ones not marked `nonblocking`
    go to a pool of `workers` threads, made on first need."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: Any = None

    async def __call__(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._pool is None and not is_async(fn) and not is_nonblocking(fn):
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="textopt-eval")
        return await usercall.call(fn, *args, pool=self._pool)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None


async def score_examples(
    forward: Forward, examples: Sequence[Any], metric: Metric | None = None, *, concurrency: int | None = None,
) -> list[Scored]:
    """The rows of an evaluation, each with its output node (what Search feeds back to the proposer)."""
    limit = DEFAULT_CONCURRENCY if concurrency is None else concurrency
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"concurrency must be an integer >= 1 or None, got {concurrency!r}")
    metric = metric or default_metric
    call = _Caller(limit)

    async def one(i: int, example: Any) -> Scored:
        try:
            out = await call(forward, example)
        except (BudgetExceeded, EngineUnavailable):
            raise  # a stop signal, not a result
        except Exception as exc:
            node = exc.variable if isinstance(exc, TraceError) else None
            message = f"{type(exc).__name__}: {exc}"
            return Scored(EvalRow(example, "", 0.0, f"the program raised {message}", message), node)
        if isinstance(out, str):
            out = Variable(out, role="output of the forward function")
        if not isinstance(out, Variable):
            raise TypeError(f"forward must return a textopt Variable (or str), got {type(out).__name__}")
        started = time.perf_counter()
        try:
            raw = await call(metric, example, out)
            value, feedback = as_score(raw)
        except Exception as exc:
            exc.add_note(f"textopt: the metric failed on example {i} ({_short(example)})")
            raise
        finally:
            for clock in _scoring_clocks.get():
                clock[0] += time.perf_counter() - started
        return Scored(EvalRow(example, out.text, value, feedback), out)

    # `limit` workers take the examples in order: not one task per example waiting on a semaphore, which
    # costs a task, a future and a wake-up per example (and memory in proportion to the data set)
    results: list[Scored | None] = [None] * len(examples)
    todo = iter(enumerate(examples))

    async def worker() -> None:
        for i, example in todo:
            results[i] = await one(i, example)

    try:
        # the first error (a stop signal, a failing metric) cancels the other workers' calls
        async with asyncio.TaskGroup() as group:
            for _ in range(min(limit, len(examples))):
                group.create_task(worker())
    except BaseExceptionGroup as group_error:
        raise _first(group_error) from None
    finally:
        call.close()
    return results  # type: ignore[return-value]


def _first(group: BaseExceptionGroup) -> BaseException:
    """The first leaf of a TaskGroup's error: callers expect the error itself (BudgetExceeded, the metric's
    ValueError), as gather gave it, not a group."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def aevaluate(
    forward: Forward, examples: Sequence[Any], metric: Metric | None = None, *, concurrency: int | None = None, seed: int = 0,
) -> EvalReport:
    """Run forward on every example (at most `concurrency` in flight, default 8) and score it.
    metric(example, output) -> number | bool | None | Score; default: exact match on `example.answer`."""
    return EvalReport([s.row for s in await score_examples(forward, list(examples), metric, concurrency=concurrency)], seed=seed)


evaluate = sync_twin(aevaluate, "Sync `aevaluate` (works in scripts and inside a notebook's running event loop).")


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Variable):
        return obj.text
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return repr(obj)


def _short(example: Any, limit: int = 60) -> str:
    text = repr(example)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def paired_gain(before: Any, after: Any, *, seed: int = 0, resamples: int = 2000) -> tuple[float, tuple[float, float]] | None:
    """Mean of after - before over the same test examples, and its 95% percentile-bootstrap interval
    (the examples resampled in pairs: tighter than comparing the two reports' own intervals)."""
    if not before or not after or len(before.rows) != len(after.rows):
        return None
    diffs = [(a.score or 0.0) - (b.score or 0.0) for b, a in zip(before.rows, after.rows)
             if a.score is not None and b.score is not None]
    if not diffs:
        return None
    mean = sum(diffs) / len(diffs)
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    low, high = means[int(0.025 * resamples)], means[min(resamples - 1, int(0.975 * resamples))]
    return round(mean, 4), (round(min(low, mean), 4), round(max(high, mean), 4))

