"""AEGIS co-evolution: the attacker and the defender take turns improving against each other's best.

Per round: the attacker runs `iterations` textual-gradient steps against the defender's current best,
then the defender runs `iterations` steps against the attacker's best. A step evaluates the side's
current top candidate on the training split, turns its failing cases into an error report, asks for
one gradient per objective ("route": attack = ASR and relative score gain, defense = TPR and TNR),
each prompted with that route's past gradients from the buffer, and applies them in one TGD update.
Each side keeps a top-k pool scored on train; after its iterations it picks its best on validation.
The run stops after `rounds`, or earlier when neither side's best improved in `patience` rounds in a row.
The first iteration of a side's turn is greedy; later ones sample (gradient and update at
`explore_temperature`), since they start from the same best candidate and the same report: greedy, a small
model writes the same gradient and the same update again.

Choices where the paper is silent (written down here): a step starts from the pool's best training
candidate, not from the last edit; when the opponent changes, the pool is re-scored against it;
"improved" means a different prompt with a strictly higher validation score than the previous best;
pools hold distinct prompts only; an update that fails to parse or exceeds `max_chars` is recorded
and skipped, never applied.

The loop is here; the state of both sides in `state`, what is written at the end in `outputs`.
"""
from __future__ import annotations

import asyncio
import csv
import json
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .._sync import run_sync, sync_twin
from ..context import resolve_backward_engine, resolve_engine
from ..engines.base import Engine
from ..run import Budgets, Callback, Run, usage_columns
from .corpus import Example, split
from .judge import Judge
from .metrics import DEFAULT_POWERS, DEFAULT_WEIGHTS, DetectorReport
from .outputs import write_outputs
from .pool import Candidate
from .scenario import EssayGrading, Scenario
from .state import OBJECTIVES, SIDES, CoevolutionState, Result, _check_prompts, _restore, _state, judge_cases


def stale_rounds(history: Sequence[Mapping[str, Any]]) -> int:
    """How many of the last rounds in `history` improved neither side (from its rows, so a resumed run
    counts the rounds before the crash too)."""
    by_round: dict[int, bool] = {}
    for row in history:
        if row.get("side") in SIDES:
            by_round[row["round"]] = by_round.get(row["round"], False) or bool(row.get("improved"))
    n = 0
    for r in sorted(by_round, reverse=True):
        if by_round[r]:
            break
        n += 1
    return n


