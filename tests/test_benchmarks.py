"""The benchmark harness runs (tiny mode, textopt only, latency engine on 127.0.0.1, no peers, no model),
so it can't rot; and what it measures about textopt holds: concurrent fan-in, bounded OptoPrime prompts,
valid updates, a second identical run served by the cache, the quality workload's budget, and evaluation
that really runs c requests at a time."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench")
    # Another engineer's section must survive the regeneration of the harness section.
    (out / "BENCHMARKS.md").write_text(
        "# Benchmarks\n\n<!-- harness:start -->\nold figures\n<!-- harness:end -->\n\n## Training loop\n\nkeep me\n"
    )
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--only", "textopt", "--tiny",
           "--out", str(out), "--cache", str(out / "cache")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((out / "results.json").read_text()), (out / "BENCHMARKS.md").read_text()


def test_results_structure(tiny_run):
    res, _ = tiny_run
    assert res["meta"]["mode"] == "tiny"
    assert set(res["meta"]["frameworks"]) == {"textopt"}
    assert set(res["workloads"]) == {"timing", "prompt_size", "import", "valid_updates", "end_to_end", "cache_rerun",
                                     "quality", "throughput"}


def test_fanin_backward_is_concurrent(tiny_run):
    a = tiny_run[0]["workloads"]["timing"]["frameworks"]["textopt"]
    fan, chain = a["fanin"], a["chain"]
    assert fan["all_updated"] and chain["all_updated"]
    # 8 forward + 8 loss + 16 gradient calls + the update: all reach the server
    assert fan["calls_per_run"] >= 33 and chain["calls_per_run"] >= 22
    assert fan["max_in_flight"] >= 4  # gradient calls overlap
    # Sequential gradient calls would make the fan-in (17 calls) ~1.4x the chain (12 calls, sequential by
    # nature); concurrent ones make it ~0.5-0.75x. 1.2x leaves room for a loaded machine.
    assert fan["median_s"] < 1.2 * chain["median_s"], (fan, chain)


def test_optoprime_prompt_is_measured_and_bounded(tiny_run):
    b = tiny_run[0]["workloads"]["prompt_size"]["frameworks"]["textopt"]
    assert b["10"]["available"] and b["100"]["available"], b
    assert b["10"]["step_calls"] == 1 and b["100"]["step_calls"] == 1  # one update call per step
    # Trace sends ~20,000 characters at 100 nodes; textopt's target is <= 40% of that
    assert 0 < b["100"]["step_prompt_chars"] <= 8000, b


def test_import_time_is_measured(tiny_run):
    c = tiny_run[0]["workloads"]["import"]["frameworks"]["textopt"]
    assert len(c["runs_s"]) == 3 and 0 < c["median_s"] < 2.0


def test_updates_are_valid_and_rerun_hits_the_cache(tiny_run):
    w = tiny_run[0]["workloads"]
    for label in ("textopt TGD", "textopt OptoPrime"):
        d = w["valid_updates"]["optimizers"][label]
        assert d["available"] and d["rate"] == 1.0, d
        assert d["error_counts"] == {}  # failure reasons are counted; none here
        e = w["end_to_end"]["optimizers"][label]
        assert e["available"] and e["tokens"]["calls"] > 0 and 0 <= e["accuracy_after"] <= 1
        f = w["cache_rerun"]["optimizers"][label]
        assert f["calls_first"] > 0 and f["calls_second"] == 0 and f["identical"], f
    assert w["cache_rerun"]["met"] is True


def test_markdown_section_replaced_and_others_kept(tiny_run):
    _, md = tiny_run
    assert "old figures" not in md
    assert md.count("<!-- harness:start -->") == 1 and md.count("<!-- harness:end -->") == 1
    assert "## Training loop\n\nkeep me" in md
    assert "| textopt | `import textopt` |" in md
    assert "python benchmarks/run.py --only textopt --tiny" in md
    assert "### (g) quality at equal budget" in md and "### (h) evaluation throughput" in md


def test_throughput_runs_c_requests_at_a_time(tiny_run):
    h = tiny_run[0]["workloads"]["throughput"]
    t = h["frameworks"]["textopt"]
    assert t["available"], t
    n = h["n"]
    for c, row in t["levels"].items():
        assert row["calls"] == n and row["scored"] == n and row["errors"] == 0, (c, row)
        assert row["max_in_flight"] <= int(c)
    assert t["levels"]["1"]["max_in_flight"] == 1
    # the level is real, not a serial loop (how close to 32 it gets depends on the machine's load)
    assert t["levels"]["32"]["max_in_flight"] >= 8 and t["levels"]["64"]["max_in_flight"] >= 8
    # the raw-client floor ran the same requests in the same run, and textopt's multiple of it is there
    raw = h["raw"]
    assert raw["available"] and "aiohttp" in raw["how"], raw
    for c, row in raw["levels"].items():
        assert row["calls"] == n and row["scored"] == n and row["errors"] == 0 and row["max_in_flight"] <= int(c), (c, row)
        assert t["levels"][c]["x_raw"] > 0
    assert "| raw client (floor) |" in tiny_run[1] and "textopt / raw: c=1: " in tiny_run[1]


def test_throughput_keeps_rows_of_frameworks_not_run_now(monkeypatch):
    """`--only textopt --workloads h` keeps the peers' earlier (h) rows, marked, without a raw multiple."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the workload logs through the harness (run.py)
    throughput = _bench_module("throughput")
    row = {"available": True, "how": "pool", "levels": {"8": {"seconds": 8.0, "per_second": 125.0, "x_limit": 1.28,
                                                              "max_in_flight": 8}}}

    class Fw:
        def available(self, name: str) -> bool:
            return False  # nothing runs now but the floor

    class R:
        fw, _n = Fw(), 0

        def run(self, name, workload, cfg, timeout):
            return {"available": True, "how": "bare", "runs": [{"concurrency": 8, "seconds": 7.0, "scored": 40}]}

    class Lat:
        latency = 0.05

        def base_url(self, run_id):
            return "http://127.0.0.1:9/run/x/v1"

        def stats(self, run_id):
            return type("S", (), {"calls": 40, "max_in_flight": 8})()

    earlier = {"n": 40, "latency_s": 0.05, "frameworks": {"textgrad": row, "dspy": {"available": False, "reason": "x"}}}
    res = throughput.wl_throughput(R(), Lat(), {"throughput_n": 40, "throughput_levels": [8]}, earlier=earlier)
    assert res["raw"]["levels"]["8"]["seconds"] == 7.0
    assert res["frameworks"] == {"textgrad": {**row, "earlier_run": True}}  # kept as it was, no x_raw
    md = "\n".join(throughput.markdown(res))
    assert "| TextGrad (earlier run) | pool | 8.00 s (1.28× limit, peak 8) |" in md and "| raw client (floor) |" in md


