"""Evaluation throughput with one and two endpoints behind one engine (issue 15, item 7).

    python benchmarks/router_throughput.py [--n 200] [--capacity 2] [--concurrency 16] [--latency 0.2]

Each endpoint is a latency server (benchmarks/bench_servers.py) of limited size: it serves at most
`capacity` requests at once, `latency` seconds each, and queues the rest, as a model server with a fixed
number of slots does. One endpoint can therefore answer at most capacity / latency requests per second, and
a second endpoint doubles what the pair can serve. The default latency is 200 ms (a short LLM reply): at
50 ms per request litellm's Router itself, not the endpoints, is what limits the rate on 2 cores. `to.evaluate` runs the same n examples at `concurrency` in flight
through:

- the openai engine on one endpoint (the single-server baseline);
- the router engine (litellm's Router, `get_engine("router", endpoints=[...])`) on one endpoint;
- the router engine on two endpoints.

Limit: n x latency / (capacity x endpoints). Each configuration runs in a fresh process (the servers stay
in this one), after one untimed warm-up request; calls and peak in-flight requests are counted at each
server. Prints a table and writes benchmarks/router_throughput.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from bench_servers import LatencyServer  # noqa: E402

CONFIGS = [("openai", 1), ("router", 1), ("router", 2)]


def _child(cfg: dict[str, Any]) -> dict[str, Any]:
    """In the fresh process: build the engine, warm it up, time `aevaluate` over the examples."""
    import asyncio

    sys.path.insert(0, str(ROOT))
    import textopt as to
    from textopt import datasets
    from textopt.evaluate import aevaluate

    labels = tuple(datasets.LABELS["sentiment"])
    metric = datasets.label_metric(labels)
    template = datasets.TEMPLATES["sentiment"]["one-word"]
    c = cfg["concurrency"]
    opts = {"max_tokens": 24, "timeout": 120.0, "max_concurrency": c, "cache": False}

    def build(urls: list[str]) -> to.Engine:
        if cfg["engine"] == "openai":
            return to.get_engine("openai:latency", base_url=urls[0], **opts)
        return to.get_engine("router", endpoints=[{"model": "latency", "base_url": u} for u in urls], **opts)

    async def main() -> dict[str, Any]:
        warm = build(cfg["warmup_urls"])
        await asyncio.gather(*(warm.acomplete([{"role": "user", "content": f"warm-up {i}"}]) for i in range(2 * len(cfg["urls"]))))
        eng = build(cfg["urls"])
        llm = to.LLM(eng)

        async def forward(ex: dict[str, str]) -> to.Variable:
            return await llm.acall(to.Variable(datasets.render(template, ex["question"]), role="input"))

        t0 = time.perf_counter()
        report = await aevaluate(forward, cfg["examples"], metric, concurrency=c)
        seconds = time.perf_counter() - t0
        errors = [r.error for r in report.rows if r.error]
        return {"seconds": seconds, "errors": len(errors), "first_error": (errors[0] or "")[:300] if errors else None}

    return asyncio.run(main())


def run(n: int, capacity: int, concurrency: int, latency: float) -> dict[str, Any]:
    from textopt import datasets  # noqa: F401  (checks the checkout imports before servers start)

    load_before = os.getloadavg()[0]
    examples = [{"question": f"{i}. {e.question}", "answer": e.answer}
                for i, e in enumerate(datasets.load("sentiment", n=n, seed=3), 1)]
    rows = []
    with LatencyServer(latency, capacity=capacity) as s1, LatencyServer(latency, capacity=capacity) as s2:
        servers = [s1, s2]
        for k, (engine, endpoints) in enumerate(CONFIGS):
            run_id = f"router-{k}-{engine}-{endpoints}"
            cfg = {"engine": engine, "concurrency": concurrency,
                   "urls": [s.base_url(run_id) for s in servers[:endpoints]],
                   "warmup_urls": [s.base_url(run_id + "-warm") for s in servers[:endpoints]],
                   # numbered per configuration, so no request repeats another's
                   "examples": [{"question": f"(config {k}) {e['question']}", "answer": e["answer"]} for e in examples]}
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
                json.dump(cfg, fh)
            try:
                p = subprocess.run([sys.executable, __file__, "--child", fh.name], capture_output=True, text=True,
                                   timeout=600, cwd=ROOT)
            finally:
                os.unlink(fh.name)
            line = next((ln for ln in p.stdout.splitlines() if ln.startswith("ROUTER_RESULT ")), None)
            if line is None:
                raise RuntimeError(f"{engine} x{endpoints} failed:\n{p.stderr[-3000:]}")
            out = json.loads(line[len("ROUTER_RESULT "):])
            per_server = [s.stats(run_id) for s in servers[:endpoints]]
            limit = n * latency / (capacity * endpoints)
            rows.append({"engine": engine, "endpoints": endpoints, "seconds": round(out["seconds"], 3),
                         "per_second": round(n / out["seconds"], 1), "limit_s": round(limit, 3),
                         "x_limit": round(out["seconds"] / limit, 2), "errors": out["errors"],
                         "calls_per_endpoint": [st.calls for st in per_server],
                         "peak_in_flight_per_endpoint": [st.max_in_flight for st in per_server],
                         **({"first_error": out["first_error"]} if out.get("first_error") else {})})
            print(f"  {engine} x{endpoints}: {out['seconds']:.2f} s (limit {limit:.2f} s)", file=sys.stderr, flush=True)
    one = next(r for r in rows if r["engine"] == "router" and r["endpoints"] == 1)
    two = next(r for r in rows if r["engine"] == "router" and r["endpoints"] == 2)
    return {"n": n, "capacity": capacity, "concurrency": concurrency, "latency_s": latency, "rows": rows,
            "speedup_2_over_1": round(one["seconds"] / two["seconds"], 2),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "load_avg_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)],  # before, after: other work running
            "command": "python benchmarks/router_throughput.py " + " ".join(sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d")}


def table(res: dict[str, Any]) -> str:
    lines = ["| engine | endpoints | seconds | examples/s | limit | × limit | calls per endpoint | peak in flight per endpoint |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['engine']} | {r['endpoints']} | {r['seconds']:.2f} s | {r['per_second']:.0f} | {r['limit_s']:.2f} s | "
                     f"{r['x_limit']:.2f}× | {', '.join(map(str, r['calls_per_endpoint']))} | "
                     f"{', '.join(map(str, r['peak_in_flight_per_endpoint']))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="examples evaluated per configuration")
    ap.add_argument("--capacity", type=int, default=2, help="requests each endpoint serves at once (the rest queue)")
    ap.add_argument("--concurrency", type=int, default=16, help="requests textopt keeps in flight")
    ap.add_argument("--latency", type=float, default=0.2, help="seconds per request at an endpoint")
    ap.add_argument("--out", default=str(HERE / "router_throughput.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        with open(args.child, encoding="utf-8") as fh:
            print("ROUTER_RESULT " + json.dumps(_child(json.load(fh))), flush=True)
        return 0
    res = run(args.n, args.capacity, args.concurrency, args.latency)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    print(f"{res['n']} examples, {res['latency_s'] * 1000:.0f} ms per request, each endpoint serves {res['capacity']} at once, "
          f"{res['concurrency']} in flight ({res['machine']}, load {res['load_avg_1min'][0]}-{res['load_avg_1min'][1]})")
    print(table(res))
    print(f"router, 2 endpoints over 1: {res['speedup_2_over_1']}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
