"""Workload (h): evaluation throughput. The same examples evaluated against the latency server (50 ms per
request) at several concurrency levels, by each framework's own way of evaluating a set:

- textopt: `to.evaluate` / `aevaluate(forward, examples, metric, concurrency=c)`;
- TextGrad: its documented thread pool (`concurrent.futures.ThreadPoolExecutor(max_workers=c)`) over `model(x)`;
- DSPy: `dspy.Evaluate(devset, metric, num_threads=c)(program)`;
- GEPA: its default adapter's `evaluate(batch, candidate)` with `max_litellm_workers=c`;
- raw (the floor, not a competitor): the same requests from a bare aiohttp client (benchmarks/bench_raw.py).

The physical limit is n × 50 ms / c; the practical one on this machine is the raw client's time, measured in
the same run against the same server (whose own CPU shares the 2 cores). Run through the harness
(`python benchmarks/run.py --workloads h`) or alone (`python benchmarks/throughput.py [--quick | --tiny]`, which is the same thing). Each framework runs in its
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
#: The levels the target is judged at, and textopt's allowed multiple of the raw-client floor there.
FLOOR_LEVELS = ("8", "32", "64")
MAX_X_RAW = 1.15
TARGET = "textopt ≤ 1.15× the raw-client floor at concurrency 8, 32 and 64, and ahead of every peer"


def wl_throughput(r: Any, lat: Any, mode: dict[str, Any], publish: Callable[[dict[str, Any]], None] | None = None,
                  earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the raw-client floor, then every available framework, at every level; returns the (h) section of
    results.json (the floor under "raw", beside the frameworks: it is the yardstick, not a competitor).

    Frameworks not run now (e.g. `--only textopt`) keep their rows from `earlier` (the same workload: same n
    and latency), marked as such; their multiple of the raw floor is not computed, since that floor was not
    measured in their run."""
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
    from run import log  # the harness's logger (this module is loaded by run.py)

    def measure(name: str) -> dict[str, Any]:
        ids = {c: f"tput-{name}-{c}-{r._n}" for c in levels}
        cfg = {"model": "latency", "max_tokens": 24, "template": template, "labels": list(datasets.LABELS[task]),
               "examples": examples, "runs": [{"concurrency": c, "base_url": lat.base_url(ids[c])} for c in levels],
               "warmup_url": lat.base_url(f"tput-{name}-warmup-{r._n}")}
        out = r.run(name, "throughput", cfg, timeout=max(600, 4 * n * latency * len(levels)))
        if "error" in out or not out.get("available"):
            row: dict[str, Any] = {"available": False, "reason": out.get("error") or out.get("reason", "")}
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
            row = {"available": True, "how": out.get("how", ""), "levels": rows}
        log(f"(h) {name}: " + ", ".join(f"c={c}: {v['seconds']} s" for c, v in row.get("levels", {}).items())
            + row.get("reason", "")[:200])
        return row

    # The floor runs in the same harness, against the same server, just before the frameworks.
    res["raw"] = measure("raw")
    kept = {}
    if earlier and earlier.get("n") == n and earlier.get("latency_s") == latency:
        kept = {k: {**v, "earlier_run": True} for k, v in earlier.get("frameworks", {}).items()
                if k in FRAMEWORKS and not r.fw.available(k) and v.get("available")}
    for name in FRAMEWORKS:
        if not r.fw.available(name):
            if name in kept:
                res["frameworks"][name] = kept[name]
            continue
        res["frameworks"][name] = measure(name)
        _ratios(res)
        _verdict(res)
        if publish is not None:
            publish(res)
    _verdict(res)  # again: with the kept rows of frameworks after textopt in the order
    return res


def _ratios(res: dict[str, Any]) -> None:
    """Each framework's seconds over the raw client's at the same level (`x_raw`), where both were measured."""
    raw = res.get("raw", {})
    if not raw.get("available"):
        return
    for row in res["frameworks"].values():
        if row.get("earlier_run"):
            continue
        for c, v in row.get("levels", {}).items():
            floor = raw["levels"].get(c)
            if floor and floor["seconds"] > 0:
                v["x_raw"] = round(v["seconds"] / floor["seconds"], 2)


