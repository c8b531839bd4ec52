"""Core figures for BENCHMARKS.md: import time, backward+step wall time on a fan-in and a chain at a fixed
per-call latency (scripted engine), and update prompt size as the number of gradients grows.

    python benchmarks/core_bench.py [--runs 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import textopt as to  # noqa: E402

LATENCY = 0.05


def critic(messages):
    system = messages[0]["content"]
    if "JSON object" in system:
        return '{"reasoning": "r", "new_value": "Count each item, then answer with a number."}'
    if "merge several pieces" in system:
        return "merged: count carefully; answer with a number"
    if "critic" in system:
        return "The prompt should ask to count each item and answer with a number."
    return "The answer is 3."


def import_time(runs: int) -> float:
    times = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", "import time; t = time.perf_counter(); import textopt; print(time.perf_counter() - t)"],
            capture_output=True, text=True, check=True, cwd=ROOT,
        ).stdout
        times.append(float(out))
    return statistics.median(times)


def fan_in(width: int) -> tuple[float, int]:
    eng = to.ScriptedEngine(critic, latency=LATENCY, max_concurrency=16)
    prompt = to.Variable("Answer.", role="system prompt", requires_grad=True)
    llm = to.LLM(eng, system_prompt=prompt)
    outs = [llm(to.Variable(f"question {i}", role="question")) for i in range(width)]
    total = to.aggregate(to.TextLoss("Is it right?", engine=eng)(o) for o in outs)
    n0 = len(eng.calls)
    start = time.perf_counter()
    total.backward(eng)
    to.TGD([prompt], engine=eng).step()
    return time.perf_counter() - start, len(eng.calls) - n0


def chain(depth: int) -> tuple[float, int]:
    eng = to.ScriptedEngine(critic, latency=LATENCY)
    x = to.Variable("draft", role="draft answer", requires_grad=True)
    v = x
    for _ in range(depth):
        v = to.LLM(eng)(v)
    n0 = len(eng.calls)
    start = time.perf_counter()
    v.backward(eng)
    to.TGD([x], engine=eng).step()
    return time.perf_counter() - start, len(eng.calls) - n0


def update_prompt_chars(n: int) -> tuple[int, int]:
    eng = to.ScriptedEngine(critic)
    p = to.Variable("Answer.", role="system prompt", requires_grad=True)
    for i in range(n):
        p.add_gradient(f"Feedback {i}: the prompt does not say to count each object once; " + "detail " * 40)
    to.TGD([p], engine=eng).step()
    update = eng.calls[-1]
    return sum(len(m["content"]) for m in update), len(eng.calls)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    res = {"import_s": import_time(args.runs)}
    for name, fn, arg in (("fan_in_8", fan_in, 8), ("chain_10", chain, 10)):
        runs = [fn(arg) for _ in range(args.runs)]
        res[name] = {"seconds": statistics.median(r[0] for r in runs), "calls": runs[0][1]}
    res["update_prompt_chars"] = {n: update_prompt_chars(n) for n in (1, 8, 64)}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