def test_quality_keeps_the_budget_and_scores_the_final_prompt(tiny_run):
    g = tiny_run[0]["workloads"]["quality"]
    runs = g["tasks"]["sentiment"]["runs"]
    tgd = next(r for r in runs if r["optimizer"] == "textopt TGD (Trainer)")
    assert tgd["available"], tgd
    assert tgd["task_calls_logical"] <= tgd["budget"] and tgd["task_usage"]["calls"] <= tgd["budget"]
    assert tgd["optimizer_usage"]["calls"] > 0  # gradients and updates went to the optimizer route
    assert tgd["final_prompt"].strip() and 0 <= tgd["before"] <= 1 and 0 <= tgd["after"] <= 1
    assert g["tasks"]["sentiment"]["before"]["n"] == g["settings"]["test"]
    # each row names the code it ran on, so a table merged from several runs can be checked against main
    version = tiny_run[0]["meta"]["frameworks"]["textopt"]["version"]
    assert all(r["checkout"] == version for r in runs) and "(git " in version
    assert all(r["checkout"] == version for r in tiny_run[0]["workloads"]["valid_updates"]["optimizers"].values())
    assert f"Code the rows ran on: {version}: {len(runs)} rows." in tiny_run[1]


def test_checkout_line_counts_rows_per_code():
    quality = _bench_module("quality")
    rows = [{"checkout": "0.1 (git b)"}, {"checkout": "0.1 (git a)"}, {"checkout": "0.1 (git b)"}, {}]
    assert quality.checkout_line(rows) == ("Code the rows ran on: 0.1 (git a): 1 row; 0.1 (git b): 2 rows; "
                                           "not recorded (run before rows kept it): 1 row.")


