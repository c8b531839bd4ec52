"""Which half of Search limits workload (g) on the embedded model: the proposals, or the selection?

    python benchmarks/search_selection.py [--seeds 0,1,2] [--tasks sentiment,categories] [--out benchmarks/selection.json]

textopt Search runs with (g)'s seed prompt, budget (60 metric calls), splits (30 train / 10 validation from
`load(task, n=40, seed=100+seed)`) and minibatch (3), but its proposer is scripted: each mutation offers the
next of the hand-written templates of `textopt.datasets.TEMPLATES` (the bare one left out), in an order
shuffled per seed. The final template is scored on (g)'s held-out test set (`load(task, n=100, seed=1000)`).

This is not a quality result of any optimizer: the candidates are written by hand. It measures the other
half of the search: given good candidates, does selection on 10 validation examples keep one that holds
up on 100 unseen ones? The task model is SmolLM2-135M through llama.cpp in-process, greedy, 24 tokens.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import textopt as to  # noqa: E402
from textopt import datasets  # noqa: E402
from textopt.optim.base import Optimizer, Proposal  # noqa: E402

TEST_SEED, BUDGET, TRAIN, VAL, BATCH = 1000, 60, 30, 10, 3


class ListProposer(Optimizer):
    """A proposer that ignores the feedback and offers fixed candidates in order, one per mutation: it stands
    in for a proposer model that writes good instructions, so only the search's selection is measured."""

    def __init__(self, parameters: Sequence[to.Variable], candidates: Sequence[str]) -> None:
        super().__init__(parameters, engine=None)
        self.queue = list(candidates)

    async def propose(self, params: list[to.Variable], *, temperature: float | None,
                      rejected: Mapping[str, list[str]]) -> dict[to.Variable, Proposal | BaseException]:
        out: dict[to.Variable, Proposal | BaseException] = {}
        for p in params:
            seen = set(rejected.get(p.name, [])) | {p.text}
            while self.queue and self.queue[0] in seen:
                self.queue.pop(0)
            out[p] = Proposal(self.queue.pop(0), reasoning="scripted") if self.queue else ValueError("no candidates left")
        return out


async def one_run(engine: Any, task: str, seed: int, test: list[datasets.Example]) -> dict[str, Any]:
    from prompt_spread import score_template

    data = datasets.load(task, n=TRAIN + VAL, seed=100 + seed)
    train, val = data[:TRAIN], data[TRAIN:]
    candidates = [t for name, t in datasets.TEMPLATES[task].items() if name != "bare"]
    random.Random(seed).shuffle(candidates)
    template = to.Variable(datasets.BARE_TEMPLATE, role="instruction template", requires_grad=True, name="instruction_template")
    llm = to.LLM(engine, temperature=0.0, max_tokens=24)

    @to.trace
    def fill(template: str, text: str) -> str:
        """Put the text into the template's {input} slot."""
        return datasets.render(template, text)

    async def forward(ex: datasets.Example) -> to.Variable:
        return await llm.acall(fill(template, to.Variable(ex.question, role="text to classify")))

    search = to.Search([template], forward=forward, train=train, val=val, metric=datasets.label_metric(task),
                       proposer=ListProposer([template], candidates), minibatch=BATCH, budget=BUDGET, seed=seed,
                       progress=False)
    t0 = time.perf_counter()
    res = await search.afit()
    final = res.best[template.name]
    pool = [{"value": c.values[template.name], "val": c.val} for c in res.candidates]
    after = await score_template(engine, task, final, test, 24)
    return {"task": task, "seed": seed, "order": candidates, "final_prompt": final, "val_best": res.best_val,
            "after": after["accuracy"], "after_ci95": after["ci95"], "metric_calls": res.metric_calls,
            "candidates_scored": pool, "stopped": res.stopped, "seconds": round(time.perf_counter() - t0, 1)}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from prompt_spread import score_template

    from textopt.engines.local import LocalEngine

    engine = LocalEngine(n_ctx=1024, cache=tempfile.mkdtemp(prefix="selection-cache-"), max_tokens=24)
    out: dict[str, Any] = {"model": "SmolLM2-135M-Instruct Q4_1 (llama.cpp in-process, greedy, 24 tokens)",
                           "settings": {"budget": BUDGET, "train": TRAIN, "val": VAL, "batch": BATCH, "seeds": args.seeds,
                                        "test": f"load(task, n=100, seed={TEST_SEED})"}, "tasks": {}}
    for task in args.tasks:
        test = datasets.load(task, n=100, seed=TEST_SEED)
        before = await score_template(engine, task, datasets.BARE_TEMPLATE, test, 24)
        templates = {name: (await score_template(engine, task, t, test, 24))["accuracy"]
                     for name, t in datasets.TEMPLATES[task].items() if name != "bare"}
        t_out: dict[str, Any] = {"before": before["accuracy"], "templates_on_test": templates, "runs": []}
        out["tasks"][task] = t_out
        for seed in args.seeds:
            row = await one_run(engine, task, seed, test)
            t_out["runs"].append(row)
            print(f"{task} seed {seed}: {before['accuracy']:.2f} -> {row['after']:.2f} ({row['metric_calls']} metric calls, "
                  f"{len(row['candidates_scored'])} candidates) {row['final_prompt']!r}", file=sys.stderr, flush=True)
            Path(args.out).write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return out


def markdown(res: dict[str, Any]) -> str:
    """The table for BENCHMARKS.md: per task and seed, the template Search kept and its test accuracy."""
    s = res["settings"]
    L = [f"Model: {res['model']}; budget {s['budget']} metric calls, {s['train']} train / {s['val']} validation, "
         f"minibatch {s['batch']}; test `{s['test']}`.", "",
         "| task | seed | seed prompt on test | candidates scored | kept (test accuracy) | best hand-written on test |",
         "|---|---|---|---|---|---|"]
    for task, t in res["tasks"].items():
        names = {v: k for k, v in datasets.TEMPLATES[task].items()}
        best = max(t["templates_on_test"].items(), key=lambda kv: kv[1])
        for row in t["runs"]:
            kept = names.get(row["final_prompt"], row["final_prompt"][:40])
            L.append(f"| {task} | {row['seed']} | {t['before']:.0%} | {len(row['candidates_scored'])} | "
                     f"{kept} ({row['after']:.0%}) | {best[0]} ({best[1]:.0%}) |")
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--tasks", default="sentiment,categories")
    ap.add_argument("--out", default=str(HERE / "selection.json"))
    args = ap.parse_args()
    args.seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    args.tasks = [t for t in args.tasks.split(",") if t]
    res = asyncio.run(main_async(args))
    print(markdown(res))


if __name__ == "__main__":
    main()
