"""How much the prompt matters on the label tasks (workload g, part 1): a bare prompt against hand-written
instruction templates, each rendered in the user turn around the input, on the embedded model.

    python benchmarks/prompt_spread.py [--n 100] [--tasks sentiment,categories] [--out benchmarks/spread.json]

The examples are `textopt.datasets.load(task, n=N, seed=1)`: a set of its own, so the quality workload's
test set (seed 0) stays unseen. Greedy decoding, max_tokens 24, llama.cpp in-process (textopt's local
engine). Accuracy is the label metric ("exactly one label word, the expected one"); the interval is
Wilson's 95% score interval. Writes one JSON file and prints a markdown table.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from textopt import datasets  # noqa: E402


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes in n trials (sound at 0 and n, unlike the normal one)."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


async def score_template(engine: Any, task: str, template: str, examples: list[datasets.Example], max_tokens: int) -> dict[str, Any]:
    metric = datasets.label_metric(task)
    sem = asyncio.Semaphore(1)  # the local model runs one call at a time anyway

    async def one(ex: datasets.Example) -> tuple[str, float]:
        async with sem:
            reply = await engine.acomplete([{"role": "user", "content": datasets.render(template, ex.question)}],
                                           max_tokens=max_tokens, temperature=0.0)
        s = metric(ex, reply.text)
        return reply.text, float(getattr(s, "value", s[0] if isinstance(s, tuple) else s))

    t0 = time.perf_counter()
    rows = await asyncio.gather(*(one(ex) for ex in examples))
    k = int(sum(v for _, v in rows))
    lo, hi = wilson(k, len(rows))
    return {"template": template, "correct": k, "n": len(rows), "accuracy": k / len(rows), "ci95": [round(lo, 3), round(hi, 3)],
            "seconds": round(time.perf_counter() - t0, 1), "sample_replies": [r for r, _ in rows[:3]]}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    from textopt.engines.local import LocalEngine

    cache = tempfile.mkdtemp(prefix="spread-cache-")
    engine = LocalEngine(n_ctx=1024, cache=cache, max_tokens=args.max_tokens)
    out: dict[str, Any] = {"model": "SmolLM2-135M-Instruct Q4_1 (llama.cpp in-process, greedy)", "max_tokens": args.max_tokens,
                           "data": f"textopt.datasets.load(task, n={args.n}, seed=1)", "tasks": {}}
    for task in args.tasks:
        examples = datasets.load(task, n=args.n, seed=1)
        rows = {}
        for name, template in datasets.TEMPLATES[task].items():
            rows[name] = await score_template(engine, task, template, examples, args.max_tokens)
            r = rows[name]
            print(f"{task:10s} {name:10s} {r['correct']:3d}/{r['n']} {r['accuracy']:.0%} [{r['ci95'][0]:.0%}, {r['ci95'][1]:.0%}] "
                  f"{r['seconds']} s  e.g. {r['sample_replies'][0][:60]!r}", file=sys.stderr, flush=True)
        best = max((k for k in rows if k != "bare"), key=lambda k: rows[k]["accuracy"])
        out["tasks"][task] = {"templates": rows, "best": best,
                              "spread_points": round(100 * (rows[best]["accuracy"] - rows["bare"]["accuracy"]), 1)}
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    return out


def markdown(res: dict[str, Any]) -> str:
    L = [f"Model: {res['model']}, max_tokens {res['max_tokens']}; examples: `{res['data']}`.", "",
         "| task | prompt (user-turn template) | correct / n | accuracy | 95% interval |", "|---|---|---|---|---|"]
    for task, t in res["tasks"].items():
        for name, r in t["templates"].items():
            shown = r["template"].replace("\n", "⏎").replace("|", "/")
            L.append(f"| {task} | {name}: `{shown}` | {r['correct']}/{r['n']} | {r['accuracy']:.0%} | "
                     f"{r['ci95'][0]:.0%}–{r['ci95'][1]:.0%} |")
    L.append("")
    for task, t in res["tasks"].items():
        L.append(f"- {task}: best hand-written template '{t['best']}' is {t['spread_points']:+.0f} points over the bare prompt.")
    return "\n".join(L)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--tasks", default="sentiment,categories")
    ap.add_argument("--max-tokens", type=int, default=24)
    ap.add_argument("--out", default=str(HERE / "spread.json"))
    args = ap.parse_args()
    args.tasks = [t for t in args.tasks.split(",") if t]
    res = asyncio.run(main_async(args))
    print(markdown(res))


if __name__ == "__main__":
    main()
