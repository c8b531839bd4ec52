"""The wheel carries every prompt template, and an installed copy renders them without the source tree."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_ships_all_prompts_and_renders_from_install(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True,
    )
    [wheel] = list(tmp_path.glob("textopt-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    [meta] = [n for n in names if n.endswith(".dist-info/METADATA")]
    requires = [line for line in zipfile.ZipFile(wheel).read(meta).decode().splitlines() if line.startswith("Requires-Dist:")]
    litellm = [r for r in requires if r.split()[1].startswith("litellm")]
    assert litellm and all("extra ==" in r for r in litellm)  # an extra, never part of the core install
    templates = sorted(p.name for p in (ROOT / "prompts").glob("*.j2"))
    assert templates and all(f"textopt/prompts/{t}" in names for t in templates)
    # unpack the wheel alone (no source checkout next to it) and render a template from it
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import textopt.prompts as p; m = p.render_messages('tgd_update.j2', role='r', value='v', feedback='f', "
        "constraints=[], past=[], notes=[], rejected=[], examples=[]); print(p.prompt_dir()); print(len(m))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": ""}).stdout.split()
    assert out[0].startswith(str(site)) and out[1] == "2"
