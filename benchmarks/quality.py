"""Workload (g): optimization quality at an equal budget of task-model calls.

Every optimizer starts from the same seed prompt (the bare instruction template "{input}") on the same
label task (textopt.datasets: sentiment, categories), gets the same budget of task-model calls (training
forwards and validation evaluations, counted logically by each worker and checked at the server), and its
final template is scored on a held-out test set nobody optimized on, by one shared scorer: the template
rendered in the user turn around each test input, greedy, max_tokens 24, label metric. Optimizer calls
(gradients, losses, updates, reflections) go through a separate route of the counting proxy, so task-model
and optimizer tokens are reported apart: to the same model by default, or, with `--reflect-gguf`, to a
second llama.cpp server with its own model (the reflection model) and its own counting proxy, while the
task calls and the scorer stay on the task model.

Optimizers: textopt TGD and OptoPrime under Trainer, textopt Search, TextGrad TGD, Trace OptoPrime, GEPA
(`gepa.optimize` with its default adapter through LiteLLM). The step schedule of the Trainer-style loops is
shared (benchmarks/peers/_labels.py): baseline validation, then steps of one minibatch and one validation
pass while the budget lasts, keeping a new value only if validation does not get worse.

Run through the harness: `python benchmarks/run.py --workloads g [--quick | --tiny]`, or
`python benchmarks/quality.py [same options]`.
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
OPTIMIZERS = [
    ("textopt", "tgd", "textopt TGD (Trainer)"),
    ("textopt", "optoprime", "textopt OptoPrime (Trainer)"),
    ("textopt", "search", "textopt Search"),
    ("textgrad", "tgd", "TextGrad TGD"),
    ("trace", "optoprime", "Trace OptoPrime"),
    ("gepa", "gepa", "GEPA"),
]
TARGET = ("textopt Search's mean test accuracy >= every peer's on every task, and its gain over the seed prompt "
          "has a 95% interval excluding 0 on at least one task")
TEST_SEED = 1000  # the held-out test set: load(task, n=test, seed=1000); training/validation use seed 100 + run seed


def t95(n: int) -> float:
    """Two-sided 95% Student t quantile for n-1 degrees of freedom (small table; normal beyond 30)."""
    table = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306, 10: 2.262}
    return table.get(n, 2.0 if n <= 30 else 1.96)


def mean_ci(xs: list[float]) -> tuple[float | None, list[float] | None]:
    """Mean and 95% t-interval over seeds (None with fewer than 2 values)."""
    if not xs:
        return None, None
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, None
    half = t95(len(xs)) * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, [m - half, m + half]


def routes(server: Any, model: str, tag: str, opt_server: Any = None, opt_model: str | None = None) -> dict[str, Any]:
    """The per-run config keys that say where one optimizer run's calls go. Task calls (forwards, validation):
    route `<tag>-task` of `server`, model `model`. Optimizer calls (losses, gradients, updates, reflections,
    proposals): route `<tag>-opt` of `opt_server`, model `opt_model` (the task server and model when no
    reflection model is given). Every worker reads `model`/`task_url` for its task engine and
    `opt_model`/`opt_url` for its optimizer engine; `base_url` is the optimizer route too, since Trace's
    backend (TRACE_CUSTOMLLM_URL) and the harness's environment read that one."""
    opt_server = opt_server if opt_server is not None else server
    opt_url = opt_server.base_url(tag + "-opt")
    return {"model": model, "opt_model": opt_model or model, "task_url": server.base_url(tag + "-task"),
            "opt_url": opt_url, "base_url": opt_url}


