"""The CLI run lifecycle in real subprocesses: a run SIGKILLed mid-way resumes with `textopt resume` to the
same result as an uninterrupted run on the same cache; --json logs; budgets; `textopt report`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--engine", "scripted", "--latency", "0.03", "--steps", "6", "--batch-size", "2", "--eval-size", "4", "--val-size", "3"]


def textopt(*args: str, cache: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "TEXTOPT_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "textopt", *args], env=env, capture_output=True, text=True, timeout=120,
                          cwd=kw.get("cwd", ROOT))


def events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def cache_entries(cache: Path) -> int:
    return len(list(cache.glob("*/*.json")))


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
    assert [e["event"] for e in ev][:2] == ["start", "step"] and ev[-1]["event"] == "result"
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
    out = textopt("optimize", *ARGS[:4], "--steps", "2", cache=tmp_path / "cache", cwd=tmp_path)
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
    assert textopt("optimize", *ARGS[:4], "--steps", "1", "--out", str(run), cache=cache).returncode == 0
    r = textopt("optimize", *ARGS[:4], "--steps", "1", "--out", str(run), cache=cache)
    assert r.returncode == 2 and "textopt resume" in r.stderr
