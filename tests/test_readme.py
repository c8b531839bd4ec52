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


@pytest.mark.local
def test_python_examples_in_readme_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    for i, code in enumerate(blocks):
        needs = re.match(r"# requires: (\w+)", code)  # e.g. a vision model behind OPENAI_API_KEY
        if needs and not os.environ.get(needs.group(1)):
            continue
        script = tmp_path / f"readme_{i}.py"
        script.write_text(code, encoding="utf-8")
        res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=900)
        assert res.returncode == 0, f"README python block {i} failed:\n{res.stderr[-3000:]}"


@pytest.mark.local
def test_main_job_runs_on_the_local_model(tmp_path):
    """`textopt optimize` end to end on the real model (small sizes; the README's default is larger)."""
    res = subprocess.run(
        [sys.executable, "-m", "textopt", "optimize", "--steps", "1", "--batch-size", "2", "--eval-size", "3", "--val-size", "0"],
        capture_output=True, text=True, cwd=tmp_path, timeout=1200,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    before = re.search(r"accuracy before:\s*([0-9.]+)", out)
    after = re.search(r"accuracy after:\s*([0-9.]+)", out)
    assert before and after and 0.0 <= float(before.group(1)) <= 1.0 and 0.0 <= float(after.group(1)) <= 1.0
    tokens = re.search(r"tokens:\s*(\d+)", out)
    assert tokens and int(tokens.group(1)) > 0
    assert "final prompt:" in out
