"""(k) The local runtime: what the worker process costs per call, and what prefix reuse saves.

Runs SmolLM2 24-token calls three ways on the same prompts at temperature 0: llama.cpp in this process
(the old engine), textopt's LocalEngine (worker process, reset before each call: the default), and the
LocalEngine with reuse_prefix=True; checks the replies are byte-identical, and prints seconds per call.
Run it alone on a quiet machine: `python benchmarks/local_runtime.py [--calls 30]`; write `uptime` with it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def prompts(n: int) -> list[list[dict[str, str]]]:
    from textopt.datasets import TEMPLATES, load, render

    tpl = TEMPLATES["sentiment"]["one-word"]
    return [[{"role": "user", "content": render(tpl, ex.question)}] for ex in load("sentiment", n=n, seed=7)]


def in_process(msgs: list[list[dict[str, str]]], path: str, threads: int) -> tuple[list[str], list[float]]:
    from llama_cpp import Llama

    llama = Llama(model_path=path, n_ctx=2048, n_threads=threads, seed=0, verbose=False)
    out, times = [], []
    for m in msgs:
        t = time.perf_counter()
        llama.reset()
        r = llama.create_chat_completion(messages=m, temperature=0.0, max_tokens=24, seed=0)
        times.append(time.perf_counter() - t)
        out.append(r["choices"][0]["message"].get("content") or "")
    return out, times


def worker(msgs: list[list[dict[str, str]]], path: str, threads: int, reuse: bool) -> tuple[list[str], list[float]]:
    from textopt.engines.local import LocalEngine

    engine = LocalEngine(path, cache=False, n_ctx=2048, n_threads=threads, reuse_prefix=reuse, max_tokens=24)
    engine.complete([{"role": "user", "content": "Hi"}], max_tokens=1)  # load outside the timing
    out, times = [], []
    for m in msgs:
        t = time.perf_counter()
        out.append(engine.complete(m, temperature=0.0, max_tokens=24).text)
        times.append(time.perf_counter() - t)
    engine.close()
    return out, times


def evaluation(n: int, reuse: bool) -> dict[str, object]:
    """Wall time of a `to.evaluate` of n sentiment examples on SmolLM2 (the main job's scoring step)."""
    import textopt as to
    from textopt.datasets import TEMPLATES, label_metric, load, render
    from textopt.engines.local import LocalEngine, smollm2_path

    engine = LocalEngine(smollm2_path(), cache=False, reuse_prefix=reuse, max_tokens=24)
    engine.complete([{"role": "user", "content": "Hi"}], max_tokens=1)  # load outside the timing
    tpl = TEMPLATES["sentiment"]["one-word"]

    async def forward(ex):
        reply = await engine.acomplete([{"role": "user", "content": render(tpl, ex.question)}], temperature=0.0)
        return to.Variable(reply.text, role="answer")

    t = time.perf_counter()
    report = to.evaluate(forward, load("sentiment", n=n, seed=1000), label_metric("sentiment"))
    seconds = time.perf_counter() - t
    engine.close()
    return {"seconds": round(seconds, 2), "accuracy": report.mean, "outputs": [r.output for r in report.rows]}


def main() -> None:
    from textopt.engines.local import default_threads, smollm2_path

    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--eval", type=int, default=0, help="instead: time an evaluation of N examples with and without reuse")
    args = ap.parse_args()
    if args.eval:
        load = os.getloadavg()[0]
        off, on = evaluation(args.eval, False), evaluation(args.eval, True)
        print(json.dumps({"examples": args.eval, "load_1min_at_start": round(load, 2),
                          "load_1min_at_end": round(os.getloadavg()[0], 2), "reset_s": off["seconds"],
                          "reuse_s": on["seconds"], "accuracy_reset": off["accuracy"], "accuracy_reuse": on["accuracy"],
                          "outputs_identical": off["outputs"] == on["outputs"]}, indent=1))
        return
    msgs = prompts(args.calls)
    path, threads = str(smollm2_path()), default_threads()
    load = os.getloadavg()[0]
    base, t_base = in_process(msgs, path, threads)
    sub, t_sub = worker(msgs, path, threads, reuse=False)
    reuse, t_reuse = worker(msgs, path, threads, reuse=True)
    row = {"calls": args.calls, "load_1min_at_start": round(load, 2), "load_1min_at_end": round(os.getloadavg()[0], 2),
           "in_process_s_per_call": round(statistics.median(t_base), 4),
           "worker_s_per_call": round(statistics.median(t_sub), 4),
           "worker_reuse_prefix_s_per_call": round(statistics.median(t_reuse), 4),
           "worker_overhead_pct": round(100 * (statistics.median(t_sub) / statistics.median(t_base) - 1), 1),
           "worker_replies_identical": base == sub, "reuse_replies_identical": base == reuse,
           "reuse_differs_on": sum(a != b for a, b in zip(base, reuse))}
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
