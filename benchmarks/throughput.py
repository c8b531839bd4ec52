"""Workload (h): evaluation throughput. The same examples evaluated against the latency server (50 ms per
request) at several concurrency levels, by each framework's own way of evaluating a set:

- textopt: `to.evaluate` / `aevaluate(forward, examples, metric, concurrency=c)`;
- TextGrad: its documented thread pool (`concurrent.futures.ThreadPoolExecutor(max_workers=c)`) over `model(x)`;
- DSPy: `dspy.Evaluate(devset, metric, num_threads=c)(program)`;
- GEPA: its default adapter's `evaluate(batch, candidate)` with `max_litellm_workers=c`.

The physical limit is n × 50 ms / c. Run through the harness (`python benchmarks/run.py --workloads h`) or
alone (`python benchmarks/throughput.py [--quick | --tiny]`, which is the same thing). Each framework runs in its
own process (peers in their own virtual environments); wall time is taken inside that process around the
evaluation only, after one untimed warm-up request on a route of its own, so start-up, imports and the
first client are not counted. Calls and peak concurrency are counted at the server.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
FRAMEWORKS = ("textopt", "textgrad", "dspy", "gepa")
LABEL = {"textopt": "textopt", "textgrad": "TextGrad", "dspy": "DSPy", "gepa": "GEPA"}
CONCURRENCY = (1, 8, 32, 64)
TARGET = "textopt within 1.25x of the physical limit at concurrency 32 and 64, and ahead of every peer there"


def wl_throughput(r: Any, lat: Any, mode: dict[str, Any], publish: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run every available framework at every level; returns the (h) section of results.json."""
    from textopt import datasets

    n = mode.get("throughput_n", 1000)
    levels = list(mode.get("throughput_levels", CONCURRENCY))
    task = "sentiment"
    template = datasets.TEMPLATES[task]["one-word"]
    # numbered, so no two requests are the same (the generator repeats sentences; a cache or in-flight dedupe
    # would otherwise serve the repeats and the figures would not be n requests)
    examples = [{"question": f"{i}. {e.question}", "answer": e.answer} for i, e in enumerate(datasets.load(task, n=n, seed=2), 1)]
    latency = getattr(lat, "latency", 0.05)
    res: dict[str, Any] = {"n": n, "latency_s": latency, "levels": levels, "task": task, "template": template,
                           "limit_s": {str(c): n * latency / c for c in levels}, "frameworks": {}, "target": TARGET}
    for name in FRAMEWORKS:
        if not r.fw.available(name):
            continue
        ids = {c: f"tput-{name}-{c}-{r._n}" for c in levels}
        cfg = {"model": "latency", "max_tokens": 24, "template": template, "labels": list(datasets.LABELS[task]),
               "examples": examples, "runs": [{"concurrency": c, "base_url": lat.base_url(ids[c])} for c in levels],
               "warmup_url": lat.base_url(f"tput-{name}-warmup-{r._n}")}
        out = r.run(name, "throughput", cfg, timeout=max(600, 4 * n * latency * len(levels)))
        if "error" in out or not out.get("available"):
            res["frameworks"][name] = {"available": False, "reason": out.get("error") or out.get("reason", "")}
        else:
            rows = {}
            for run in out["runs"]:
                c = run["concurrency"]
                st = lat.stats(ids[c])
                limit = n * latency / c
                rows[str(c)] = {"seconds": round(run["seconds"], 3), "per_second": round(n / run["seconds"], 1),
                                "x_limit": round(run["seconds"] / limit, 2), "calls": st.calls,
                                "max_in_flight": st.max_in_flight, "scored": run["scored"], "errors": run.get("errors", 0),
                                **({"first_error": run["first_error"]} if run.get("first_error") else {})}
            res["frameworks"][name] = {"available": True, "how": out.get("how", ""), "levels": rows}
        from run import log  # the harness's logger (this module is loaded by run.py)

        log(f"(h) {name}: " + ", ".join(f"c={c}: {v['seconds']} s" for c, v in res["frameworks"][name].get("levels", {}).items())
            + res["frameworks"][name].get("reason", "")[:200])
        _verdict(res)
        if publish is not None:
            publish(res)
    return res