def wl_quality(r: Any, server: Any, model: str, mode: dict[str, Any], engine_desc: str,
               publish: Callable[[dict[str, Any]], None] | None = None, *, opt_server: Any = None,
               opt_model: str | None = None, models: dict[str, str] | None = None) -> dict[str, Any]:
    """(g) on `server` (task model `model`); with opt_server/opt_model every optimizer's calls go there instead
    (a separate reflection model). `models` names them for the tables: {"task": ..., "optimizer": ...}."""
    from run import log
    from textopt import datasets

    q = mode["quality"]
    opt_server = opt_server if opt_server is not None else server
    seed_prompt = datasets.BARE_TEMPLATE
    res: dict[str, Any] = {"engine": engine_desc, "settings": dict(q), "seed_prompt": seed_prompt, "target": TARGET,
                           "data": f"test: load(task, n={q['test']}, seed={TEST_SEED}); train+val: load(task, n=train+val, seed=100+seed)",
                           "tasks": {}}
    if models:
        res["models"] = dict(models)
    for task in q["tasks"]:
        labels = list(datasets.LABELS[task])
        test = [{"question": e.question, "answer": e.answer} for e in datasets.load(task, n=q["test"], seed=TEST_SEED)]
        t_res: dict[str, Any] = {"labels": labels, "runs": [], "optimizers": {}}
        res["tasks"][task] = t_res
        before = _score(r, server, model, task, labels, [seed_prompt], test)[0]
        t_res["before"] = before
        log(f"(g) {task}: seed prompt {before['accuracy']:.2f} on {len(test)} test examples")
        for seed in q["seeds"]:
            data = [{"question": e.question, "answer": e.answer} for e in datasets.load(task, n=q["train"] + q["val"], seed=100 + seed)]
            train, val = data[: q["train"]], data[q["train"]:]
            for name, kind, label in OPTIMIZERS:
                if not r.fw.available(name) or (q.get("optimizers") and label not in q["optimizers"]):
                    continue
                tag = f"q-{task}-{seed}-{name}-{kind}-{r._n}"
                cfg = {"task": task, "labels": labels, "seed": seed, "seed_prompt": seed_prompt, "train": train, "val": val,
                       "budget": q["budget"], "batch": q["batch"], "optimizer": kind,
                       **routes(server, model, tag, opt_server, opt_model),
                       "max_tokens": 24, "opt_max_tokens": mode["max_tokens"]}
                if name == "textopt":  # textopt's worker is the scorer's process: it scores its own final prompt there
                    cfg["score"] = {"model": model, "base_url": server.base_url(f"score-{task}-{r._n}"), "labels": labels,
                                    "test": test, "max_tokens": 24}
                t0 = time.perf_counter()
                out = r.run(name, "quality", cfg, timeout=q.get("timeout", 5400))
                row: dict[str, Any] = {"optimizer": label, "seed": seed, "wall_s": round(time.perf_counter() - t0, 1)}
                if "error" in out or not out.get("available", True):
                    row.update(available=False, reason=(out.get("error") or out.get("reason", ""))[:500])
                else:
                    final = out["final_prompt"]
                    after = out["after_score"] if "after_score" in out else _score(r, server, model, task, labels, [final], test)[0]
                    tu, ou = server.stats(tag + "-task").to_dict(), opt_server.stats(tag + "-opt").to_dict()
                    row.update(available=True, final_prompt=final, before=before["accuracy"], after=after["accuracy"],
                               after_ci95=after["ci95"], task_calls_logical=out.get("task_calls"), budget=q["budget"],
                               task_usage={k: tu[k] for k in ("calls", "prompt_tokens", "completion_tokens", "total_tokens", "models")},
                               optimizer_usage={k: ou[k] for k in ("calls", "prompt_tokens", "completion_tokens", "total_tokens", "models")},
                               steps=out.get("steps", []), how=out.get("how", ""), val_best=out.get("val_best"))
                t_res["runs"].append(row)
                log(f"(g) {task} seed {seed} {label}: " + (f"{row['before']:.2f} -> {row['after']:.2f}, task calls "
                    f"{row['task_usage']['calls']} (logical {row['task_calls_logical']}), optimizer calls {row['optimizer_usage']['calls']}"
                    if row["available"] else f"not available: {row['reason'][:300]}"))
                _aggregate(res)
                if publish is not None:
                    publish(res)
    _aggregate(res)
    return res


