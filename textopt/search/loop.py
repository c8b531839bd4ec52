"""Candidate search (GEPA-style, written from the published description): a pool of full sets of parameter
values, each scored on every validation example, grown by reflective mutation and occasional merges.

One iteration: sample a parent from the Pareto front (in proportion to the validation examples it leads),
run it on a training minibatch, hand each output with its feedback (the metric's `Score.feedback`, else
the `loss`'s evaluation, else a sentence built from the score) to the proposer through `abackward`, let
it rewrite ONE parameter (round-robin), and run the same minibatch again with the child. Only a child
that beats its parent there is scored on the whole validation set and joins the pool. After a child
joins, the next iteration may merge two front candidates that changed different parameters since a
common ancestor (each changed parameter comes from the candidate that changed it).

Every metric call (minibatch and validation) counts toward `budget`. The search stops at a budget
(metric calls, tokens, dollars), a number of `iterations`, a `target` mean validation score, or after `patience` mutations in a
row that added nothing. At the end the parameters hold the best candidate (highest mean validation
score). With run_dir, a checkpoint after every iteration lets `Search(..., resume=True)` continue a
killed search to the same result (the RNG, minibatch order and pool are all in it).
"""
from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from .._sync import sync_twin
from ..errors import BudgetExceeded, EngineUnavailable
from ..evaluate import EvalReport, Metric, Scored, score_examples
from ..module import Module, parameter_list
from ..run import Budgets, Callback, Progress, Run, read_checkpoint, usage_columns
from ..variable import Variable
from .pool import Candidate, SearchState, best_id, lineage, merge_options, merged_values, pareto_front, sample_parent
from .reflect import Reflector
from .report import plot_search, render

if TYPE_CHECKING:
    from ..engines.base import Engine

#: merge=True allows this many merge attempts per search.
MERGES = 5


@dataclass
class SearchResult:
    """The pool when the search stopped. `best`: {parameter name: value} of the best candidate."""

    candidates: list[Candidate]
    pareto: list[int]
    best_id: int
    stopped: str | None = None
    metric_calls: int = 0
    iterations: int = 0
    usage: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    run_dir: str | None = None

    @property
    def pool(self) -> dict[int, Candidate]:
        return {c.id: c for c in self.candidates}

    @property
    def best(self) -> dict[str, str]:
        return dict(self.pool[self.best_id].values)

    @property
    def history(self) -> list[dict[str, Any]]:
        """The run protocol's history: one row per iteration (the seed first)."""
        return self.rows

    @property
    def best_val(self) -> float | None:
        return self.pool[self.best_id].val

    def lineage(self, cid: int) -> list[Candidate]:
        """The candidate and everything it descends from, oldest first."""
        return lineage(self.pool, cid)

    def summary(self) -> str:
        return render(self.to_state())

    def to_state(self) -> dict[str, Any]:
        return {"pool": [c.to_dict() for c in self.candidates], "stopped": self.stopped, "rows": self.rows,
                "iteration": self.iterations, "metric_calls": self.metric_calls, "usage": self.usage, "run_dir": self.run_dir}