def _verdict(res: dict[str, Any]) -> None:
    t = res["frameworks"].get("textopt", {})
    if not t.get("available"):
        return
    top = [c for c in FLOOR_LEVELS if c in t["levels"]]
    if not top:
        return
    res["met_limit"] = all(t["levels"][c]["x_limit"] <= 1.25 for c in top)  # the earlier target, kept for reference
    res["met_raw"] = all(t["levels"][c].get("x_raw", float("inf")) <= MAX_X_RAW for c in top) if res.get("raw", {}).get("available") else None
    peers = [v for k, v in res["frameworks"].items() if k != "textopt" and v.get("available")]
    res["met_peers"] = all(t["levels"][c]["seconds"] < p["levels"][c]["seconds"] for p in peers for c in top if c in p["levels"]) if peers else None
    res["met"] = bool(res["met_raw"]) and res["met_peers"] is not False


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
    raw = res.get("raw") or {}
    if raw.get("available"):
        xs = [c for c in levels if str(c) in raw["levels"]]
        ax.plot(xs, [raw["levels"][str(c)]["per_second"] for c in xs], "k:", marker="s", label="raw aiohttp client (floor)")
    for name, row in res["frameworks"].items():
        if row.get("available"):
            xs = [c for c in levels if str(c) in row["levels"]]
            ax.plot(xs, [row["levels"][str(c)]["per_second"] for c in xs], "o-",
                    label=LABEL.get(name, name) + (" (earlier run)" if row.get("earlier_run") else ""))
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
    raw = res.get("raw") or {}
    L = [f"### (h) evaluation throughput (latency engine, {res['latency_s'] * 1000:.0f} ms per request, {res['n']} examples)", "",
         f"Seconds to evaluate {res['n']} `{res['task']}` examples (lower is better), the multiple of the physical "
         "limit n × 50 ms / c and, for the frameworks, the multiple of the raw-client floor (the same requests sent "
         "by a bare aiohttp client, benchmarks/bench_raw.py, in the same run against the same server). Wall time "
         "inside each process around the evaluation; calls and peak in-flight requests counted at the server.", "",
         "| framework | how | " + " | ".join(f"c={c}" for c in levels) + " |", "|---|---|" + "---|" * len(levels),
         "| limit | n × 50 ms / c | " + " | ".join(f"{res['limit_s'][str(c)]:.2f} s" for c in levels) + " |"]

    def row_line(label: str, row: dict[str, Any], floor: bool = False) -> str:
        if not row.get("available"):
            return (f"| {label} | not available: {row.get('reason', '')[:120].replace('|', '/')} | "
                    + " | ".join("—" for _ in levels) + " |")
        cells = []
        for c in levels:
            v = row["levels"].get(str(c))
            if not v:
                cells.append("—")
                continue
            x_raw = "" if floor or "x_raw" not in v else f", {v['x_raw']:.2f}× raw"
            cells.append(f"{v['seconds']:.2f} s ({v['x_limit']:.2f}× limit{x_raw}, peak {v['max_in_flight']})")
        return f"| {label} | {row['how'].replace('|', '/')} | " + " | ".join(cells) + " |"

    if raw:
        L.append(row_line("raw client (floor)", raw, floor=True))
    for name, row in res["frameworks"].items():
        L.append(row_line(LABEL.get(name, name) + (" (earlier run)" if row.get("earlier_run") else ""), row))
    L.append("")
    if any(row.get("earlier_run") for row in res["frameworks"].values()):
        L += ["Rows marked (earlier run) are kept from an earlier run of this workload (not re-run now; no raw floor "
              "was measured in their run, so no multiple of it). Their figures vary with that run's machine load.", ""]
    t = res["frameworks"].get("textopt", {})
    ratios = [(c, t["levels"][str(c)]["x_raw"]) for c in levels if str(c) in t.get("levels", {}) and "x_raw" in t["levels"][str(c)]]
    if ratios:
        L += ["textopt / raw: " + ", ".join(f"c={c}: {x:.2f}×" for c, x in ratios) + ".", ""]
    if plot_name:
        L += [f"![throughput against concurrency]({plot_name})", ""]
    if "met" in res:
        L.append(f"Target: {res['target']}: {'**met**' if res['met'] else '**missed**'} "
                 f"(raw floor: {'—' if res.get('met_raw') is None else 'met' if res['met_raw'] else 'missed'}; peers: "
                 f"{'—' if res.get('met_peers') is None else 'met' if res['met_peers'] else 'missed'}; the earlier "
                 f"1.25× of n × 50 ms / c at 8/32/64: {'met' if res.get('met_limit') else 'missed'}).")
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
