"""Per-node overhead of traced functions at 1,000 chained nodes (no LLM latency: scripted engine).

    python benchmarks/trace_overhead.py [nodes] [repeats]

forward: a traced call vs the same plain Python call. OptoPrime backward: recording feedback (walks the
graph, no LLM call); step prompt: building the one step request. TGD backward: textual backward through
every traced call with a zero-latency scripted engine (1,000 LLM-call slots; measures the framework's
scheduling and prompt rendering, not a model). Median of `repeats` runs.
"""
from __future__ import annotations

import json
import statistics
import sys
import time

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[1]))  # run from a checkout
import textopt as to  # noqa: E402


def plain_rotate(s: str) -> str:
    return s[1:] + s[:1]


rotate = to.trace(plain_rotate)


def build(n: int) -> tuple[to.Variable, to.Variable]:
    x = to.Variable("the quick brown fox jumps over the lazy dog", role="text", requires_grad=True, name="text")
    v = x
    for _ in range(n):
        v = rotate(v)
    return x, v


def timed(fn, repeats: int) -> float:
    runs = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return statistics.median(runs)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def plain() -> None:
        s = "the quick brown fox jumps over the lazy dog"
        for _ in range(n):
            s = plain_rotate(s)

    t_plain = timed(plain, repeats)
    t_fwd = timed(lambda: build(n), repeats)
    reply = json.dumps({"reasoning": "r", "suggestion": {"text": "x"}})

    def opto_backward() -> None:
        x, out = build(n)
        opt = to.OptoPrime([x], engine=to.ScriptedEngine(reply))
        t = time.perf_counter()
        opt.backward(out, "start with 'The'")
        opto_backward.t = time.perf_counter() - t  # type: ignore[attr-defined]
        t = time.perf_counter()
        opt.messages()
        opto_backward.m = time.perf_counter() - t  # type: ignore[attr-defined]

    bw, msg = [], []
    for _ in range(repeats):
        opto_backward()
        bw.append(opto_backward.t)  # type: ignore[attr-defined]
        msg.append(opto_backward.m)  # type: ignore[attr-defined]

    def tgd_backward() -> float:
        x, out = build(n)
        engine = to.ScriptedEngine("make it start with 'The'", max_concurrency=64)
        t = time.perf_counter()
        out.backward(engine)
        assert len(engine.calls) == n and x.gradients
        return time.perf_counter() - t

    tgd = statistics.median(tgd_backward() for _ in range(max(1, repeats // 2)))
    print(f"nodes: {n}")
    print(f"forward, traced:        {t_fwd * 1e3:8.1f} ms total  {t_fwd / n * 1e6:7.1f} us/node")
    print(f"forward, plain python:  {t_plain * 1e3:8.1f} ms total  {t_plain / n * 1e6:7.1f} us/node")
    print(f"OptoPrime backward:     {statistics.median(bw) * 1e3:8.1f} ms total  (no LLM call)")
    print(f"OptoPrime step prompt:  {statistics.median(msg) * 1e3:8.1f} ms total  (building the one request)")
    print(f"TGD backward (scripted):{tgd * 1e3:8.1f} ms total  {tgd / n * 1e3:7.2f} ms/node ({n} feedback calls)")


if __name__ == "__main__":
    main()