async def acoevolve(
    attack_prompts: Sequence[str],
    defense_prompt: str,
    *,
    benign: Sequence[str],
    engine: Engine | str | None = None,
    optimizer_engine: Engine | str | None = None,
    rounds: int = 8,
    iterations: int = 8,
    pool_size: int = 4,
    seed: int = 0,
    out: str | Path | None = None,
    scenario: Scenario | None = None,
    examples: Sequence[Example] = (),
    val_fraction: float = 0.5,
    buffer_size: int = 4,
    weights: Mapping[str, float] | None = None,
    powers: Mapping[str, float] | None = None,
    report_cases: int = 4,
    max_chars: Mapping[str, int] | None = None,
    gradient_tokens: int = 300,
    patience: int = 1,
    explore_temperature: float = 0.7,
    quote_failures: bool = True,
    exemplars: int = 0,
    resume: bool = False,
    budgets: Budgets | None = None,
    callbacks: Sequence[Callback | Callable[[dict[str, Any]], Any]] = (),
    spec: Mapping[str, Any] | None = None,
) -> Result:
    """Async co-evolution (see `coevolve`)."""
    _check_prompts(attack_prompts, defense_prompt, benign)
    if rounds < 0 or iterations < 1:
        raise ValueError(f"rounds must be >= 0 and iterations >= 1, got rounds={rounds}, iterations={iterations}")
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise ValueError(f"patience must be an integer >= 1 (rounds without improvement before stopping), got {patience!r}")
    if isinstance(exemplars, bool) or not isinstance(exemplars, int) or exemplars < 0:
        raise ValueError(f"exemplars must be an integer >= 0 (labeled excerpts a defender proposal adds; 0 = off), got {exemplars!r}")
    if not 0.0 < explore_temperature <= 2.0:
        raise ValueError(f"explore_temperature must be in (0, 2], got {explore_temperature!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    w = dict(DEFAULT_WEIGHTS, **(weights or {}))
    p = dict(DEFAULT_POWERS, **(powers or {}))
    for k in list(w) + list(p):
        if k not in OBJECTIVES:
            raise ValueError(f"unknown objective {k!r} in weights/powers; objectives are {sorted(OBJECTIVES)}")
    eng = resolve_engine(engine)
    opt_eng = resolve_backward_engine(optimizer_engine, eng)
    scen = scenario or EssayGrading()
    items = [b for b in benign if b.strip()]
    mc = dict({"attack": 800, "defense": 3000}, **(max_chars or {}))
    run = CoevolutionState(engine=eng, opt_engine=opt_eng, scenario=scen, items=items, examples=list(examples), seed=seed,
               val_fraction=val_fraction, pool_size=pool_size, buffer_size=buffer_size, weights=w, powers=p,
               report_cases=report_cases, max_chars=mc, iterations=iterations, gradient_tokens=gradient_tokens,
               explore_temperature=explore_temperature, quote_failures=quote_failures, exemplars=exemplars)
    config = {"rounds": rounds, "iterations": iterations, "pool_size": pool_size, "seed": seed,
              "val_fraction": val_fraction, "buffer_size": buffer_size, "report_cases": report_cases,
              "patience": patience, "explore_temperature": explore_temperature, "quote_failures": quote_failures, "exemplars": exemplars, "weights": w, "powers": p,
              "scenario": scen.to_dict(), "engine": repr(eng), "optimizer_engine": repr(opt_eng),
              "train_items": len(run.items["train"]), "val_items": len(run.items["val"]),
              "train_examples": len(run.examples["train"]), "val_examples": len(run.examples["val"])}
    rec = Run(out, kind="aegis", spec=spec if spec is not None else {"recipe": None, "config": config},
              budgets=budgets, callbacks=callbacks, resume=resume)
    start = time.perf_counter()
    with rec:
        state = rec.load_checkpoint() if resume else None
        if state is not None:
            _restore(run, state)
            history, done, rounds_run, stopped = list(state["history"]), int(state["round"]), int(state["rounds_run"]), state["stopped"]
        else:
            history, done, rounds_run, stopped = [], -1, 0, None
        rec.start(step=max(done, 0), total_steps=rounds, resumed=state is not None, run_dir=str(out) if out else None)
        if done < 0:
            # Round 0: the initial attacks against the initial defense; the attacker's best is picked on validation.
            t0 = time.perf_counter()
            with rec.track() as used:
                run.best["defense"] = defense_prompt
                initial = [Candidate(a, born="initial") for a in dict.fromkeys(attack_prompts)]
                await asyncio.gather(*(run.score("attack", c, "train") for c in initial))
                for c in initial:  # the pool keeps the k best on train
                    run.pools["attack"].add(c)
                await asyncio.gather(*(run.score("attack", c, "val") for c in run.pools["attack"].members))
                run.best["attack"] = run.pools["attack"].best_on_validation().prompt
                dcand = Candidate(defense_prompt, born="initial")
                await run.score("defense", dcand, "train")
                run.pools["defense"].add(dcand)
                history.append(await run.row(0, "initial", None, 0, 0.0))
            history[-1].update(usage_columns(used), seconds=round(time.perf_counter() - t0, 3))
            done = 0
            rec.save_checkpoint(_state(run, history, 0, 0, None))
            rec.step(history[-1])
        for r in range(done + 1, rounds + 1):
            if stopped:
                break
            stopped = rec.stop_reason(step=r - 1, total_steps=None)
            if stopped:
                break
            improved = []
            for side in SIDES:
                t0 = time.perf_counter()
                with rec.track() as used:
                    imp = await run.phase(side, r)
                    improved.append(imp)
                    history.append(await run.row(r, side, imp, 0, 0.0))
                history[-1].update(usage_columns(used), seconds=round(time.perf_counter() - t0, 3))
                rec.check_failures(run.failures)  # a 401/403 on the optimizer engine ends the run
            rounds_run = r
            if stale_rounds(history) >= patience:  # this round and the ones before it improved neither side
                stopped = "early_stop" if r < rounds else "completed"
            rec.save_checkpoint(_state(run, history, r, rounds_run, stopped))
            for row in history[-len(SIDES):]:
                rec.step(row)
        stopped = stopped or "completed"
        with rec.track():
            errors = await run.error_report()
            apool = run.pools["attack"]
            await asyncio.gather(*(run.score("attack", c, "val") for c in apool.members))
        ranked = sorted(apool.members, key=lambda c: (-(c.val_score or 0.0), -c.train_score, c.order))
        attacks = [run.best["attack"]] + [c.prompt for c in ranked if c.prompt != run.best["attack"]]
        result = Result(
            defense_prompt=run.best["defense"], attack_prompts=attacks, history=history,
            initial_defense_prompt=defense_prompt, initial_attack_prompts=list(attack_prompts), rounds_run=rounds_run,
            stopped_early=stopped == "early_stop", errors=errors, failures=run.failures, tokens=dict(rec.totals),
            seconds=round(time.perf_counter() - start, 2), config=config, stopped=stopped,
            run_dir=str(out) if out else None,
        )
        rec.save_checkpoint(_state(run, history, rounds_run, rounds_run, stopped))
        if out:
            write_outputs(result, rec)
        rec.end(stopped=stopped, rounds_run=rounds_run, usage=dict(rec.totals))
    return result


def coevolve(
    attack_prompts: Sequence[str],
    defense_prompt: str,
    *,
    benign: Sequence[str],
    engine: Engine | str | None = None,
    optimizer_engine: Engine | str | None = None,
    rounds: int = 8,
    iterations: int = 8,
    pool_size: int = 4,
    seed: int = 0,
    out: str | Path | None = None,
    **options: Any,
) -> Result:
    """Co-evolve attack prompts (injection texts) and a defense prompt (detector instructions).

    benign: clean items of the scenario (essays by default), split into train and validation.
    engine runs the detector and the grader; optimizer_engine writes gradients and updates (default: engine).
    options: scenario, examples (extra labeled texts for the defender, e.g. a corpus train split),
    val_fraction, buffer_size, weights, powers, report_cases, max_chars, gradient_tokens, patience,
    explore_temperature, quote_failures (the defender's failing texts quoted under its gradients; False for the
    critique alone), exemplars (k > 0: each defender iteration also proposes its base prompt with k more labeled
    excerpts of the training texts it got wrong, no LLM call; validation decides whether they are kept).
    out: the run directory (locked while running; a checkpoint after every round; result.json, history.json,
    history.csv, curves.png at the end). resume=True continues the run in `out` after its last completed
    round (pass the same arguments). budgets=textopt.run.Budgets(tokens=..., calls=..., usd=...) stops
    cleanly between rounds; callbacks get every round's rows (textopt.run.Callback or a function).
    """
    return run_sync(acoevolve(attack_prompts, defense_prompt, benign=benign, engine=engine,
                              optimizer_engine=optimizer_engine, rounds=rounds, iterations=iterations,
                              pool_size=pool_size, seed=seed, out=out, **options))


async def aevaluate_detector(defense_prompt: str, examples: Sequence[Example], *, engine: Engine | str | None = None,
                             scenario: Scenario | None = None) -> DetectorReport:
    """Async `evaluate_detector`."""
    if not isinstance(defense_prompt, str) or not defense_prompt.strip():
        raise ValueError("defense_prompt must be non-empty text: the detector's instructions")
    exs = list(examples)
    if not exs:
        raise ValueError("evaluate_detector got no examples; pass labeled texts, e.g. aegis.load_corpus('bastion')")
    for i, e in enumerate(exs):
        if not isinstance(e, Example):
            raise TypeError(f"examples[{i}] is a {type(e).__name__}; pass aegis.Example objects (text, label, category)")
    judge = Judge(resolve_engine(engine), scenario or EssayGrading())
    return await judge_cases(judge, defense_prompt, [(e.text, e.label, e.category) for e in exs])


evaluate_detector = sync_twin(aevaluate_detector, "TPR, TNR, precision, F1 of a defense prompt on labeled examples, plus every error (misclassified or unreadable).")


class CoEvolution:
    """AEGIS co-evolution behind the run protocol that Trainer and Search follow: build it with the arguments of
    `acoevolve`, then `fit()` / `await afit()` returns the `Result` (`.best`, `.history`, `.run_dir`)."""

    def __init__(self, attack_prompts: Sequence[str], defense_prompt: str, **options: Any) -> None:
        _check_prompts(attack_prompts, defense_prompt, options.get("benign", ()))
        self.attack_prompts, self.defense_prompt, self.options = list(attack_prompts), defense_prompt, options

    async def afit(self) -> Result:
        """Run the co-evolution to a stop and return its Result."""
        return await acoevolve(self.attack_prompts, self.defense_prompt, **self.options)

    fit = sync_twin(afit, "Run the co-evolution to a stop and return its Result (sync `afit`).")
