"""The README's usage runs as written, on the real embedded model, and its two commands stay in sync with CI."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    blocks = re.findall(r"```bash\n(.*?)```", README, re.S)
    install_and_run, install_and_test = blocks[0].strip(), blocks[1].strip()
    assert "textopt optimize" in install_and_run and "[local]" in install_and_run
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert install_and_test in ci.splitlines()


#: A README example is something a new user runs and waits for: each one must end within this (seconds).
EXAMPLE_SECONDS = 120
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_readme_has_python_examples_and_each_caps_its_local_replies():
    """Every example that builds the local engine caps its replies (an uncapped 135M model can repeat one
    sentence until its context is full: minutes per call)."""
    assert len(PYTHON_BLOCKS) >= 5
    for i, code in enumerate(PYTHON_BLOCKS):
        for call in re.findall(r"get_engine\(\"local\"[^)]*\)", code):
            if "LLMCall(to.get_engine(\"local\"))(photo)" in code and call == 'get_engine("local")':
                continue  # the images example: refused before any call
            assert "max_tokens=" in call, f"README python block {i}: {call} has no max_tokens cap"


@pytest.mark.local
@pytest.mark.parametrize("i", range(len(PYTHON_BLOCKS)))
def test_python_examples_in_readme_run(tmp_path, i):
    """Each README example as a script on the embedded model, in under EXAMPLE_SECONDS."""
    code = PYTHON_BLOCKS[i]
    needs = re.match(r"# requires: (\w+)", code)  # e.g. a vision model behind OPENAI_API_KEY
    if needs and not os.environ.get(needs.group(1)):
        pytest.skip(f"README python block {i} needs {needs.group(1)}")
    script = tmp_path / f"readme_{i}.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "TEXTOPT_CACHE_DIR": str(tmp_path / "cache")}  # timed cold, as a new user runs it
    try:
        res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path,
                             timeout=EXAMPLE_SECONDS, env=env)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"README python block {i} ran over {EXAMPLE_SECONDS} s:\n{(exc.stdout or '')[-2000:]}") from None
    assert res.returncode == 0, f"README python block {i} failed:\n{res.stderr[-3000:]}"


@pytest.mark.local
def test_main_job_runs_on_the_local_model(tmp_path):
    """`textopt optimize` end to end on the real model: the README's main job (search on sentiment) at a small
    size. Asserts what holds on every run, never the model's accuracy."""
    res = subprocess.run(
        [sys.executable, "-m", "textopt", "optimize", "--eval-size", "4", "--val-size", "3", "--batch-size", "2",
         "--budget-metric-calls", "10"],
        capture_output=True, text=True, cwd=tmp_path, timeout=900,
        env={**__import__("os").environ, "TEXTOPT_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "task: sentiment on local with search (4 held-out examples)" in out
    for name in ("before", "after"):
        m = re.search(rf"accuracy {name}:\s+([0-9.]+) \(95% CI ([0-9.]+)-([0-9.]+)\)", out)
        assert m and 0.0 <= float(m.group(2)) <= float(m.group(1)) <= float(m.group(3)) <= 1.0, out
    assert re.search(r"gain: [+-][0-9.]+ \(paired 95% CI [+-][0-9.]+ to [+-][0-9.]+; the interval (includes|excludes) 0", out)
    tokens = re.search(r"tokens:\s*(\d+)", out)
    assert tokens and int(tokens.group(1)) > 0
    assert "final prompt:" in out
    assert "scoring the initial prompt on 4 held-out examples" in res.stderr
    m = re.search(r"run directory: (\S+) \(report: textopt report (\S+)\)", out)
    assert m and m.group(1) == m.group(2) and (tmp_path / m.group(1) / "result.json").exists()
    rep = subprocess.run([sys.executable, "-m", "textopt", "report", m.group(1), "--no-plot"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert rep.returncode == 0 and "test_before" in rep.stdout and "Pareto front" in rep.stdout, rep.stderr[-2000:]
    assert re.search(r"pool: \d+ candidate", rep.stdout) and "lineage of #" in rep.stdout, rep.stdout[-2000:]
