"""to.save / to.load and atomic writes: plain JSON, never a torn file."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import textopt as to
from textopt import checkpoint


def test_save_load_roundtrip_is_plain_readable_json(tmp_path):
    a = to.Variable("Answer with a number.", role="system prompt", requires_grad=True, name="prompt")
    b = to.Variable("ünïcode\nlines", role="instructions", requires_grad=True, name="instr")
    path = tmp_path / "params.json"
    to.save([a, b], path)
    text = path.read_text(encoding="utf-8")
    assert "ünïcode" in text and "\n  " in text  # not escaped, indented: a human can read and diff it
    data = json.loads(text)
    assert data["format"] == "textopt.parameters"
    assert data["parameters"] == {"prompt": "Answer with a number.", "instr": "ünïcode\nlines"}
    assert to.load(path) == {"prompt": "Answer with a number.", "instr": "ünïcode\nlines"}

    a.set_value("changed")
    to.load(path, into=[a])
    assert a.value == "Answer with a number."


def test_save_accepts_a_dict_and_load_names_missing_parameters(tmp_path):
    path = tmp_path / "p.json"
    to.save({"x": "one"}, path)
    other = to.Variable("v", role="r", requires_grad=True, name="y")
    with pytest.raises(KeyError, match="'y'"):
        to.load(path, into=[other])


def test_load_rejects_foreign_and_broken_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        to.load(bad)
    foreign = tmp_path / "foreign.json"
    foreign.write_text('{"a": 1}')
    with pytest.raises(ValueError, match="not a textopt parameters file"):
        to.load(foreign)
    with pytest.raises(FileNotFoundError):
        to.load(tmp_path / "missing.json")


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "state.json"
    checkpoint.atomic_write_json(path, {"step": 1})

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        checkpoint.atomic_write_json(path, {"step": 2})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


WRITER = """
import sys
from textopt.checkpoint import atomic_write_json
i = 0
print("ready", flush=True)
while True:
    i += 1
    atomic_write_json(sys.argv[1], {"i": i, "payload": ["x" * 200] * 2000})
"""


def test_sigkill_during_writes_never_leaves_a_torn_file(tmp_path):
    path = tmp_path / "state.json"
    for delay in (0.05, 0.2, 0.35):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if path.exists():  # whatever moment the kill hit, the file is a complete JSON document
            data = json.loads(path.read_text())
            assert len(data["payload"]) == 2000
    assert path.exists()
