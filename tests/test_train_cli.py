"""The CLI run lifecycle in real subprocesses: a run SIGKILLed mid-way resumes with `textopt resume` to the
same result as an uninterrupted run on the same cache; --json logs; budgets; `textopt report`."""
from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASE = ["--engine", "scripted", "--latency", "0.03", "--task", "object_counting", "--optimizer", "tgd"]  # the Trainer path
ARGS = [*BASE, "--steps", "6", "--batch-size", "2", "--eval-size", "4", "--val-size", "3"]


def textopt(*args: str, cache: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "TEXTOPT_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "textopt", *args], env=env, capture_output=True, text=True, timeout=120,
                          cwd=kw.get("cwd", ROOT))


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def cache_entries(cache: Path) -> int:
    """Entries, not the `.tmp-*.json` a SIGKILL in the middle of a cache write leaves (pathlib's glob matches dotfiles)."""
    return len([p for p in cache.glob("*/*.json") if not p.name.startswith(".")])


def kill_mid_run(run: Path, cache: Path, after_steps: int, extra_delay: float) -> None:
    env = {**os.environ, "TEXTOPT_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "textopt", "optimize", *ARGS, "--out", str(run), "--json"],
                            env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    seen = 0
    for line in proc.stdout:
        ev = json.loads(line)
        if ev["event"] == "step" and ev["step"] > 0:
            seen += 1
            if seen >= after_steps:
                break
    time.sleep(extra_delay)  # land somewhere inside the next step
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.parametrize("after_steps,delay", [(1, 0.0), (3, 0.07)])
def test_sigkilled_run_resumes_to_the_same_result(tmp_path, after_steps, delay):
    cache = tmp_path / "cache"
    run = tmp_path / "run"
    kill_mid_run(run, cache, after_steps, delay)
    saved = json.loads((run / "checkpoint.json").read_text())
    assert after_steps <= saved["step"] < 6 and saved["stopped"] is None
    entries_at_kill = cache_entries(cache)

    resumed = textopt("resume", str(run), "--json", cache=cache)
    assert resumed.returncode == 0, resumed.stderr
    ev = events(resumed.stdout)
    assert ev[0] == {"event": "start", "step": saved["step"], "total_steps": 6, "resumed": True, "run_dir": str(run)}
    result = ev[-1]
    assert result["event"] == "result" and result["stopped"] == "completed" and result["steps"] == 6
    assert result["tokens"]["cached_calls"] > 0  # the initial test scoring and the killed step came from the cache
    entries_after_resume = cache_entries(cache)
    assert entries_after_resume >= entries_at_kill

    fresh = textopt("optimize", *ARGS, "--out", str(tmp_path / "again"), "--json", cache=cache)
    assert fresh.returncode == 0, fresh.stderr
    again = events(fresh.stdout)[-1]
    assert again["tokens"]["calls"] == 0  # nothing of an uninterrupted run is asked again: all cached
    assert cache_entries(cache) == entries_after_resume
    for key in ("final_prompt", "accuracy_before", "accuracy_after", "rejected_steps", "best_val", "steps"):
        assert result[key] == again[key], key
    rows = lambda d: [(r["step"], r["train"], r["val"], r["accepted"]) for r in json.loads((d / "history.json").read_text())["rows"]]  # noqa: E731
    assert rows(run) == rows(tmp_path / "again")

    # and an uninterrupted run in a fresh cache makes exactly the same set of requests
    solo_cache = tmp_path / "solo-cache"
    solo = textopt("optimize", *ARGS, "--out", str(tmp_path / "solo"), "--json", cache=solo_cache)
    assert events(solo.stdout)[-1]["final_prompt"] == result["final_prompt"]
    assert cache_entries(solo_cache) == entries_after_resume


def test_json_mode_budget_stop_resume_with_new_budget_and_report(tmp_path):
    cache = tmp_path / "cache"
    run = tmp_path / "run"
    out = textopt("optimize", *ARGS, "--budget-calls", "30", "--out", str(run), "--json", cache=cache)
    assert out.returncode == 0, out.stderr
    ev = events(out.stdout)  # every line is JSON
    assert ev[1] == {"event": "phase", "phase": "test_before", "what": "scoring the initial prompt on 4 held-out examples",
                     "total": 4}  # each long stretch of work is announced (the display's heartbeat names it)
    ev = [e for e in ev if e["event"] != "phase"]
    kinds = [e["event"] for e in ev]
    assert kinds[:3] == ["start", "eval", "eval"] and kinds[3] == "step" and ev[-1]["event"] == "result"
    assert [e["name"] for e in ev[1:3]] == ["test_before", "val_step0"]  # every evaluation report is an event
    assert ev[-1]["stopped"] == "budget_calls" and ev[-1]["steps"] < 6
    saved = json.loads((run / "checkpoint.json").read_text())
    assert saved["stopped"] == "budget_calls" and saved["step"] == ev[-1]["steps"]
    assert (run / "result.json").exists() and (run / "parameters.json").exists()

    more = textopt("resume", str(run), "--budget-calls", "100000", "--json", cache=cache)
    assert more.returncode == 0, more.stderr
    assert events(more.stdout)[-1]["stopped"] == "completed" and events(more.stdout)[-1]["steps"] == 6

    rep = textopt("report", str(run), cache=cache)
    assert rep.returncode == 0, rep.stderr
    assert "6 step(s), stopped: completed" in rep.stdout and "parameter system_prompt" in rep.stdout
    assert (run / "report.txt").read_text().strip() == rep.stdout.strip()
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_text_mode_prints_before_after_tokens_and_prompt_and_saves_the_run_by_default(tmp_path):
    out = textopt("optimize", *BASE, "--steps", "2", cache=tmp_path / "cache", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for needle in ("accuracy before:", "accuracy after:", "tokens:", "final prompt:"):
        assert needle in out.stdout
    assert "step 1:" in out.stderr and "\r" not in out.stderr  # no progress bar when not a terminal
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "checkpoint.json").exists() and (runs[0] / "result.json").exists()
    assert f"textopt report {Path('runs') / runs[0].name}" in out.stdout


def test_cli_errors_are_clear(tmp_path):
    cache = tmp_path / "cache"
    r = textopt("resume", str(tmp_path / "nothing"), cache=cache)
    assert r.returncode == 2 and "not a run directory" in r.stderr
    r = textopt("report", str(tmp_path / "nothing"), cache=cache)
    assert r.returncode == 2 and "checkpoint.json" in r.stderr
    run = tmp_path / "run"
    assert textopt("optimize", *BASE, "--steps", "1", "--out", str(run), cache=cache).returncode == 0
    r = textopt("optimize", *BASE, "--steps", "1", "--out", str(run), cache=cache)
    assert r.returncode == 2 and "textopt resume" in r.stderr


def test_ctrl_c_stops_soon_and_prints_the_resume_command(tmp_path):
    cache, run = tmp_path / "cache", tmp_path / "run"
    env = {**os.environ, "TEXTOPT_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "textopt", "optimize", *ARGS, "--out", str(run), "--json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    for line in proc.stdout:
        ev = json.loads(line)
        if ev["event"] == "step" and ev["step"] > 0:
            break
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and time.monotonic() - start < 15
    assert err.strip().splitlines()[-1].endswith(f"continue with `textopt resume {run}`") and "Traceback" not in err
    done = textopt("resume", str(run), "--json", cache=cache)
    assert done.returncode == 0, done.stderr
    assert events(done.stdout)[-1]["stopped"] == "completed"


@pytest.mark.parametrize("argv,needle", [
    (["--engine", "nope"], "unknown engine 'nope': use local"),
    (["--engine", "openai:gpt-4o-mini"], "OPENAI_API_KEY"),
    (["--engine", "fake", "--task", "{tmp}/nope.jsonl"], "built-in tasks: object_counting"),
    (["--engine", "fake", "--task", "{tmp}/bad.csv"], "lacks 'question' or 'answer'"),
    (["--engine", "local:/nope.gguf"], "no registered local model or model file '/nope.gguf'"),
    (["--engine", "fake", "--prompt", "Is this positive or negative?"], "has no {input} slot"),
    (["--engine", "fake", "--prompt", "{input} Is this positive?"], "names the label(s) 'positive' but not 'negative'"),
    (["--engine", "fake", "--steps", "-1"], "--steps must be an integer >= 0"),
    (["--engine", "fake", "--base-url", "http://x"], "--base-url works with openai:<model>"),
])
def test_every_cli_mistake_is_one_line_with_the_fix(tmp_path, capsys, monkeypatch, argv, needle):
    from textopt.cli import main

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    (tmp_path / "bad.csv").write_text("q,a\n1,2\n")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["--out", str(tmp_path / "run")]
    assert main(["optimize", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err and "--debug" in err
    assert not (tmp_path / "run").exists()  # nothing was created or spent
    with pytest.raises(Exception):
        main(["--debug", "optimize", *argv])  # --debug lets the traceback through
    with pytest.raises(Exception):
        main(["optimize", *argv, "--debug"])


def test_optimize_with_search_runs_reports_and_resumes(tmp_path, capsys):
    from textopt.cli import main

    run = tmp_path / "run"
    assert main(["optimize", "--engine", "fake", "--optimizer", "search", "--steps", "2", "--batch-size", "2",
                 "--eval-size", "2", "--val-size", "3", "--out", str(run), "--json"]) == 0
    result = events(capsys.readouterr().out)[-1]
    assert result["event"] == "result" and result["optimizer"] == "search" and result["pareto"] and result["best_id"] in result["pareto"]
    assert json.loads((run / "spec.json").read_text())["kind"] == "search"
    assert main(["report", str(run), "--no-plot"]) == 0
    text = capsys.readouterr().out
    assert "Pareto front" in text and "lineage of #" in text and "test_before" in text
    assert main(["resume", str(run), "--steps", "4"]) == 0
    assert "search:" in capsys.readouterr().out


def test_update_format_text_sends_plain_text_updates_and_is_kept_for_resume(tmp_path, capsys):
    from textopt.cli import main
    from textopt.recipes import build, resume

    run = tmp_path / "run"
    assert main(["optimize", "--engine", "fake", "--optimizer", "search", "--steps", "2", "--batch-size", "2",
                 "--eval-size", "2", "--val-size", "3", "--update-format", "text", "--out", str(run)]) == 0
    assert json.loads((run / "spec.json").read_text())["args"]["update_format"] == "text"
    job = resume(run)
    assert job.search.reflector.opt.reply == "text"
    assert build({"recipe": "optimize", "args": {"engine": "fake"}}).proposer().reply == "json"
    with pytest.raises(SystemExit):
        main(["optimize", "--engine", "fake", "--update-format", "yaml"])
    capsys.readouterr()


def test_search_proposer_optoprime_is_used_and_kept_for_resume(tmp_path, capsys):
    from textopt.cli import main
    from textopt.optim import TGD, OptoPrime
    from textopt.recipes import build, resume

    run = tmp_path / "run"
    assert main(["optimize", "--engine", "fake", "--optimizer", "search", "--steps", "2", "--batch-size", "2",
                 "--eval-size", "2", "--val-size", "3", "--proposer", "optoprime", "--out", str(run)]) == 0
    assert json.loads((run / "spec.json").read_text())["args"]["proposer"] == "optoprime"
    assert isinstance(resume(run).search.reflector.opt, OptoPrime)
    assert isinstance(build({"recipe": "optimize", "args": {"engine": "fake"}}).search.reflector.opt, TGD)
    with pytest.raises(ValueError, match="--proposer must be tgd or optoprime"):
        build({"recipe": "optimize", "args": {"engine": "fake", "proposer": "gepa"}})
    with pytest.raises(SystemExit):
        main(["optimize", "--engine", "fake", "--proposer", "gepa"])
    capsys.readouterr()


def test_optimize_with_optoprime_on_the_fake_model(tmp_path, capsys):
    from textopt.cli import main

    assert main(["optimize", "--engine", "fake", "--optimizer", "optoprime", "--steps", "1", "--batch-size", "1",
                 "--eval-size", "1", "--val-size", "1", "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "with optoprime" in out and "final prompt:" in out


def test_default_job_is_search_on_a_label_task_with_gain_interval_and_phases(tmp_path):
    """`textopt optimize` with no task/optimizer: search over an instruction template on sentiment; before,
    after and the paired gain each with an interval; every long phase announced on stderr; the run saved."""
    out = textopt("optimize", "--engine", "scripted", "--eval-size", "6", "--val-size", "3", "--steps", "2",
                  cache=tmp_path / "cache", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "task: sentiment on scripted with search" in out.stdout
    for name in ("before", "after"):
        m = re.search(rf"accuracy {name}:\s+([0-9.]+) \(95% CI ([0-9.]+)-([0-9.]+)\)", out.stdout)
        assert m and float(m.group(2)) <= float(m.group(1)) <= float(m.group(3)), out.stdout
    gain = re.search(r"gain: ([+-][0-9.]+) \(paired 95% CI ([+-][0-9.]+) to ([+-][0-9.]+); the interval (includes|excludes) 0", out.stdout)
    assert gain and float(gain.group(2)) <= float(gain.group(1)) <= float(gain.group(3)), out.stdout
    assert "initial prompt:" in out.stdout or "final prompt: (the initial one, unchanged)" in out.stdout
    assert "scoring the initial prompt on 6 held-out examples" in out.stderr
    assert "scoring the best prompt on 6 held-out examples" in out.stderr and "iteration 1 mutation" in out.stderr
    (run,) = (tmp_path / "runs").iterdir()
    result = json.loads((run / "result.json").read_text())
    assert result["task"] == "sentiment" and result["optimizer"] == "search" and "{input}" in result["initial_prompt"]
    spec = json.loads((run / "spec.json").read_text())["args"]
    assert spec["max_tokens"] == 24 and spec["update_tokens"] == 256  # sane caps for a small local model
    assert f"textopt report {Path('runs') / run.name}" in out.stdout
    rep = textopt("report", str(run), "--no-plot", cache=tmp_path / "cache", cwd=tmp_path)
    assert rep.returncode == 0 and "Pareto front" in rep.stdout and "test_after" in rep.stdout


def test_progress_heartbeat_prints_during_a_silent_phase_and_stops_at_the_end():
    import io

    from textopt.run import Progress, Run

    stream = io.StringIO()
    progress = Progress(bar=False, stream=stream, every=0.3)
    run = Run(None, kind="search", callbacks=[progress])
    run.log({"event": "phase", "phase": "test_before", "what": "scoring on 5 examples", "total": 5})
    time.sleep(1.6)
    run.log({"event": "result"})
    lines = stream.getvalue().splitlines()
    assert lines[0] == "scoring on 5 examples"
    beats = [line for line in lines if line.startswith("  ... scoring on 5 examples: 0/5 done")]
    assert len(beats) >= 2
    time.sleep(1.2)
    assert stream.getvalue().splitlines() == lines  # quiet once the run ended


def test_task_and_optimizer_sizes_follow_the_job():
    from textopt import datasets, recipes

    main = recipes.resolve_args({})
    assert (main["task"], main["optimizer"], main["max_tokens"]) == ("sentiment", "search", 24)
    assert main["prompt"] == datasets.TEMPLATES["sentiment"]["question"]  # weak but names the labels
    assert main["eval_size"] >= 100  # the README's gain is measured on at least 100 held-out examples
    old = recipes.resolve_args({"task": "object_counting", "optimizer": "tgd"})
    assert (old["steps"], old["eval_size"], old["max_tokens"]) == (2, 6, 160) and "{input}" not in old["prompt"]
    assert recipes.resolve_args({"task": "categories", "optimizer": "tgd"})["max_tokens"] == 24
    assert recipes.resolve_args({"max_tokens": 40})["max_tokens"] == 40


def test_the_result_and_the_report_split_the_wall_time(tmp_path, capsys):
    """Issue 25: result.json says where the time went. Each fake call sleeps 20 ms, so the task model's share
    is at least calls x 20 ms; the proposer (its own engine) is counted apart; the parts add up to the wall.
    One call at a time (--concurrency 1): calls that overlap sum past the wall time (as time_split says), which
    once made this test fail by 60 ms in a fresh venv."""
    from textopt.cli import main

    run = tmp_path / "run"
    assert main(["optimize", "--engine", "fake", "--backward-engine", "fake:proposer", "--latency", "0.02",
                 "--optimizer", "search", "--steps", "2", "--batch-size", "2", "--eval-size", "3", "--val-size", "3",
                 "--concurrency", "1", "--no-cache", "--out", str(run), "--json"]) == 0
    result = json.loads((run / "result.json").read_text())
    split, by_engine = result["time_split"], result["tokens_by_engine"]
    task_calls = by_engine["fake"]["calls"]
    proposer_calls = sum(u["calls"] for name, u in by_engine.items() if name != "fake")
    assert task_calls >= 6 and proposer_calls >= 1, by_engine
    assert split["task_model_s"] >= 0.9 * 0.02 * task_calls and split["proposer_s"] >= 0.9 * 0.02 * proposer_calls
    parts = split["task_model_s"] + split["proposer_s"] + split["scoring_s"] + split["other_s"]
    assert abs(parts - split["wall_s"]) < 0.05 and split["wall_s"] <= result["seconds"] + 0.05, split
    capsys.readouterr()
    assert main(["report", str(run), "--no-plot"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("time: "))
    assert "task-model calls" in line and "proposer calls" in line and "scoring" in line and "other" in line


def test_search_samples_draws_several_proposals_per_mutation_and_is_kept_for_resume(tmp_path, capsys):
    from textopt.cli import main
    from textopt.recipes import resume

    run = tmp_path / "run"
    assert main(["optimize", "--engine", "fake", "--optimizer", "search", "--steps", "2", "--batch-size", "2",
                 "--eval-size", "2", "--val-size", "3", "--samples", "3", "--out", str(run)]) == 0
    capsys.readouterr()
    assert json.loads((run / "spec.json").read_text())["args"]["samples"] == 3
    assert resume(run).search.proposals == 3
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    mutations = [r for r in rows if r.get("kind") == "mutation" and "proposals" in r]
    assert mutations, rows
    for r in mutations:  # every sample was scored or counted as failed (one sample: at most 2, a try and a re-ask)
        assert len(r["proposals"]) + r["failures"] >= 3, r