def _score(r: Any, server: Any, model: str, task: str, labels: list[str], prompts: list[str], test: list[dict[str, str]]) -> list[dict[str, Any]]:
    """The shared scorer (textopt's worker, one route of the proxy that no budget counts)."""
    tag = f"score-{task}-{r._n}"
    out = r.run("textopt", "score", {"model": model, "base_url": server.base_url(tag), "labels": labels, "prompts": prompts,
                                     "test": test, "max_tokens": 24}, timeout=3600)
    if "error" in out:
        raise RuntimeError(f"scoring failed: {out['error']}")
    return out["scores"]


def merge_quality(earlier: dict[str, Any], now: dict[str, Any], *, keep_tasks: bool) -> dict[str, Any]:
    """(g) of this run with an earlier run's rows kept: a row (task, seed, optimizer) is replaced only by the
    same row run now, so one seed or one optimizer can be re-run alone; with keep_tasks the tasks not run now
    are kept whole. Settings list the tasks and seeds now present; call `_aggregate` on the result."""
    out = json.loads(json.dumps(now))
    for task, prev in earlier.items():
        if task not in out["tasks"]:
            if keep_tasks:
                out["tasks"][task] = prev
            continue
        fresh = {(row.get("seed"), row.get("optimizer")) for row in out["tasks"][task]["runs"]}
        kept = [row for row in prev.get("runs", []) if (row.get("seed"), row.get("optimizer")) not in fresh]
        out["tasks"][task]["runs"] = kept + out["tasks"][task]["runs"]
    seeds = sorted({row["seed"] for t in out["tasks"].values() for row in t.get("runs", [])})
    settings = {k: v for k, v in out["settings"].items() if k != "optimizers"}  # the merged rows cover more than a re-run's choice
    out["settings"] = {**settings, "tasks": list(out["tasks"]), "seeds": seeds or out["settings"]["seeds"]}
    return out


def _aggregate(res: dict[str, Any]) -> None:
    for task, t in res["tasks"].items():
        by: dict[str, list[dict[str, Any]]] = {}
        for row in t["runs"]:
            by.setdefault(row["optimizer"], []).append(row)
        t["optimizers"] = {}
        for label, rows in by.items():
            ok = [x for x in rows if x.get("available")]
            if not ok:
                t["optimizers"][label] = {"available": False, "reason": rows[0].get("reason", "")}
                continue
            after, ci = mean_ci([x["after"] for x in ok])
            gain, gain_ci = mean_ci([x["after"] - x["before"] for x in ok])
            # With few seeds a t-interval runs past what an accuracy can be: clip it to the possible range.
            ci = [max(0.0, ci[0]), min(1.0, ci[1])] if ci else ci
            gain_ci = [max(-1.0, gain_ci[0]), min(1.0, gain_ci[1])] if gain_ci else gain_ci
            t["optimizers"][label] = {
                "available": True, "seeds": len(ok), "before": ok[0]["before"], "after_mean": after, "after_ci95": ci,
                "gain_mean": gain, "gain_ci95": gain_ci,
                "task_calls": statistics.fmean(x["task_usage"]["calls"] for x in ok),
                "task_tokens": statistics.fmean(x["task_usage"]["total_tokens"] for x in ok),
                "optimizer_calls": statistics.fmean(x["optimizer_usage"]["calls"] for x in ok),
                "optimizer_tokens": statistics.fmean(x["optimizer_usage"]["total_tokens"] for x in ok),
                "wall_s": statistics.fmean(x["wall_s"] for x in ok),
                "final_prompts": [x["final_prompt"] for x in ok],
            }
    search = {task: t["optimizers"].get("textopt Search", {}) for task, t in res["tasks"].items()}
    if all(s.get("available") for s in search.values()) and search:
        beats = all(
            search[task]["after_mean"] >= o["after_mean"] - 1e-9
            for task, t in res["tasks"].items() for label, o in t["optimizers"].items() if o.get("available") and not label.startswith("textopt")
        )
        gain = any(s["gain_ci95"] is not None and s["gain_ci95"][0] > 0 for s in search.values())
        res["met_peers"], res["met_gain"], res["met"] = beats, gain, beats and gain
    else:
        res.pop("met", None)


