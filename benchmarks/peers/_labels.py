"""The label-task helpers every framework's worker uses, so all are scored the same way.

Loads textopt/datasets.py by file path (stdlib only: no textopt package, no project dependencies), which is
how the peers' workers, running in their own virtual environments, share `render` and `label_feedback`.
"""
from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

_PATH = Path(__file__).resolve().parents[2] / "textopt" / "datasets.py"
_spec = importlib.util.spec_from_file_location("_textopt_datasets", _PATH)
assert _spec is not None and _spec.loader is not None
datasets: Any = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = datasets  # dataclasses look their module up there
_spec.loader.exec_module(datasets)

render = datasets.render


def score(reply: str, answer: str, labels: Sequence[str]) -> tuple[float, str]:
    """(score, feedback) of one reply: exactly one label word, the expected one."""
    return datasets.label_feedback(reply or "", answer, labels)


def schedule_steps(budget: int, val: int, batch: int) -> int:
    """Steps that fit a budget of task-model calls: one validation pass first, then per step one minibatch
    and one validation pass (the same arithmetic as a Trainer run with validation every step)."""
    return max(0, (budget - val) // (batch + val))


def run_schedule(*, get: Callable[[], str], set_: Callable[[str], None], step: Callable[[list[dict[str, str]]], None],
                 evaluate: Callable[[list[dict[str, str]]], float], train: list[dict[str, str]],
                 val: list[dict[str, str]], batch: int, budget: int, seed: int) -> dict[str, Any]:
    """The Trainer-style loop every hand-written optimizer loop shares: validate the seed, then per step
    run `step(minibatch)` (forwards, feedback, one update), validate, keep the new value only if validation
    did not get worse. Minibatches are drawn from a seeded shuffle of `train`, epoch after epoch.
    Returns the logical task-model calls made, the best validation score and one row per step."""
    rng = random.Random(seed)
    order: list[int] = []
    calls = len(val)
    best = evaluate(val)
    rows = []
    for s in range(schedule_steps(budget, len(val), batch)):
        if len(order) < batch:
            fresh = list(range(len(train)))
            rng.shuffle(fresh)
            order += fresh
        idx, order = order[:batch], order[batch:]
        old = get()
        error = ""
        try:
            step([train[i] for i in idx])
        except Exception as exc:  # a crashed update is a recorded, invalid step
            error = f"{type(exc).__name__}: {exc}"[:300]
        calls += batch
        new = get()
        score = evaluate(val)
        calls += len(val)
        accepted = score >= best
        if accepted:
            best = score
        else:
            set_(old)
        rows.append({"step": s + 1, "changed": new != old, "val": score, "accepted": accepted, "error": error})
    return {"task_calls": calls, "val_best": best, "steps": rows}
