"""The engines every framework reaches through its own OpenAI-compatible client, run by the harness.

- LatencyServer: a fake OpenAI chat-completions server on 127.0.0.1 that sleeps a fixed time per request
  and returns canned replies shaped for whatever the caller asked (JSON schema, JSON object, TextGrad's
  improved-variable tags, Trace's suggestion dict, plain text). Threaded, so concurrent requests overlap
  as they would on a real provider. It is the timing engine: the model's own speed is taken out.
- CountingProxy: forwards to llama.cpp's server and counts requests, prompt characters and tokens.
- LlamaServer: starts and stops `python -m llama_cpp.server` serving the embedded SmolLM2 model (or another
  GGUF file; with --reflect-gguf the harness runs a second one for the optimizers, behind its own proxy).

Both servers account per run: a client uses base URL `http://127.0.0.1:PORT/run/<run-id>/v1`, and the
server files every request under <run-id> (`stats(run_id)`). That is how prompt sizes, calls and tokens
are measured the same way for every framework, outside of any framework's own bookkeeping.
"""
from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

_RUN = re.compile(r"^/run/([^/]+)(/.*)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RunStats:
    """What one run sent: every request's total message characters, and the tokens it cost."""

    calls: int = 0
    prompt_chars: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_in_flight: int = 0
    in_flight: int = 0
    last_messages: list[dict[str, Any]] = field(default_factory=list)
    #: How many requests named each model (the "model" field), so a run shows which model it asked for.
    models: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "prompt_chars": list(self.prompt_chars),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "max_in_flight": self.max_in_flight,
            "models": dict(self.models),
        }


def message_chars(messages: list[dict[str, Any]]) -> int:
    """Characters of all message contents (text parts of multi-part contents included)."""
    n = 0
    for m in messages:
        c = m.get("content")
        if isinstance(c, str):
            n += len(c)
        elif isinstance(c, list):
            n += sum(len(p.get("text", "")) for p in c if isinstance(p, dict))
    return n


class _Accounting:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[str, RunStats] = {}

    def start(self, run: str, messages: list[dict[str, Any]], model: str | None = None) -> None:
        with self.lock:
            s = self.runs.setdefault(run, RunStats())
            s.calls += 1
            s.models[str(model)] = s.models.get(str(model), 0) + 1
            s.prompt_chars.append(message_chars(messages))
            s.in_flight += 1
            s.max_in_flight = max(s.max_in_flight, s.in_flight)
            s.last_messages = messages

    def finish(self, run: str, prompt_tokens: int, completion_tokens: int) -> None:
        with self.lock:
            s = self.runs.setdefault(run, RunStats())
            s.in_flight -= 1
            s.prompt_tokens += prompt_tokens
            s.completion_tokens += completion_tokens

    def stats(self, run: str) -> RunStats:
        with self.lock:
            return self.runs.get(run, RunStats())


class _Listener(ThreadingHTTPServer):
    # socketserver's default accept backlog is 5: a burst of 32-64 new connections would overflow it and the
    # kernel would drop SYNs (clients retry after 1-3 s). A real provider accepts them; so do we.
    request_queue_size = 512


class _Server:
    """A ThreadingHTTPServer in a daemon thread, with per-run accounting."""

    handler_factory: Callable[["_Server"], type[BaseHTTPRequestHandler]]

    def __init__(self) -> None:
        self.acct = _Accounting()
        self.port = free_port()
        self.httpd = _Listener(("127.0.0.1", self.port), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        raise NotImplementedError

    def base_url(self, run: str) -> str:
        return f"http://127.0.0.1:{self.port}/run/{run}/v1"

    def stats(self, run: str) -> RunStats:
        return self.acct.stats(run)

    def __enter__(self) -> "_Server":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _BaseHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real provider
    disable_nagle_algorithm = True  # else delayed ACKs add ~40 ms to every reply
    server_ref: "_Server"

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _split(self) -> tuple[str, str]:
        m = _RUN.match(self.path)
        return (m.group(1), m.group(2)) if m else ("default", self.path)

    def _body(self) -> dict[str, Any]:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b"{}"
        try:
            return json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return {}

    def _send(self, code: int, payload: dict[str, Any] | bytes) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout): nothing to answer
            self.close_connection = True


# --------------------------------------------------------------------------------------------------
# The latency engine


def _schema_value(schema: dict[str, Any], seed: str) -> Any:
    t = schema.get("type")
    if t == "object" or "properties" in schema:
        return {k: _schema_value(v, seed) for k, v in (schema.get("properties") or {}).items()}
    if t == "array":
        return [_schema_value(schema.get("items") or {"type": "string"}, seed)]
    if t in ("number", "integer"):
        return 1
    if t == "boolean":
        return True
    return f"Improved text {seed}: state the final answer as a number and check each item once."


