"""Every notebook in notebooks/ is committed with its outputs (plots included), and re-runs on the local model
into a temporary copy: without an error, and with every code cell that shows something in the committed file
showing the same kinds of output again (a plot stays a plot). Not byte equality: the model's text may differ.

Regenerate the committed outputs with `python tests/test_notebooks.py [NAME ...]` (needs the `local` and
`dev` extras); volatile metadata (execution timestamps) is stripped so that re-committing is stable.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
IDS = [p.name for p in NOTEBOOKS]
#: Notebooks whose committed outputs must include a picture (a curve, a graph).
PICTURES = {"01_optimize_prompt.ipynb": "image/png", "02_trace_pipeline.ipynb": "image/svg+xml",
            "03_aegis.ipynb": "image/png", "04_humaneval.ipynb": "image/svg+xml"}


def output_kinds(cell: Any) -> set[str]:
    """What a code cell shows, by kind: "stdout" for printed text, else each MIME type it displays.
    stderr is left out (warnings and progress lines come and go with the cache and the library versions)."""
    kinds: set[str] = set()
    for out in cell.get("outputs", []):
        kind = out.get("output_type")
        if kind == "stream":
            if out.get("name") == "stdout":
                kinds.add("stdout")
        elif kind == "error":
            kinds.add("error")
        else:
            kinds.update(out.get("data", {}))
    return kinds


def strip_volatile(nb: Any) -> Any:
    """Drop what changes on every run without saying anything about the outputs: execution timestamps,
    the kernel's exact Python version."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        cell.metadata.pop("collapsed", None)
    info = nb.metadata.get("language_info")
    if info:
        nb.metadata["language_info"] = {"name": info.get("name", "python")}
    return nb


def execute(path: Path, workdir: Path) -> Any:
    """Run a notebook top to bottom in `workdir` (its files go there); the kernel inherits the environment."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return nb


def _committed(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_is_committed_with_outputs(path: Path) -> None:
    nb = _committed(path)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert any(c.get("outputs") for c in code), f"{path.name} has no outputs: run `python tests/test_notebooks.py`"
    kinds = set().union(*(output_kinds(c) for c in code))
    assert "error" not in kinds, f"{path.name} was committed with an error output"
    assert PICTURES[path.name] in kinds, f"{path.name} shows no {PICTURES[path.name]} picture"
    for i, cell in enumerate(code):
        assert "execution" not in cell.get("metadata", {}), f"{path.name}: cell {i} keeps execution timestamps"


@pytest.mark.local
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_reruns_with_the_same_kinds_of_output(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("nbformat")
    pytest.importorskip("nbclient")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    # The kernel inherits the environment: TEXTOPT_CACHE_DIR points at this test's own cache folder.
    nb = execute(path, tmp_path)
    committed = [c for c in _committed(path)["cells"] if c["cell_type"] == "code"]
    fresh = [c for c in nb.cells if c.cell_type == "code"]
    assert len(fresh) == len(committed)
    for i, (old, new) in enumerate(zip(committed, fresh)):
        now = output_kinds(new)
        assert "error" not in now, f"{path.name}: cell {i} raised"
        missing = output_kinds(old) - now
        assert not missing, f"{path.name}: cell {i} no longer shows {sorted(missing)}"


def regenerate(names: list[str]) -> None:
    """Execute each notebook (a fresh cache, a scratch working directory) and write it back with its outputs."""
    import nbformat

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    for path in NOTEBOOKS:
        if names and path.name not in names and path.stem not in names:
            continue
        with tempfile.TemporaryDirectory() as work:
            os.environ["TEXTOPT_CACHE_DIR"] = str(Path(work) / "cache")  # no reply served from an earlier run
            start = time.perf_counter()
            nb = strip_volatile(execute(path, Path(work)))
        nbformat.write(nb, path)
        print(f"{path.name}: {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
    regenerate(sys.argv[1:])
