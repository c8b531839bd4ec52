"""Run directories under attack (issue 13): two runs on one directory, corrupt checkpoints, keys and URL
credentials on their way to disk, and a provider that refuses the key while the run would go on spending."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import textopt as to
from textopt import recipes
from textopt.cli import main
from textopt.run import BACKUP, CHECKPOINT, CheckpointError, RunLocked

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-adversarial-0123456789abcdefXYZ"


def cli(*args: str, cache: Path, cwd: Path | None = None, **popen) -> subprocess.Popen:
    env = {**os.environ, "TEXTOPT_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "textopt", *args], env=env, cwd=cwd or ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def small_run(run_dir: Path, steps: int = 2) -> dict:
    spec = recipes.RunSpec("optimize", {"engine": "fake", "task": "object_counting", "optimizer": "tgd", "steps": steps,
                                        "batch_size": 1, "eval_size": 1, "val_size": 1})
    return recipes.build(spec, run_dir=run_dir, progress=False).fit().summary


# -- two runs, one directory ------------------------------------------------------------------------
def test_second_cli_run_on_a_busy_directory_fails_at_once(tmp_path):
    run = tmp_path / "run"
    args = ("optimize", "--task", "object_counting", "--optimizer", "tgd", "--engine", "fake", "--latency", "0.2", "--steps", "3", "--batch-size", "1", "--eval-size", "1",
            "--val-size", "1", "--out", str(run))
    first = cli(*args, "--json", cache=tmp_path / "c1")
    try:
        assert json.loads(first.stdout.readline())["event"] == "start"  # the first run holds the lock now
        start = time.monotonic()
        second = cli(*args, cache=tmp_path / "c2")
        out, err = second.communicate(timeout=60)
        assert second.returncode == 2 and time.monotonic() - start < 30
        assert len(err.strip().splitlines()) == 1 and "in use by another run" in err and str(run) in err
        again = cli("resume", str(run), cache=tmp_path / "c1")  # resuming a live run is refused the same way
        _, err = again.communicate(timeout=60)
        assert again.returncode == 2 and "in use by another run" in err
    finally:
        rest, _ = first.communicate(timeout=120)
    assert first.returncode == 0
    assert json.loads(rest.splitlines()[-1])["event"] == "result"
    assert json.loads((run / "spec.json").read_text())["args"]["latency"] == 0.2  # the first run's spec, untouched


def test_python_trainer_on_a_locked_directory_fails_before_any_call(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from textopt.run import Run\n"
                               f"r = Run({str(tmp_path / 'run')!r}, kind='trainer', spec={{'recipe': None}}); r.open()\n"
                               "print('held', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        engine = to.ScriptedEngine("It is 1.")
        p = to.Variable("p", role="prompt", requires_grad=True, name="p")
        llm = to.LLM(engine, system_prompt=p)
        trainer = to.Trainer(lambda ex: llm(ex.question), lambda ex, out: to.TextLoss("judge", engine=engine)(out),
                             to.TGD([p], engine=engine), train=[to.datasets.Example("q", "1")], val=[to.datasets.Example("q", "1")],
                             steps=1, run_dir=tmp_path / "run")
        with pytest.raises(RunLocked, match="in use by another run"):
            trainer.fit()
        assert engine.calls == []
    finally:
        holder.kill()
        holder.wait()


# -- corrupt checkpoints ----------------------------------------------------------------------------
CORRUPTIONS = {
    "bad utf-8": lambda text: text.encode()[:40] + b"\xff\xfe\xfd",
    "truncated": lambda text: text[: len(text) // 2].encode(),
    "not an object": lambda text: b"[1, 2, 3]",
    "wrong type": lambda text: json.dumps({**json.loads(text), "step": "two"}).encode(),
    "missing keys": lambda text: json.dumps({k: v for k, v in json.loads(text).items() if k not in ("rng", "history")}).encode(),
    "foreign format": lambda text: json.dumps({**json.loads(text), "format": "something.else"}).encode(),
    "bad rng": lambda text: json.dumps({**json.loads(text), "rng": [3, "x", None]}).encode(),
}


@pytest.mark.parametrize("how", list(CORRUPTIONS))
def test_unreadable_newest_checkpoint_resumes_from_the_backup(tmp_path, capsys, how):
    run = tmp_path / "run"
    small_run(run, steps=1)
    backup_step = json.loads((run / BACKUP).read_text())["step"]
    newest = run / CHECKPOINT
    newest.write_bytes(CORRUPTIONS[how](newest.read_text()))
    assert main(["resume", str(run), "--steps", "2", "--json"]) == 0
    captured = capsys.readouterr()
    warning = [line for line in captured.err.splitlines() if "backup" in line]
    assert len(warning) == 1 and str(newest) in warning[0]
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert events[0]["event"] == "warning" and "backup" in events[0]["message"]  # --json shows it as an event too
    start = events[1]
    assert start["event"] == "start" and start["step"] == backup_step and start["resumed"] is True
    assert json.loads(newest.read_text())["step"] == 2  # a good checkpoint again


def test_no_readable_checkpoint_is_one_line_naming_the_file_and_the_fix(tmp_path, capsys):
    run = tmp_path / "run"
    small_run(run, steps=1)
    (run / CHECKPOINT).write_bytes(b"\x00\x01garbage")
    (run / BACKUP).write_text("{")
    for argv in (["resume", str(run)], ["report", str(run), "--no-plot"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and str(run / CHECKPOINT) in err and str(run / BACKUP) in err and "delete" in err
    with pytest.raises(CheckpointError):
        to.resume(run)


def test_garbage_spec_is_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    small_run(run, steps=1)
    (run / "spec.json").write_bytes(b"\xff not json")
    assert main(["resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "spec.json" in err


# -- keys, URL credentials, and a provider that refuses the key -------------------------------------
class Provider(BaseHTTPRequestHandler):
    """An OpenAI-compatible server: plain chat requests are answered; requests that ask for JSON (the
    optimizer's update) get a 401 whose body echoes the key, as some providers do."""

    log: list[dict] = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Provider.log.append({"auth": self.headers.get("Authorization", ""), "json": "response_format" in body})
        if "response_format" in body:
            key = self.headers.get("Authorization", "").removeprefix("Bearer ")
            payload = {"error": {"message": f"Incorrect API key provided: {key}.", "type": "invalid_request_error",
                                 "code": "invalid_api_key"}}
            self._send(401, payload)
            return
        self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": "The answer is 3. Count carefully."}}],
                         "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})

    def _send(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture
def provider():
    Provider.log = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Provider)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def test_refused_key_stops_the_run_and_no_key_reaches_disk(tmp_path, capsys, monkeypatch, provider):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    run = tmp_path / "run"
    code = main(["optimize", "--task", "object_counting", "--optimizer", "tgd", "--engine", "openai:m", "--base-url", f"http://user:hunter2pw@127.0.0.1:{provider}/v1",
                 "--steps", "4", "--batch-size", "1", "--eval-size", "1", "--val-size", "1", "--no-cache", "--out", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert "refused the credentials" in err[-1] and KEY not in "\n".join(err) and "resume" in err[-1]
    updates = [i for i, r in enumerate(Provider.log) if r["json"]]
    assert len(updates) == 1 and updates[0] == len(Provider.log) - 1  # nothing was asked after the refusal
    assert json.loads((run / CHECKPOINT).read_text())["step"] == 0  # the failed step never happened
    for path in run.rglob("*"):
        if path.is_file() and path.name != ".lock":
            text = path.read_text(errors="replace")
            assert KEY not in text and "hunter2pw" not in text, path.name
    spec = json.loads((run / "spec.json").read_text())
    assert spec["args"]["base_url"] == f"http://***@127.0.0.1:{provider}/v1"
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "error" and "AuthenticationFailed" in events[-1]["error"]
