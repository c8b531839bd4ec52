"""(l) The local engine under contention: seconds per SmolLM2 call alone and with one competing llama.cpp
process on the same cores, for the thread counts and OpenMP wait policies llama.cpp offers.

The competitor is what a user's machine often has: another llama.cpp process (SmolLM2, 2 threads, OpenMP's
default wait policy) generating without pause. The engine under test is textopt's LocalEngine (worker
process, prefix reuse on, cache off) with OMP_WAIT_POLICY and n_threads set per row; its calls are the
sentiment template with 24-token replies. Run it alone on a quiet machine and write `uptime` with it:
`python benchmarks/local_contention.py [--calls 8]`.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

COMPETITOR = """
import sys
from llama_cpp import Llama
llama = Llama(model_path=sys.argv[1], n_ctx=512, n_threads=2, seed=0, verbose=False)
print("ready", flush=True)
while True:
    llama.reset()
    llama.create_completion("Write a long story about a river and a mountain.", max_tokens=200, temperature=0.0)
"""


def prompts(n: int) -> list[list[dict[str, str]]]:
    from textopt.datasets import TEMPLATES, load, render

    tpl = TEMPLATES["sentiment"]["one-word"]
    return [[{"role": "user", "content": render(tpl, ex.question)}] for ex in load("sentiment", n=n, seed=11)]


def per_call(msgs: list[list[dict[str, str]]], threads: int, policy: str) -> float:
    """Median seconds per call of a fresh LocalEngine whose worker runs with this policy and thread count."""
    from textopt.engines.local import LocalEngine, smollm2_path

    os.environ["OMP_WAIT_POLICY"] = policy  # the worker inherits it (LocalEngine only sets a default)
    engine = LocalEngine(smollm2_path(), cache=False, n_ctx=2048, n_threads=threads, max_tokens=24)
    try:
        engine.complete([{"role": "user", "content": "Hi"}], max_tokens=1)  # load outside the timing
        times = []
        for m in msgs:
            t = time.perf_counter()
            engine.complete(m, temperature=0.0, max_tokens=24)
            times.append(time.perf_counter() - t)
        return statistics.median(times)
    finally:
        engine.close()


def main() -> None:
    from textopt.engines.local import smollm2_path

    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=8)
    args = ap.parse_args()
    msgs = prompts(args.calls)
    configs = [(2, "PASSIVE"), (2, "ACTIVE"), (1, "PASSIVE"), (1, "ACTIVE")]
    rows = []
    start_load = os.getloadavg()[0]
    for threads, policy in configs:
        alone = per_call(msgs, threads, policy)
        env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
        rival = subprocess.Popen([sys.executable, "-c", COMPETITOR, str(smollm2_path())], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            assert rival.stdout is not None and rival.stdout.readline().strip() == "ready"
            time.sleep(1.0)
            contended = per_call(msgs, threads, policy)
        finally:
            rival.kill()
            rival.wait()
        rows.append({"threads": threads, "omp_wait_policy": policy, "alone_s": round(alone, 3),
                     "with_competitor_s": round(contended, 3), "slowdown": round(contended / alone, 2)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"calls": args.calls, "load_1min_at_start": round(start_load, 2),
                      "load_1min_at_end": round(os.getloadavg()[0], 2), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
