"""Sync calls against a real keep-alive OpenAI-compatible server (llama.cpp's, serving SmolLM2 on 127.0.0.1),
seen through a counting proxy: N sync calls are N requests on one kept-alive connection, with nothing on
stderr; max_concurrency holds for threads."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import textopt as to

pytestmark = [pytest.mark.local, pytest.mark.server]
ROOT = Path(__file__).resolve().parents[1]


class CountingProxy:
    """Forwards POSTs to `upstream` and counts requests, client connections and requests in flight."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests = 0
        self.connections = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real provider

            def setup(self):
                super().setup()
                with outer.lock:
                    outer.connections += 1

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with outer.lock:
                    outer.requests += 1
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    path = self.path[len("/v1"):] if self.path.startswith("/v1") else self.path
                    req = urllib.request.Request(outer.upstream + path, data=body, method="POST",
                                                 headers={"content-type": "application/json"})
                    with urllib.request.urlopen(req, timeout=120) as resp:
                        status, data = resp.status, resp.read()
                except urllib.error.HTTPError as exc:  # the upstream's own error status passes through
                    status, data = exc.code, exc.read()
                except OSError as exc:  # upstream gone (killed): answer as a gateway would
                    status, data = 502, json.dumps({"error": {"message": f"upstream: {exc}"}}).encode()
                finally:
                    with outer.lock:
                        outer.in_flight -= 1
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


SCRIPT = """
import sys, json, textopt as to
spec, base, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
where = {"base_url": base} if spec.startswith("openai") else {"api_base": base, "api_key": "none"}
eng = to.get_engine(spec, **where, cache=False, max_tokens=4)
texts = [eng.complete([{"role": "user", "content": f"Say the number {i}."}]).text for i in range(n)]
print(json.dumps({"calls": eng.usage.calls, "texts": texts}))
"""


@pytest.mark.parametrize("spec", ["openai:smollm2", "litellm:openai/smollm2"])
def test_n_sync_calls_are_n_requests_on_one_connection(llama_server, spec):
    n = 4
    proxy = CountingProxy(llama_server)
    with proxy as base:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", SCRIPT, spec, base, str(n)], capture_output=True, text=True,
                             timeout=300, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["calls"] == n and len(result["texts"]) == n
    assert proxy.requests == n, f"{n} sync calls reached the server as {proxy.requests} requests"
    assert proxy.connections == 1  # one client, one kept-alive connection, for every sync call
    for noise in ("Event loop is closed", "Task exception was never retrieved", "Traceback", "Unclosed"):
        assert noise not in out.stderr, out.stderr


def test_max_concurrency_holds_for_threads_at_the_server(llama_server):
    proxy = CountingProxy(llama_server)
    with proxy as base:
        eng = to.get_engine("openai:smollm2", base_url=base, cache=False, max_tokens=4, max_concurrency=1)
        threads = [threading.Thread(target=lambda i=i: eng.complete([{"role": "user", "content": f"Count to {i}."}]))
                   for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert proxy.requests == 3 and proxy.max_in_flight == 1 and eng.usage.calls == 3