def test_bad_arguments_are_named():
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--only", "nosuch", "--tiny"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "nosuch" in p.stderr and "textopt" in p.stderr and "gepa" in p.stderr
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--workloads", "g,z", "--tiny"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "'z'" in p.stderr
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--optimizers", "textopt Nope", "--tiny"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "textopt Nope" in p.stderr and "textopt Search" in p.stderr
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--gguf", "/nonexistent/model.gguf", "--tiny"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "/nonexistent/model.gguf" in p.stderr
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--gguf", __file__, "--tiny"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--gguf needs --out" in p.stderr  # another model's figures never merge into the repo's


def _bench_module(name: str):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        return __import__(name)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def _row(opt: str, seed: int, after: float) -> dict:
    usage = {"calls": 1, "total_tokens": 1}
    return {"optimizer": opt, "seed": seed, "available": True, "before": 0.1, "after": after, "final_prompt": "p",
            "task_usage": usage, "optimizer_usage": usage, "wall_s": 1.0}


def test_quality_merge_replaces_only_the_rows_run_again():
    """`run.py --seeds 1` or `--optimizers X` after a full (g): the rows not run now survive, a re-run row
    replaces its old self, and the aggregate is over the merged seeds."""
    quality = _bench_module("quality")
    earlier = {"sentiment": {"runs": [_row("A", 0, 0.2), _row("B", 0, 0.3)]},
               "categories": {"runs": [_row("A", 0, 0.5)]}}
    now = {"settings": {"seeds": [1], "optimizers": ["A"]},
           "tasks": {"sentiment": {"runs": [_row("A", 0, 0.4), _row("A", 1, 0.6)]}}}
    out = quality.merge_quality(earlier, now, keep_tasks=False)
    rows = {(r["optimizer"], r["seed"]): r["after"] for r in out["tasks"]["sentiment"]["runs"]}
    assert rows == {("A", 0): 0.4, ("A", 1): 0.6, ("B", 0): 0.3}
    assert "categories" not in out["tasks"] and out["settings"]["seeds"] == [0, 1]
    assert "optimizers" not in out["settings"]  # the merged rows are more than the re-run's choice
    assert now["tasks"]["sentiment"]["runs"][0]["after"] == 0.4 and len(now["tasks"]["sentiment"]["runs"]) == 2  # not mutated
    quality._aggregate(out)
    a = out["tasks"]["sentiment"]["optimizers"]["A"]
    assert a["seeds"] == 2 and abs(a["after_mean"] - 0.5) < 1e-9
    assert 0.0 <= a["after_ci95"][0] and a["after_ci95"][1] <= 1.0  # 2 seeds: the t-interval is clipped to [0, 1]
    kept = quality.merge_quality(earlier, now, keep_tasks=True)
    assert kept["tasks"]["categories"] == earlier["categories"] and kept["settings"]["tasks"] == ["sentiment", "categories"]


def test_valid_update_merge_keeps_the_other_optimizers_of_the_same_length():
    run = _bench_module("run")
    mode = run.MODES["full"]
    old = run._valid_results({"textopt TGD": {"available": True, "rate": 0.9}, "TextGrad TGD": {"available": True, "rate": 1.0}},
                             mode, "engine")
    now = run._valid_results({"TextGrad TGD": {"available": True, "rate": 0.5}}, mode, "engine")
    merged = run.merge_valid(old, now, mode)
    assert {k: v["rate"] for k, v in merged["optimizers"].items()} == {"textopt TGD": 0.9, "TextGrad TGD": 0.5}
    assert merged["met"] is False  # textopt TGD's 90% is still judged
    shorter = {**old, "steps": 3}
    assert run.merge_valid(shorter, now, mode) == now  # a run of another length is not mixed in


