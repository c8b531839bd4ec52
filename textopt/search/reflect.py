"""Reflective mutation for Search: feedback from a minibatch goes to the proposer through the optimizer
contract (`abackward`), and the proposer rewrites one parameter (`astep(params=[p])`, then `propose` with
the values already sampled named as rejected, for further samples)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Sequence

from ..errors import EngineError, EngineUnavailable, ParseError
from ..evaluate import Scored
from ..usercall import call as _call
from ..optim import TGD, OptoPrime
from ..optim.base import proposed_value
from ..prompts import render
from ..variable import Variable

#: What Search calls on a proposer object (interface C).
CONTRACT = ("abackward", "astep", "zero_grad")


@dataclass
class Child:
    """One proposed value for the mutated parameter and its scores on the parent's minibatch."""

    value: str
    reasoning: str
    scores: list[float | None]

    @property
    def total(self) -> float:
        return sum(s or 0.0 for s in self.scores)

    @property
    def train(self) -> float | None:
        vals = [s for s in self.scores if s is not None]
        return sum(vals) / len(vals) if vals else None


class Reflector:
    """Owns the proposer: builds it from a name, feeds it feedback, collects samples for one parameter."""

    def __init__(self, proposer: Any, params: Sequence[Variable], engine: Any, *, loss: Any = None,
                 perfect: float | None = 1.0) -> None:
        self.opt = build_proposer(proposer, params, engine)
        self.name = proposer.lower() if isinstance(proposer, str) else type(proposer).__name__
        self.loss, self.perfect = loss, perfect

    def is_perfect(self, scored: Sequence[Scored]) -> bool:
        """True when the parent already gets the best score on every example (no child can beat it)."""
        return self.perfect is not None and bool(scored) and all(
            s.row.score is not None and s.row.score >= self.perfect for s in scored)

    async def children(
        self, param: Variable, parent: dict[str, str], batch: Sequence[Any], before: Sequence[Scored], k: int,
        score: Callable[[dict[str, str]], Awaitable[list[Scored]]],
    ) -> tuple[list[Child], int]:
        """Up to k new values for `param`, each scored on the same minibatch; and the failed proposals."""
        self.opt.zero_grad()
        try:
            for example, s in zip(batch, before):  # one at a time: the feedback order (and so the prompt) is fixed
                await self._feed(example, s)
            samples, failures = await self._samples(param, parent[param.name], k)
        finally:
            self.opt.zero_grad()
            param.set_value(parent[param.name])
        out = []
        for value, reasoning in samples:
            scored = await score({**parent, param.name: value})
            out.append(Child(value, reasoning, [s.row.score for s in scored]))
        return out, failures

    async def _feed(self, example: Any, s: Scored) -> None:
        if s.node is None:
            return  # the forward raised outside the graph: no output to attach feedback to
        if s.row.feedback:
            await self.opt.abackward(s.node, s.row.feedback)
        elif self.loss is not None:
            evaluation = await _call(self.loss, example, s.node)
            if not isinstance(evaluation, Variable):
                raise TypeError(f"loss must return a textopt Variable (its evaluation), got {type(evaluation).__name__}")
            await self.opt.abackward(evaluation, None)
        else:
            await self.opt.abackward(s.node, default_feedback(example, s.row.score, self.perfect))

    async def _samples(self, param: Variable, old: str, k: int) -> tuple[list[tuple[str, str]], int]:
        report = await self.opt.astep(params=[param])
        failures = len(getattr(report, "failures", []) or [])
        out: list[tuple[str, str]] = []
        if param.name in (getattr(report, "changed", None) or {}) and param.text != old:
            out.append((param.text, (getattr(report, "reasoning", None) or {}).get(param.name, "")))
        temperature = (getattr(self.opt, "temperatures", None) or (0.0, 0.7))[-1]
        for _ in range(1, k):
            param.set_value(old)
            seen = [old] + [v for v, _ in out]
            try:
                proposals = await self.opt.propose([param], temperature=temperature, rejected={param.name: seen})
            except EngineUnavailable:
                raise  # a stop for the run, not one failed sample
            except (ParseError, EngineError):
                failures += 1
                continue
            proposal = next((v for key, v in proposals.items()
                             if (key.name if isinstance(key, Variable) else str(key)) == param.name), None)
            value = getattr(proposal, "value", None)
            value = proposed_value(param, value)
            check = getattr(self.opt, "check", None)
            if not isinstance(value, str) or value in seen or (check is not None and check(param, value) is not None):
                failures += 1
                continue
            try:
                param.set_value(value)  # a variable may refuse a value (e.g. code that doesn't parse)
            except (TypeError, ValueError):
                failures += 1
                continue
            out.append((param.text, getattr(proposal, "reasoning", "") or ""))
        param.set_value(old)
        return out, failures

    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict() if hasattr(self.opt, "state_dict") else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state and hasattr(self.opt, "load_state_dict"):
            self.opt.load_state_dict(state)


def build_proposer(proposer: Any, params: Sequence[Variable], engine: Any) -> Any:
    """"tgd" / "optoprime" -> that optimizer over params; an optimizer object is checked and used as is."""
    if isinstance(proposer, str):
        kinds = {"tgd": TGD, "optoprime": OptoPrime}
        if proposer.lower() not in kinds:
            raise ValueError(f"proposer must be 'tgd', 'optoprime' or an Optimizer, got {proposer!r}")
        return kinds[proposer.lower()](params, engine=engine)
    missing = [m for m in CONTRACT if not callable(getattr(proposer, m, None))]
    if missing:
        raise TypeError(f"proposer must be 'tgd', 'optoprime' or an Optimizer (with {', '.join(CONTRACT)}); "
                        f"{type(proposer).__name__} has no {', '.join(missing)}")
    if engine is not None:
        raise ValueError("engine= is for proposer='tgd' or 'optoprime'; an Optimizer you pass uses its own engine")
    known = {id(p) for p in getattr(proposer, "parameters", ())}
    stray = [p.name for p in params if id(p) not in known]
    if stray:
        raise ValueError(f"the proposer does not optimize {', '.join(stray)}; build it over the same Variables as the Search")
    return proposer


def default_feedback(example: Any, score: float | None, best: float | None) -> str:
    """Feedback for an output when the metric gave only a number (and there is no loss)."""
    answer = example.get("answer") if isinstance(example, dict) else getattr(example, "answer", None)
    top = 1.0 if best is None else best
    return render("search_feedback.j2", score=score if score is not None else "no score", best=top,
                  perfect=score is not None and score >= top, answer=answer)