def plot(res: dict[str, Any], path: Path) -> Path | None:
    """Test accuracy after optimization per optimizer (mean over seeds, 95% interval), the seed prompt's as a line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    tasks = [t for t, v in res["tasks"].items() if v.get("optimizers")]
    if not tasks:
        return None
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        t = res["tasks"][task]
        rows = [(k, v) for k, v in t["optimizers"].items() if v.get("available")]
        xs = range(len(rows))
        means = [v["after_mean"] for _, v in rows]
        err = [[(v["after_mean"] - v["after_ci95"][0]) if v["after_ci95"] else 0 for _, v in rows],
               [(v["after_ci95"][1] - v["after_mean"]) if v["after_ci95"] else 0 for _, v in rows]]
        ax.bar(xs, means, yerr=err, capsize=4, color="#4c72b0")
        ax.axhline(t["before"]["accuracy"], color="k", ls="--", label="seed prompt")
        ax.set_xticks(list(xs), [k.replace(" (Trainer)", "\n(Trainer)") for k, _ in rows], rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{task} (test n={t['before']['n']}, seeds={max((v['seeds'] for _, v in rows), default=0)})")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def _ci(ci: list[float] | None, signed: bool = False) -> str:
    if not ci:
        return "(1 seed: no interval)"
    f = (lambda v: f"{100 * v:+.0f}") if signed else (lambda v: f"{100 * v:.0f}")
    return f"[{f(ci[0])}, {f(ci[1])}]"


def checkout_line(rows: list[dict[str, Any]]) -> str:
    """Which code the rows ran on ("0.1.0 (git abc1234)": row count), for tables merged from several runs."""
    counts = Counter(row.get("checkout", "not recorded (run before rows kept it)") for row in rows)
    return "Code the rows ran on: " + "; ".join(f"{k}: {n} row{'s' if n != 1 else ''}" for k, n in sorted(counts.items())) + "."


def markdown(res: dict[str, Any], plot_name: str | None = None) -> list[str]:
    s = res["settings"]
    L = [f"### (g) quality at equal budget ({res['engine']})", "",
         f"Seed prompt `{res['seed_prompt']}` for everyone; budget {s['budget']} task-model calls (train forwards + "
         f"validation), minibatch {s['batch']}, {s['train']} train / {s['val']} validation examples per seed, seeds "
         f"{s['seeds']}; test accuracy on {s['test']} held-out examples ({res['data']}), scored by one shared scorer "
         "(template in the user turn, greedy, 24 tokens, exactly-one-label metric). Means over seeds with 95% t-intervals; "
         "task-model and optimizer usage counted at the server (mean per run).", ""]
    if res.get("models"):  # a separate reflection model (--reflect-gguf): say which model did what
        m = res["models"]
        L += [f"**Models.** Task model (forwards, validation, the test scorer): {m['task']}. Reflection/optimizer model "
              f"(every optimizer's losses, gradients, updates, proposals and reflections): {m['optimizer']}. Each runs in "
              "its own llama.cpp server behind its own counting proxy; the optimizer calls and tokens below are the "
              "reflection server's, the task calls and tokens the task server's.", ""]
    spread = HERE / "spread.json"
    if spread.is_file():  # why these tasks: the prompt moves accuracy a lot here (benchmarks/prompt_spread.py)
        import json

        from prompt_spread import markdown as spread_md

        L += ["**Why these tasks: the prompt matters.** A bare prompt against hand-written instruction templates "
              "(each in the user turn around the input), n=100 per prompt; `python benchmarks/prompt_spread.py`:", "",
              spread_md(json.loads(spread.read_text(encoding="utf-8"))), ""]
    for task, t in res["tasks"].items():
        b = t.get("before", {})
        L += [f"**{task}** — seed prompt: {_pct(b.get('accuracy'))} on the test set "
              f"(95% Wilson {_pct(b.get('ci95', [None])[0])}–{_pct(b.get('ci95', [None, None])[1])}).", "",
              "| optimizer | seeds | test after | gain over seed | task calls | task tokens | optimizer calls | optimizer tokens | wall s | final prompt (first seed) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
        for label, o in t["optimizers"].items():
            if not o.get("available"):
                L.append(f"| {label} | not available | — | — | — | — | — | — | — | {o['reason'][:140].replace('|', '/')} |")
                continue
            fp = o["final_prompts"][0].replace("\n", "⏎").replace("|", "/")[:120]
            L.append(f"| {label} | {o['seeds']} | {_pct(o['after_mean'])} {_ci(o['after_ci95'])} | {100 * o['gain_mean']:+.0f} pts "
                     f"{_ci(o['gain_ci95'], True) if o['gain_ci95'] else ''} | {o['task_calls']:.0f} | {o['task_tokens']:,.0f} | "
                     f"{o['optimizer_calls']:.0f} | {o['optimizer_tokens']:,.0f} | {o['wall_s']:.0f} | `{fp}` |")
        L.append("")
        moved = [row for row in sorted(t.get("runs", []), key=lambda r: (r["optimizer"], r["seed"]))
                 if row.get("available") and row["after"] != row["before"]]
        if moved:  # the runs that changed test accuracy, each with its final prompt: a gain may be a degenerate prompt
            L += [f"Runs that changed test accuracy on {task} (per seed, with the final prompt):", ""]
            L += [f"- {row['optimizer']}, seed {row['seed']}: {_pct(row['before'])} → {_pct(row['after'])}, "
                  f"`{row['final_prompt'].replace(chr(10), '⏎').replace('`', chr(39))[:220]}`" for row in moved]
            L.append("")
    L += [checkout_line([row for t in res["tasks"].values() for row in t.get("runs", [])]), ""]
    if plot_name:
        L += [f"![test accuracy per optimizer]({plot_name})", ""]
    if "met" in res:
        L += [f"Target: {res['target']}: {'**met**' if res['met'] else '**missed**'}.", ""]
    else:
        L += [f"Target: {res['target']}: not measured (textopt Search has no result in this run).", ""]
    return L


def missed(res: dict[str, Any]) -> list[str]:
    """Notes for BENCHMARKS.md: every missed or unmeasured part of the (g) target, with the figures."""
    notes = []
    for task, t in res["tasks"].items():
        for label, o in t["optimizers"].items():
            if not o.get("available"):
                notes.append(f"(g) {task}: {label} did not run: {o['reason'][:300]}")
    if res.get("met") is False:
        parts = []
        for task, t in res["tasks"].items():
            parts.append(f"{task}: " + ", ".join(f"{k} {_pct(v['after_mean'])}" for k, v in t["optimizers"].items() if v.get("available")))
        notes.append("(g) target missed: " + "; ".join(parts)
                     + f" (gain interval excludes 0 for Search on some task: {res.get('met_gain')}; Search >= every peer: {res.get('met_peers')}).")
    elif "met" not in res and res["tasks"]:
        notes.append("(g) the target was not measured: textopt Search has no result in this run.")
    return notes


def main(argv: list[str] | None = None) -> int:
    """`python benchmarks/quality.py [run.py options]` = `python benchmarks/run.py --workloads g [...]`."""
    sys.path.insert(0, str(HERE))
    import run

    return run.main(["--workloads", "g", *list(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
