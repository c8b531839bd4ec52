"""No API key or auth header is ever written to the run directory, the cache or the logs.

A real HTTP server on 127.0.0.1 speaks the OpenAI chat API (and records the Authorization header it got,
to prove the key was really in play); `textopt optimize --engine openai:...` runs against it in a
subprocess with a fake key in the environment; then every file written is searched for the key."""
from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECRET = "sk-textopt-FAKE-4f9d2c-DO-NOT-LEAK"


class ChatHandler(http.server.BaseHTTPRequestHandler):
    auth_seen: list[str] = []

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ChatHandler.auth_seen.append(self.headers.get("Authorization", ""))
        if "response_format" in body:
            text = json.dumps({"reasoning": "be exact", "new_value": "Count carefully and answer with a number."})
        else:
            text = "The answer is 3."
        reply = {
            "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


def test_no_secret_in_run_dir_cache_or_logs(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ChatHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cache, run = tmp_path / "cache", tmp_path / "run"
        env = {**os.environ, "OPENAI_API_KEY": SECRET, "TEXTOPT_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
        base = f"http://127.0.0.1:{server.server_address[1]}/v1"
        logs = []
        for extra in (["--json"], []):
            out = subprocess.run(
                [sys.executable, "-m", "textopt", "optimize", "--engine", "openai:fake-model", "--base-url", base, "--task", "object_counting", "--optimizer", "tgd",
                 "--steps", "2", "--batch-size", "2", "--eval-size", "2", "--val-size", "2", "--no-keep-best",
                 "--out", str(run) + "".join(extra), *extra],
                env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
            )
            assert out.returncode == 0, out.stderr
            logs.append(out.stdout + out.stderr)
        rep = subprocess.run([sys.executable, "-m", "textopt", "report", str(run)], env=env, capture_output=True,
                             text=True, timeout=120, cwd=tmp_path)
        assert rep.returncode == 0, rep.stderr
        logs.append(rep.stdout + rep.stderr)
    finally:
        server.shutdown()

    assert ChatHandler.auth_seen and all(h == f"Bearer {SECRET}" for h in ChatHandler.auth_seen)  # the key was used
    assert "Count carefully" in (run / "parameters.json").read_text()  # the run really trained

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.parent.parent == cache for p in written) and (run / "checkpoint.json") in written
    for path in written:
        data = path.read_bytes()
        for needle in (SECRET.encode(), SECRET[-10:].encode(), b"Bearer", b"Authorization", b"OPENAI_API_KEY"):
            assert needle not in data, f"{needle!r} leaked into {path}"
    for log in logs:
        assert SECRET not in log and SECRET[-10:] not in log and "Bearer" not in log