def canned_reply(body: dict[str, Any]) -> str:
    """A reply of the shape the request asks for. Deterministic: the same request gets the same reply,
    different requests get different (but equally shaped) replies."""
    messages = body.get("messages") or []
    text = "\n".join(
        m["content"] if isinstance(m.get("content"), str) else json.dumps(m.get("content")) for m in messages
    )
    seed = hashlib.sha256(text.encode()).hexdigest()[:6]
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema") or {}
        return json.dumps(_schema_value(schema, seed))
    if "[[ ## completed ## ]]" in text:  # DSPy's chat adapter: one marker per output field, then the end marker
        ask = text.rsplit("Respond with the corresponding output fields", 1)[-1]
        names = [n for n in re.findall(r"\[\[ ## (\w+) ## \]\]", ask) if n != "completed"] or ["answer"]
        return "\n\n".join(f"[[ ## {n} ## ]]\nReply {seed}: positive" for n in dict.fromkeys(names)) + "\n\n[[ ## completed ## ]]"
    if "IMPROVED_VARIABLE" in text:  # TextGrad's update asks for the new value between these tags
        return f"<IMPROVED_VARIABLE>Improved text {seed}: state the final answer as a number.</IMPROVED_VARIABLE>"
    if '"suggestion"' in text or fmt.get("type") == "json_object":  # Trace's OptoPrime
        block = text.rsplit("#Variables", 1)[-1].split("#", 1)[0] if "#Variables" in text else ""
        names = re.findall(r"^\((?:\w+)\)\s*(\w+)\s*[=:]", block, re.MULTILINE) or ["x"]
        return json.dumps(
            {
                "reasoning": "The output does not match the feedback; change the trainable value.",
                "answer": "",
                "suggestion": {n: f"improved {seed}" for n in names[:1]},
            }
        )
    return f"Reply {seed}: the response misses the count; it should list each item and add them. The answer is 3."


class LatencyServer(_Server):
    """Fake OpenAI-compatible chat server: sleeps `latency` seconds per request, concurrently.

    `capacity` models a provider of limited size: at most that many requests are served at once, the rest
    wait in a queue (None: unlimited, as a large provider). Its own cost, measured with a bare keep-alive
    client in another process: ~1.5 ms per request at concurrency 1 on top of the 50 ms, 0.9-1.0 s for 1,000
    requests at concurrency 64 (limit 0.78 s). An asyncio server measured no better (1.16 s at 64).
    """

    def __init__(self, latency: float = 0.05, capacity: int | None = None) -> None:
        self.latency = latency
        self.capacity = capacity
        self._slots = threading.BoundedSemaphore(capacity) if capacity else None
        super().__init__()

    def _wait(self) -> None:
        if self._slots is None:
            time.sleep(self.latency)
            return
        with self._slots:  # a provider of limited size: the rest wait their turn
            time.sleep(self.latency)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        srv = self

        class Handler(_BaseHandler):
            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": "latency", "object": "model", "owned_by": "bench"}]})

            def do_POST(self) -> None:
                run, path = self._split()
                body = self._body()
                if not path.endswith("/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {path}"}})
                    return
                messages = body.get("messages") or []
                srv.acct.start(run, messages, body.get("model"))
                try:
                    srv._wait()
                    reply = canned_reply(body)
                finally:
                    pt, ct = message_chars(messages) // 4 + 1, len(reply) // 4 + 1
                    srv.acct.finish(run, pt, ct)
                self._send(
                    200,
                    {
                        "id": "chatcmpl-bench",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body.get("model", "latency"),
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct},
                    },
                )

        return Handler


# --------------------------------------------------------------------------------------------------
# The real model: llama.cpp's server, behind a counting proxy


class CountingProxy(_Server):
    """Forwards /run/<id>/v1/... to `upstream` (llama.cpp's /v1) and counts calls and tokens per run."""

    def __init__(self, upstream: str, timeout: float = 900.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.timeout = timeout
        super().__init__()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        srv = self

        class Handler(_BaseHandler):
            def _forward(self, method: str, path: str, data: bytes | None) -> tuple[int, bytes]:
                url = srv.upstream + path[len("/v1") :] if path.startswith("/v1") else srv.upstream + path
                req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=srv.timeout) as resp:
                        return resp.status, resp.read()
                except urllib.error.HTTPError as exc:
                    return exc.code, exc.read()

            def do_GET(self) -> None:
                _, path = self._split()
                code, data = self._forward("GET", path, None)
                self._send(code, data)

            def do_POST(self) -> None:
                run, path = self._split()
                body = self._body()
                srv.acct.start(run, body.get("messages") or [], body.get("model"))
                pt = ct = 0
                try:
                    code, data = self._forward("POST", path, json.dumps(body).encode())
                    try:
                        usage = json.loads(data).get("usage") or {}
                        pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
                    except (ValueError, AttributeError):
                        pass
                except Exception as exc:  # upstream down or timed out: a 503 the client may retry
                    code, data = 503, json.dumps({"error": {"message": f"proxy: {exc}"}}).encode()
                finally:
                    srv.acct.finish(run, pt, ct)
                self._send(code, data)

        return Handler


class LlamaServer:
    """`python -m llama_cpp.server` serving a GGUF model (SmolLM2 by default) on 127.0.0.1 (same flags as
    tests/conftest.py); requests name it by `alias`."""

    def __init__(self, model_path: str | Path, log: Path, n_ctx: int = 8192, python: str = sys.executable,
                 alias: str = "smollm2") -> None:
        self.port = free_port()
        self.log = log
        self.cmd = [
            python, "-m", "llama_cpp.server",
            "--model", str(model_path), "--model_alias", alias,
            "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx), "--seed", "0",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "LlamaServer":
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(self.cmd, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.__exit__()
                    raise RuntimeError(f"llama.cpp server did not start in 180 s:\n{self.log.read_text()[-3000:]}")
                time.sleep(0.5)

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