def test_search_selection_keeps_the_candidate_that_works():
    """benchmarks/search_selection.py: with a scripted proposer offering the hand-written templates, Search
    keeps the one template the (scripted) task model answers correctly under, within the budget."""
    import asyncio

    from textopt import datasets
    from textopt.engines.scripted import ScriptedEngine

    ss = _bench_module("search_selection")
    task = "categories"
    truth = {e.question: e.answer for e in datasets.load(task, n=40, seed=100) + datasets.load(task, n=100, seed=1000)}

    def reply(messages):
        text = messages[-1]["content"]
        q = next((q for q in truth if q in text), None)
        return truth[q] if q and "Category (fruit" in text else "I like it"  # only the label-line template works

    row = asyncio.run(ss.one_run(ScriptedEngine(reply), task, 0, datasets.load(task, n=100, seed=1000)))
    assert row["final_prompt"] == datasets.TEMPLATES[task]["label-line"] and row["after"] == 1.0
    assert row["metric_calls"] <= ss.BUDGET + ss.VAL  # the budget is checked between iterations
    assert sorted(row["order"]) == sorted(t for k, t in datasets.TEMPLATES[task].items() if k != "bare")


def test_reflect_gguf_needs_out_and_an_existing_model(tmp_path):
    """--reflect-gguf (a separate optimizer model) is refused without --out (its figures must not merge into the
    repo's tables) and with a model file that isn't there, before anything is started."""
    run_py = str(ROOT / "benchmarks" / "run.py")
    p = subprocess.run([sys.executable, run_py, "--workloads", "g", "--reflect-gguf", __file__],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--reflect-gguf needs --out" in p.stderr, p.stderr
    p = subprocess.run([sys.executable, run_py, "--workloads", "g", "--reflect-gguf", "/nonexistent/reflect.gguf",
                        "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "/nonexistent/reflect.gguf" in p.stderr, p.stderr
    p = subprocess.run([sys.executable, run_py, "--workloads", "e", "--reflect-gguf", __file__, "--out", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "(d) and (g)" in p.stderr, p.stderr
    assert not (tmp_path / "results.json").exists()


class _Srv:
    def __init__(self, port: int) -> None:
        self.port = port

    def base_url(self, run_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/run/{run_id}/v1"


def test_run_configs_send_optimizer_calls_to_the_reflection_model(monkeypatch, tmp_path):
    """The per-run configs of (g) and (d): task calls to the task server as the task model, optimizer calls to
    the reflection server as its model; `base_url` (Trace's backend) is the optimizer route; and the worker's
    environment names the optimizer's model for Trace. Without a reflection model nothing changes."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    quality, run = _bench_module("quality"), _bench_module("run")
    task, opt = _Srv(1), _Srv(2)
    cfg = quality.routes(task, "smollm2", "q-1", opt, "reflect")
    assert cfg == {"model": "smollm2", "opt_model": "reflect", "task_url": "http://127.0.0.1:1/run/q-1-task/v1",
                   "opt_url": "http://127.0.0.1:2/run/q-1-opt/v1", "base_url": "http://127.0.0.1:2/run/q-1-opt/v1"}
    one = quality.routes(task, "smollm2", "q-1")
    assert one["opt_model"] == "smollm2" and one["opt_url"] == "http://127.0.0.1:1/run/q-1-opt/v1" == one["base_url"]

    mode = run.MODES["tiny"]
    d = run.valid_config(task, "smollm2", "v-1", mode, "tgd", [], opt, "reflect")
    assert (d["model"], d["opt_model"]) == ("smollm2", "reflect")
    assert d["task_url"] == task.base_url("v-1-task") and d["opt_url"] == d["base_url"] == opt.base_url("v-1")
    plain = run.valid_config(task, "smollm2", "v-1", mode, "tgd", [])
    assert plain["base_url"] == task.base_url("v-1") and not {"task_url", "opt_url", "opt_model"} & set(plain)

    seen = {}

    def fake_run(cmd, **kw):
        seen.update(kw["env"])
        return subprocess.CompletedProcess(cmd, 0, 'BENCH_RESULT {"available": true}\n', "")

    fw = run.Frameworks(Path("/nonexistent"), ["trace"])
    fw.python["trace"] = sys.executable
    monkeypatch.setattr(run.subprocess, "run", fake_run)
    r = run.Runner(fw, tmp_path)
    r.run("trace", "quality", cfg, cache_dir=tmp_path)
    assert seen["TRACE_CUSTOMLLM_MODEL"] == "reflect" and seen["TRACE_CUSTOMLLM_URL"] == cfg["opt_url"]


def test_textopt_worker_uses_the_reflection_server(monkeypatch, tmp_path):
    """(g) and (d) through the real textopt worker, two latency engines standing in for the task model and
    the reflection model: every optimizer call reaches the reflection server asking for its model, every task
    call the task server, and the rows' optimizer usage is the reflection server's count."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    run, quality = _bench_module("run"), _bench_module("quality")
    from bench_servers import LatencyServer

    mode = {**run.MODES["tiny"], "optimizers": ["textopt TGD"]}
    mode["quality"] = {**mode["quality"], "optimizers": ["textopt TGD (Trainer)"]}
    fw = run.Frameworks(tmp_path, ["textopt"])
    r = run.Runner(fw, tmp_path)
    with LatencyServer(0.0) as task, LatencyServer(0.0) as opt:
        g = quality.wl_quality(r, task, "latency", mode, "two engines", opt_server=opt, opt_model="reflect",
                               models={"task": "T", "optimizer": "R"})
        row = g["tasks"]["sentiment"]["runs"][0]
        assert row["available"], row
        assert row["optimizer_usage"]["calls"] > 0 and row["optimizer_usage"]["models"] == {"reflect": row["optimizer_usage"]["calls"]}
        assert row["task_usage"]["calls"] > 0 and row["task_usage"]["models"] == {"latency": row["task_usage"]["calls"]}
        opt_runs = {k for k in opt.acct.runs}
        assert opt_runs and all(k.endswith("-opt") for k in opt_runs)  # nothing but optimizer routes on the reflection server
        assert not any(k.endswith("-opt") for k in task.acct.runs)
        assert "Reflection/optimizer model (every optimizer's losses" in "\n".join(quality.markdown(g))

        d = run.wl_valid_updates(r, task, "latency", mode, "two engines", opt_server=opt, opt_model="reflect")
        row = d["optimizers"]["textopt TGD"]
        assert row["available"] and row["valid"] == row["steps"], row
        assert row["usage"]["calls"] > 0 and row["usage"]["models"] == {"reflect": row["usage"]["calls"]}
        assert row["task_usage"]["calls"] > 0 and row["task_usage"]["models"] == {"latency": row["task_usage"]["calls"]}
        assert "| task calls |" in run.render_markdown({"meta": {"mode": "tiny", "finished": "", "command": "x", "machine": "m",
                                                                 "noise": "", "frameworks": {}, "commands": []},
                                                        "workloads": {"valid_updates": d}})


def test_detector_spread_writes_consistent_metrics(tmp_path):
    """benchmarks/detector_spread.py on the fake engine: every prompt scored on the same stratified sample,
    results.json and table.md written, and each rate agrees with its confusion matrix and with textopt's
    DetectorReport; the first prompt is the paired baseline (difference 0)."""
    ds = _bench_module("detector_spread")
    out = tmp_path / "ds"
    assert ds.main(["--engine", "fake", "--n", "6", "--seed", "0", "--bootstrap", "200", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    table = (out / "table.md").read_text()
    assert res["data"]["n_scored"] == 6 and set(res["data"]["labels"]) == {"malicious", "benign"}
    assert len(res["prompts"]) >= 4 and res["meta"]["baseline"] == res["prompts"][0]["name"]
    for r in res["prompts"]:
        assert not r["error"] and f"| {r['name']} |" in table
        m, c = r["metrics"], r["metrics"]["confusion"]
        assert c["tp"] + c["fn"] + c["tn"] + c["fp"] + c["unparsed_malicious"] + c["unparsed_benign"] == 6
        assert c["tp"] + c["fn"] + c["unparsed_malicious"] == res["data"]["labels"]["malicious"]
        tpr = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 0.0
        tnr = c["tn"] / (c["tn"] + c["fp"]) if c["tn"] + c["fp"] else 0.0
        prec = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
        f1 = 2 * prec * tpr / (prec + tpr) if prec + tpr else 0.0
        assert m["tpr"] == pytest.approx(tpr, abs=1e-4) and m["tnr"] == pytest.approx(tnr, abs=1e-4)
        assert m["f1"] == pytest.approx(f1, abs=1e-4)
        assert m["balanced_accuracy"] == pytest.approx((tpr + tnr) / 2, abs=1e-4)
        rep = r["report"]  # textopt's own DetectorReport of the same run
        assert (rep["tp"], rep["fn"], rep["tn"], rep["fp"]) == (c["tp"], c["fn"], c["tn"], c["fp"])
        assert rep["tpr"] == pytest.approx(m["tpr"], abs=1e-4) and rep["f1"] == pytest.approx(m["f1"], abs=1e-4)
        for key in ("tpr", "tnr"):  # Wilson intervals hold their estimate
            lo, hi = m[f"{key}_ci95"]
            assert 0.0 <= lo <= m[key] + 1e-9 and m[key] - 1e-9 <= hi <= 1.0, (key, m)
        for key in ("f1", "balanced_accuracy"):  # percentile bootstrap intervals need not
            lo, hi = m[f"{key}_ci95"]
            assert 0.0 <= lo <= hi <= 1.0, (key, m)
        assert [x["id"] for x in r["cases"]] == res["data"]["ids"]  # the same texts for every prompt
        assert r["usage"]["calls"] + r["usage"]["cached_calls"] == 6 and r["usage"]["total_tokens"] > 0
    first = res["prompts"][0]["metrics"]["vs_first"]
    assert first["balanced_accuracy_diff"] == 0 and first["ci95"] == [0, 0]


def test_detector_spread_leaves_unparsed_replies_out_and_counts_them():
    """An unreadable decision (None) is out of the rates and counted per label; the strict balanced accuracy
    scores it wrong; the paired difference uses the same resamples for both prompts."""
    ds = _bench_module("detector_spread")
    labels = ["malicious"] * 3 + ["benign"] * 2
    base = [True, True, False, False, False]
    other = [True, None, True, None, True]
    rows = ds.summarize(labels, [base, other], 300, 0)
    c = rows[1]["confusion"]
    assert (c["tp"], c["fn"], c["tn"], c["fp"], c["unparsed_malicious"], c["unparsed_benign"]) == (2, 0, 0, 1, 1, 1)
    assert rows[1]["tpr"] == 1.0 and rows[1]["tnr"] == 0.0 and rows[1]["balanced_accuracy"] == 0.5
    assert rows[1]["balanced_accuracy_strict"] == pytest.approx((2 / 3 + 0) / 2, abs=1e-4)
    assert rows[0]["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2, abs=1e-4)
    v = rows[1]["vs_first"]
    assert v["balanced_accuracy_diff"] == pytest.approx(0.5 - 5 / 6, abs=1e-4)
    assert -1.0 <= v["ci95"][0] <= v["ci95"][1] <= 1.0 and 0.0 <= v["share_of_resamples_le_0"] <= 1.0
    assert (v["only_this_right"], v["only_first_right"]) == (1, 1)  # texts 3 and 5, readable in both