def _verdict(res: dict[str, Any]) -> None:
    t = res["frameworks"].get("textopt", {})
    if not t.get("available"):
        return
    top = [c for c in ("32", "64") if c in t["levels"]]
    if not top:
        return
    res["met_limit"] = all(t["levels"][c]["x_limit"] <= 1.25 for c in top)
    peers = [v for k, v in res["frameworks"].items() if k != "textopt" and v.get("available")]
    res["met_peers"] = all(t["levels"][c]["seconds"] < p["levels"][c]["seconds"] for p in peers for c in top if c in p["levels"]) if peers else None
    res["met"] = res["met_limit"] and res["met_peers"] is not False


def plot(res: dict[str, Any], path: Path) -> Path | None:
    """Throughput (examples per second) against concurrency, one line per framework, with the limit line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    levels = res["levels"]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(levels, [res["n"] / res["limit_s"][str(c)] for c in levels], "k--", label=f"limit (n x {res['latency_s'] * 1000:.0f} ms / c)")
    for name, row in res["frameworks"].items():
        if row.get("available"):
            xs = [c for c in levels if str(c) in row["levels"]]
            ax.plot(xs, [row["levels"][str(c)]["per_second"] for c in xs], "o-", label=LABEL.get(name, name))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xticks(levels, [str(c) for c in levels])
    ax.set_xlabel("concurrency")
    ax.set_ylabel("examples evaluated per second")
    ax.set_title(f"Evaluation throughput, {res['n']} examples, {res['latency_s'] * 1000:.0f} ms per request")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(res: dict[str, Any], plot_name: str | None = None) -> list[str]:
    levels = res["levels"]
    L = [f"### (h) evaluation throughput (latency engine, {res['latency_s'] * 1000:.0f} ms per request, {res['n']} examples)", "",
         f"Seconds to evaluate {res['n']} `{res['task']}` examples (lower is better), and the multiple of the physical "
         "limit n × 50 ms / c. Wall time inside each framework's process around the evaluation; calls and peak "
         "in-flight requests counted at the server.", "",
         "| framework | how | " + " | ".join(f"c={c}" for c in levels) + " |", "|---|---|" + "---|" * len(levels),
         "| limit | n × 50 ms / c | " + " | ".join(f"{res['limit_s'][str(c)]:.2f} s" for c in levels) + " |"]
    for name, row in res["frameworks"].items():
        if row.get("available"):
            cells = []
            for c in levels:
                v = row["levels"].get(str(c))
                cells.append(f"{v['seconds']:.2f} s ({v['x_limit']:.2f}×, peak {v['max_in_flight']})" if v else "—")
            L.append(f"| {LABEL.get(name, name)} | {row['how'].replace('|', '/')} | " + " | ".join(cells) + " |")
        else:
            L.append(f"| {LABEL.get(name, name)} | not available: {row['reason'][:120].replace('|', '/')} | " + " | ".join("—" for _ in levels) + " |")
    L.append("")
    if plot_name:
        L += [f"![throughput against concurrency]({plot_name})", ""]
    if "met" in res:
        L.append(f"Target: {res['target']}: {'**met**' if res['met'] else '**missed**'} "
                 f"(limit: {'met' if res.get('met_limit') else 'missed'}; peers: "
                 f"{'—' if res.get('met_peers') is None else 'met' if res['met_peers'] else 'missed'}).")
        L.append("")
    return L


def main(argv: list[str] | None = None) -> int:
    """`python benchmarks/throughput.py [run.py options]` = `python benchmarks/run.py --workloads h [...]`."""
    sys.path.insert(0, str(HERE))
    import run

    args = list(sys.argv[1:] if argv is None else argv)
    return run.main(["--workloads", "h", *args])


if __name__ == "__main__":
    sys.exit(main())