class Search:
    """Pareto-front candidate search over `parameters` (trainable Variables that `forward` reads, or a Module).

    forward(example) -> Variable and metric(example, output) -> number | bool | None | Score may be sync or
    async; loss(example, output) -> Variable (optional) gives feedback when the metric gives none.
    proposer: "tgd", "optoprime" or an Optimizer over (at least) these parameters; engine is its engine.
    minibatch: training examples per mutation; proposals: samples per mutation (the best one is kept);
    merge: True, False or the number of merge attempts; budget: metric calls; iterations: mutations and
    merges (a budget of optimizer steps, whatever they cost in metric calls); patience: mutations in a
    row without a new pool entry; perfect: a minibatch the parent already scores this on everywhere is
    skipped (None: never skip). callbacks receive every event (see textopt.run.Callback); spec: extra
    fields for run_dir/spec.json (e.g. what `textopt resume` needs to rebuild the search).
    """

    def __init__(
        self, parameters: Iterable[Variable] | Module, *, forward: Callable[[Any], Any], train: Sequence[Any], val: Sequence[Any],
        metric: Metric | None = None, loss: Callable[[Any, Variable], Any] | None = None, proposer: Any = "tgd",
        engine: "Engine | str | None" = None, minibatch: int = 3, proposals: int = 1, merge: bool | int = True,
        budget: int | None = None, budget_tokens: int | None = None, budget_usd: float | None = None,
        target: float | None = None, patience: int | None = None, iterations: int | None = None,
        perfect: float | None = 1.0,
        concurrency: int | None = None, run_dir: str | Path | None = None, resume: bool = False, seed: int = 0,
        callbacks: Sequence["Callback | Callable[[dict[str, Any]], Any]"] = (), progress: bool | None = None,
        spec: dict[str, Any] | None = None,
    ) -> None:
        self.params = parameter_list(parameters)  # a Module stands for its parameters()
        self.train, self.val = list(train), list(val)
        _check_options(self.params, self.train, self.val, minibatch=minibatch, proposals=proposals, iterations=iterations,
                       stops=(budget, budget_tokens, budget_usd, patience, iterations))
        self.forward, self.metric, self.loss = forward, metric, loss
        self.reflector = Reflector(proposer, self.params, engine, loss=loss, perfect=perfect)
        self.minibatch, self.proposals = min(minibatch, len(self.train)), proposals
        self.max_merges = (MERGES if merge else 0) if isinstance(merge, bool) else int(merge)
        self.budget, self.budget_tokens, self.budget_usd = budget, budget_tokens, budget_usd
        self.target, self.patience, self.perfect, self.iterations = target, patience, perfect, iterations
        self.concurrency, self.seed = concurrency, seed
        self.run_dir, self.resuming = (Path(run_dir) if run_dir is not None else None), resume
        self.callbacks, self.progress, self.extra_spec = list(callbacks), progress, dict(spec or {})
        self.run: "Run | None" = None
        self._fingerprints = {"train_fingerprint": _fingerprint(self.train), "val_fingerprint": _fingerprint(self.val)}
        self.state = SearchState(seed)

    # -- running ---------------------------------------------------------------------------------

    async def afit(self) -> SearchResult:
        callbacks = list(self.callbacks)
        if self.progress or (self.progress is None and sys.stderr.isatty()):
            callbacks.append(Progress(bar=self.progress, desc="search"))
        budgets = Budgets(tokens=self.budget_tokens, usd=self.budget_usd, metric_calls=self.budget)
        with Run(self.run_dir, kind="search", spec={**self._spec(), **self.extra_spec}, budgets=budgets, callbacks=callbacks, resume=self.resuming) as run:
            self.run = run
            state = run.load_checkpoint(apply=lambda s: [Candidate.from_dict(c) for c in s["pool"]]) if self.resuming else None
            self.state = SearchState(self.seed)
            if state is not None:
                self.load_state_dict(state)
                self.state.stopped = None  # resuming a finished search re-checks its stop rules (a raised budget goes on)
            run.start(kind="search", step=self.state.iteration, total_steps=None, resumed=state is not None,
                      parameters=[p.name for p in self.params], budget=self.budget)
            try:
                if not self.state.pool:
                    await self._tracked(self._seed)
                while self.state.stopped is None:
                    self.state.stopped = self._stop_reason()
                    if self.state.stopped is None:
                        await self._tracked(self._iterate)
            except BudgetExceeded as exc:  # an engine's own token budget: stop at the last completed iteration
                if not self.state.pool:
                    raise
                self.state.stopped = "budget_engine"
                run.log({"event": "budget", "message": str(exc)})
            except BaseException:  # interrupted or failed: the parameters still end on the best candidate so far
                if self.state.pool:
                    self._apply(self.state.best().values)
                raise
            result = self.result()
            self._apply(result.best)
            self._checkpoint()
            run.write_json("parameters.json", {"format": "textopt.parameters", "version": 1, "parameters": result.best})
            if run.dir is not None:  # best effort: without matplotlib, one line says why there is no curves.png
                run.plot(lambda path: plot_search({**self.state_dict(), "stopped": self.state.stopped,
                                                   "metric_calls": run.metric_calls}, path), "curves.png")
            run.end(stopped=self.state.stopped, best_id=result.best_id, best_val=result.best_val, pareto=result.pareto,
                    candidates=len(self.state.pool), metric_calls=run.metric_calls, usage=dict(run.totals))
        self.run = None
        return result

    fit = sync_twin(afit, "Run the search to a stop (sync `afit`).")

    def result(self) -> SearchResult:
        run = self.run
        return SearchResult([self.state.pool[i] for i in sorted(self.state.pool)], list(pareto_front(self.state.table())), best_id(self.state.pool),
                            self.state.stopped, run.metric_calls if run else 0, self.state.iteration, dict(run.totals) if run else {},
                            list(self.state.rows), str(self.run_dir) if self.run_dir else None)

    async def _tracked(self, step: Callable[[], Any]) -> None:
        """One unit of work: counted, checkpointed, logged; rolled back in memory if it does not finish."""
        assert self.run is not None
        saved = json.loads(json.dumps(self.state_dict()))
        start = time.perf_counter()
        try:
            with self.run.track() as usage:
                row = await step()
        except BaseException:
            self.load_state_dict(saved)
            raise
        row.update(usage_columns(usage), seconds=round(time.perf_counter() - start, 3),
                   metric_calls=self.run.metric_calls, best_val=self.state.best().val, pool=len(self.state.pool))
        self.state.rows.append(row)
        self._checkpoint()  # on disk before anyone hears of it
        if row.get("added") is not None:
            self.run.candidate(self.state.pool[row["added"]].to_dict())
        self.run.step(row)

    def _stop_reason(self) -> str | None:
        assert self.run is not None
        best = self.state.best().val
        if self.target is not None and best is not None and best >= self.target:
            return "target"
        if self.patience is not None and self.state.stale >= self.patience:
            return "patience"
        if self.iterations is not None and self.state.iteration >= self.iterations:
            return "iterations"
        return self.run.stop_reason(step=self.state.iteration, total_steps=None, metric_calls=self.run.metric_calls)

    # -- one iteration -------------------------------------------------------------------------
    async def _seed(self) -> dict[str, Any]:
        values = {p.name: p.text for p in self.params}
        scored = await self._score(self.val, values)
        if all(s.row.error for s in scored):
            raise EngineUnavailable(f"scoring the starting values: none of the {len(scored)} validation examples got an "
                                    f"answer, so there is nothing to search from; the first error: {scored[0].row.error[:300]}")
        if all(s.row.score is None for s in scored):
            raise ValueError("the metric scored none of the validation examples; pass metric=fn(example, output) -> "
                             "number or to.Score, or give the examples an 'answer'")
        self._add(Candidate(0, [], [], values, [s.row.score for s in scored], "the starting values"), scored)
        return {"step": 0, "kind": "seed", "added": 0, "val": self.state.pool[0].val}

    async def _iterate(self) -> dict[str, Any]:
        self.state.iteration += 1
        front = pareto_front(self.state.table())
        if self.state.merge_due and self.state.merges < self.max_merges:
            self.state.merge_due = False
            options = merge_options(self.state.pool, list(front), self.state.tried)
            if options:
                return await self._merge(self.state.rng.choice(options))
        return await self._mutate(self.state.pool[sample_parent(front, self.state.rng)])

    async def _mutate(self, parent: Candidate) -> dict[str, Any]:
        param = self.params[self.state.next_param % len(self.params)]
        self.state.next_param += 1
        idx = self.state.next_batch(len(self.train), self.minibatch)
        batch = [self.train[i] for i in idx]
        row: dict[str, Any] = {"step": self.state.iteration, "kind": "mutation", "parent": parent.id, "param": param.name,
                               "batch": idx, "added": None}
        before = await self._score(batch, parent.values)
        row["parent_train"] = _mean([s.row.score for s in before])
        self.state.stale += 1
        if self.reflector.is_perfect(before):
            return {**row, "skipped": "the parent is already perfect on this minibatch"}
        children, failures = await self.reflector.children(param, parent.values, batch, before, self.proposals,
                                                           lambda values: self._score(batch, values))
        row["failures"], row["proposals"] = failures, [{"value": c.value[:300], "train": c.train} for c in children]
        if not children:
            return row
        child = max(children, key=lambda c: c.total)  # first sample wins a tie
        row["train"] = child.train
        if child.total <= _total(before):
            return {**row, "rejected": "no better than the parent on the minibatch"}
        values = {**parent.values, param.name: child.value}
        twin = self.state.twin(values)
        if twin is not None:  # scored already: no second val run, no duplicate on the front
            return {**row, "rejected": f"the same values as #{twin}"}
        scored = await self._score(self.val, values)
        cand = Candidate(len(self.state.pool), [parent.id], [param.name], values, [s.row.score for s in scored], child.reasoning,
                         "mutation", self.state.iteration, {"examples": idx, "parent": [s.row.score for s in before],
                                                      "child": child.scores})
        self._add(cand, scored)
        self.state.stale, self.state.merge_due = 0, self.max_merges > 0
        return {**row, "added": cand.id, "val": cand.val}

    async def _merge(self, triple: tuple[int, int, int]) -> dict[str, Any]:
        i, j, a = triple
        self.state.tried.add(triple)
        self.state.merges += 1
        values = merged_values(self.state.pool, i, j, a)
        scored = await self._score(self.val, values)
        changed = sorted(k for k in values if values[k] != self.state.pool[i].values[k])
        cand = Candidate(len(self.state.pool), [i, j], changed, values, [s.row.score for s in scored],
                         f"merge of #{i} and #{j} (common ancestor #{a}): each parameter from the candidate that changed it",
                         "merge", self.state.iteration)
        row = {"step": self.state.iteration, "kind": "merge", "parents": [i, j], "ancestor": a, "val": cand.val, "added": None}
        if (cand.val or 0.0) >= max(self.state.pool[i].val or 0.0, self.state.pool[j].val or 0.0):
            self._add(cand, scored)
            self.state.stale, row["added"] = 0, cand.id
        return row

    # -- helpers -------------------------------------------------------------------------------
    async def _score(self, examples: Sequence[Any], values: dict[str, str]) -> list[Scored]:
        """Run the candidate `values` on examples; each example is one metric call toward the budget."""
        assert self.run is not None
        self._apply(values)
        scored = await score_examples(self.forward, examples, self.metric, concurrency=self.concurrency)
        self.run.metric_calls += len(examples)
        return scored

    def _add(self, cand: Candidate, scored: list[Scored]) -> None:
        assert self.run is not None
        cand.metric_calls = self.run.metric_calls
        self.state.pool[cand.id] = cand
        self.run.save_eval(f"candidate_{cand.id}", EvalReport([s.row for s in scored], seed=self.seed))

    def _apply(self, values: dict[str, str]) -> None:
        for p in self.params:
            if p.value != values[p.name]:
                p.set_value(values[p.name])

    def _checkpoint(self) -> None:
        if self.run is not None:
            self.run.save_checkpoint(self.state_dict())

    def _spec(self) -> dict[str, Any]:
        return {"parameters": [p.name for p in self.params], **self._fingerprints,
                "options": {"minibatch": self.minibatch, "proposals": self.proposals, "merges": self.max_merges,
                            "budget": self.budget, "budget_tokens": self.budget_tokens, "budget_usd": self.budget_usd,
                            "target": self.target, "patience": self.patience, "iterations": self.iterations, "seed": self.seed,
                            "proposer": self.reflector.name}}

    def state_dict(self) -> dict[str, Any]:
        return {"search": self._spec(), **self.state.to_dict(), "optimizer": self.reflector.state_dict(),
                "parameters": {p.name: p.text for p in self.params}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        spec = state.get("search", {})
        for key in ("parameters", "train_fingerprint", "val_fingerprint"):
            if key in spec and spec[key] != self._spec()[key]:
                what = "parameter names" if key == "parameters" else f"{key.split('_')[0]} data"
                raise ValueError(f"the checkpoint was made with different {what}; resume with the same parameters "
                                 "(same name=...) and the same examples in the same order, or start a new run_dir")
        self.state.load(state)
        self.reflector.load_state_dict(state.get("optimizer") or {})

def _check_options(params: list[Variable], train: list[Any], val: list[Any], *, minibatch: Any, proposals: Any,
                   iterations: Any, stops: tuple[Any, ...]) -> None:
    """Refuse a Search that can't run: untrained or same-named parameters, no data, no stopping rule."""
    if not params or not all(isinstance(p, Variable) and p.requires_grad for p in params):
        raise TypeError("Search needs a list of trainable Variables (requires_grad=True) that forward reads, or a Module holding them")
    if len({p.name for p in params}) != len(params):
        raise ValueError("two parameters share a name; give each Variable a unique name=...")
    if not train or not val:
        raise ValueError("Search needs non-empty train (minibatches to reflect on) and val (to score candidates)")
    for name, v in (("minibatch", minibatch), ("proposals", proposals)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    if iterations is not None and (not isinstance(iterations, int) or iterations < 0):
        raise ValueError(f"iterations must be an integer >= 0, got {iterations!r}")
    if all(s is None for s in stops):
        raise ValueError("give Search a stopping rule: budget=<metric calls> (e.g. 20 * len(val)), "
                         "budget_tokens=, budget_usd=, iterations= or patience=")


def _mean(scores: Sequence[float | None]) -> float | None:
    vals = [s for s in scores if s is not None]
    return sum(vals) / len(vals) if vals else None


def _total(scored: Sequence[Scored]) -> float:
    return sum(s.row.score or 0.0 for s in scored)


def _fingerprint(examples: Sequence[Any]) -> str:
    blob = json.dumps([repr(e) for e in examples], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def search_report(source: "str | Path | dict[str, Any]") -> str:
    """Interface F: the text report of a search (pool, Pareto front, lineage of the best candidate), from
    a run directory (its newest readable checkpoint) or a checkpoint state dict."""
    if isinstance(source, dict):
        return render(source)
    state = read_checkpoint(source)
    if state is None or state.get("kind") != "search":
        raise ValueError(f"{source} holds no search checkpoint; is it a run directory made by Search(..., run_dir=...)?")
    return render({**state, "run_dir": str(source)})
