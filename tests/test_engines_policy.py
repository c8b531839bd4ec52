"""Engine policy against real HTTP on 127.0.0.1: time limits for every engine, secrets kept out of errors,
dollar cost from litellm's cost map, and dollar budgets."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import textopt as to
from textopt.engines.openai import DEFAULT_MAX_TIME, DEFAULT_TIMEOUT
from textopt.secrets import scrub

ROOT = Path(__file__).resolve().parents[1]
MSG = [{"role": "user", "content": "hi"}]
KEY = "sk-policy-FAKE-8c1e55aa90-DO-NOT-LEAK"


class FakeOpenAI:
    """A chat-completions server: `status` for every request (the error body echoes the Authorization
    header, as some proxies do), `hang` seconds before answering, `model` named in the reply."""

    def __init__(self, *, status: int = 200, hang: float = 0.0, model: str = "m") -> None:
        self.status, self.hang, self.model, self.hits = status, hang, model, 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.hits += 1
                if outer.hang:
                    time.sleep(outer.hang)
                if outer.status == 200:
                    body = {"id": "x", "object": "chat.completion", "created": 0, "model": outer.model,
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": "hello"}}],
                            "usage": {"prompt_tokens": 1000, "completion_tokens": 100, "total_tokens": 1100}}
                else:
                    echo = f"invalid credentials: {self.headers.get('authorization', '')}"
                    body = {"error": {"message": echo, "type": "invalid_request_error"}}
                data = json.dumps(body).encode()
                try:
                    self.send_response(outer.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout test)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- time limits ------------------------------------------------------------------------------------
def test_remote_defaults_fail_in_under_two_minutes():
    eng = to.get_engine("openai:m", base_url="http://127.0.0.1:9/v1", cache=False)
    worst_backoff = sum(min(eng.retry_wait * 2 ** i, 30 * eng.retry_wait) + eng.retry_wait for i in range(eng.retries))
    assert eng.timeout == DEFAULT_TIMEOUT and eng.max_time == DEFAULT_MAX_TIME
    # max_time bounds attempts and waits together (checked in the next test); without it this would be
    # timeout x attempts + backoff
    assert eng.max_time + 1 < 120 and eng.timeout <= eng.max_time
    assert eng.timeout * (eng.retries + 1) + worst_backoff > 120  # so max_time really is what holds


def test_hanging_server_fails_within_max_time():
    with FakeOpenAI() as ok:  # the SDK's one-time lazy imports happen on the first request: not timed here
        to.get_engine("openai:m", base_url=ok, cache=False).complete(MSG)
    with FakeOpenAI(hang=30) as base:
        eng = to.get_engine("openai:m", base_url=base, api_key=KEY, cache=False, timeout=0.4, max_time=1.5,
                            retries=10, retry_wait=0.05)
        start = time.perf_counter()
        with pytest.raises(to.EngineError, match="attempts in") as err:
            eng.complete(MSG)
        took = time.perf_counter() - start
    assert 1.2 < took < 3.0, took
    assert err.value.transient is True


def test_every_engine_takes_a_timeout():
    slow = to.get_engine("scripted", reply="late", latency=5.0, timeout=0.2, retries=1, retry_wait=0.0)
    start = time.perf_counter()
    with pytest.raises(to.EngineError, match="no reply within 0.2 s"):
        slow.complete(MSG)
    assert time.perf_counter() - start < 1.5 and len(slow.calls) == 2
    lite = to.get_engine("litellm:openai/m", api_base="http://127.0.0.1:9/v1", api_key="k", timeout=1.5, cache=False)
    assert lite.timeout == 1.5
    with pytest.raises(ValueError, match="timeout"):
        to.get_engine("scripted", timeout=0)


def test_litellm_timeout_is_honoured_against_a_hanging_server():
    with FakeOpenAI(hang=30) as base:
        eng = to.get_engine("litellm:openai/m", api_base=base, api_key=KEY, timeout=0.5, max_time=1.5,
                            retry_wait=0.05, cache=False)
        start = time.perf_counter()
        with pytest.raises(to.EngineError) as err:
            eng.complete(MSG)
    assert time.perf_counter() - start < 4.0
    assert KEY not in str(err.value)


# -- secrets ----------------------------------------------------------------------------------------
def _everything_said(err: BaseException) -> str:
    return "".join(traceback.format_exception(err)) + repr(err) + repr(vars(err))


@pytest.mark.parametrize("spec, key_arg", [("openai:m", "api_key"), ("litellm:openai/m", "api_key")])
def test_a_key_echoed_by_the_server_never_reaches_the_error(spec, key_arg):
    with FakeOpenAI(status=401) as base:
        where = {"base_url": base} if spec.startswith("openai") else {"api_base": base}
        eng = to.get_engine(spec, **where, **{key_arg: KEY}, cache=False, retry_wait=0.01)
        with pytest.raises(to.EngineError) as err:
            eng.complete(MSG)
    said = _everything_said(err.value)
    assert KEY not in said and KEY[-12:] not in said
    assert err.value.__cause__ is None and err.value.__context__ is None
    assert isinstance(err.value, to.errors.AuthenticationFailed) and err.value.status_code == 401
    assert "not retried" in str(err.value)


def test_credentials_in_the_base_url_never_reach_the_error(monkeypatch):
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-from-env-0123456789")
    with FakeOpenAI(status=400) as base:
        cred_base = base.replace("http://", "http://alice:hunter2pw@")
        eng = to.get_engine("openai:m", base_url=cred_base, cache=False)
        with pytest.raises(to.EngineError) as err:
            eng.complete(MSG)
    said = _everything_said(err.value)
    assert "hunter2pw" not in said and "alice:" not in said


def test_scrub_masks_env_secrets_configured_keys_and_url_credentials(monkeypatch):
    monkeypatch.setenv("ACME_API_KEY", "acme-0123456789abcdef")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # short values are not secrets worth masking
    text = ("key acme-0123456789abcdef, cfg my-configured-key-42, url https://bob:s3cr3t@h.example/v1, "
            "header Bearer abc.def-ghi, sk-abcdefghijklmnopqrstuv, false")
    out = scrub(text, extra=["my-configured-key-42", None])
    for secret in ("acme-0123456789abcdef", "my-configured-key-42", "bob:s3cr3t", "abc.def-ghi", "sk-abcdefghij"):
        assert secret not in out
    assert out.endswith(", false") and "https://***@h.example/v1" in out


# -- dollars ----------------------------------------------------------------------------------------
def _price(model: str) -> tuple[float, float]:
    from textopt.engines.pricing import import_litellm

    entry = import_litellm().model_cost[model]
    return entry["input_cost_per_token"], entry["output_cost_per_token"]


def test_cost_of_a_known_model_comes_from_litellms_cost_map():
    with FakeOpenAI(model="gpt-4o-mini") as base:
        eng = to.get_engine("openai:gpt-4o-mini", base_url=base, api_key=KEY, cache=False)
        with to.track_usage() as run:
            c = eng.complete(MSG)
            eng.complete(MSG)
    pin, pout = _price("gpt-4o-mini")
    assert c.cost_usd == pytest.approx(1000 * pin + 100 * pout) and c.cost_usd > 0
    assert run.cost_usd == pytest.approx(2 * c.cost_usd) and run.cost_known
    assert eng.usage.to_dict()["cost_usd"] == pytest.approx(2 * c.cost_usd)


def test_unknown_models_have_unknown_cost_and_local_scripts_cost_nothing():
    with FakeOpenAI(model="my-finetune-xyz") as base:
        eng = to.get_engine("openai:my-finetune-xyz", base_url=base, cache=False)
        c = eng.complete(MSG)
    assert c.cost_usd is None and eng.usage.cost_known is False and eng.usage.cost_usd == 0
    s = to.ScriptedEngine("x")
    assert s.complete(MSG).cost_usd == 0.0 and s.usage.cost_known


def test_budget_usd_stops_further_calls():
    with FakeOpenAI(model="gpt-4o-mini") as base:
        eng = to.get_engine("openai:gpt-4o-mini", base_url=base, api_key=KEY, cache=False, budget_usd=1e-9)
        eng.complete(MSG)
        with pytest.raises(to.BudgetExceeded, match="dollar budget"):
            eng.complete(MSG)
        unknown = FakeOpenAI(model="mystery")
        with unknown as base2:
            eng2 = to.get_engine("openai:mystery", base_url=base2, cache=False, budget_usd=5.0)
            with pytest.raises(to.BudgetExceeded, match="no price"):
                eng2.complete(MSG)
        assert unknown.hits == 0  # refused before spending anything


def test_litellm_is_not_imported_to_price_a_call():
    """Pricing reads litellm's shipped cost map file; importing litellm itself would cost seconds."""
    code = (
        "import sys, textopt as to; from textopt.engines import pricing; to.ScriptedEngine('x').complete("
        "[{'role': 'user', 'content': 'q'}]); assert not pricing.loaded(); "
        "to.get_engine('openai:m', base_url='http://127.0.0.1:9/v1'); "
        "print(pricing.cost_usd(['gpt-4o-mini'], 1000, 0) > 0, 'litellm' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "True False"


# -- the HTTP path (issue 11: a lean client at high concurrency) --------------------------------------
@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_both_transports_keep_the_policy(transport):
    """aiohttp (the default when installed) and httpx send the same request and fail the same way: a refused
    connection and a hanging server are transient (retried, then a transient EngineError), a 401 is not."""
    pytest.importorskip("httpx_aiohttp") if transport == "aiohttp" else None
    with FakeOpenAI() as base:
        eng = to.get_engine("openai:m", base_url=base, api_key=KEY, cache=False, transport=transport)
        assert eng.transport == transport
        assert eng.complete(MSG).text == "hello" and eng.usage.prompt_tokens == 1000
    refused = to.get_engine("openai:m", base_url="http://127.0.0.1:9/v1", cache=False, transport=transport,
                            retries=1, retry_wait=0.01, max_time=5)
    with pytest.raises(to.EngineError) as err:
        refused.complete(MSG)
    assert err.value.transient is True and "2 attempts" in str(err.value) and "Connection error" in str(err.value)
    with FakeOpenAI(hang=30) as base:
        slow = to.get_engine("openai:m", base_url=base, cache=False, transport=transport, timeout=0.3, max_time=1.0,
                             retries=5, retry_wait=0.01)
        start = time.perf_counter()
        with pytest.raises(to.EngineError) as err:
            slow.complete(MSG)
        assert time.perf_counter() - start < 3.0 and err.value.transient is True
    with FakeOpenAI(status=401) as base:
        auth = to.get_engine("openai:m", base_url=base, api_key=KEY, cache=False, transport=transport, retry_wait=0.01)
        with pytest.raises(to.errors.AuthenticationFailed):
            auth.complete(MSG)


def test_transport_falls_back_to_httpx_without_the_aiohttp_extra(monkeypatch):
    from textopt.engines import openai as oe

    monkeypatch.setattr(oe, "_has_aiohttp", lambda: False)
    assert to.get_engine("openai:m", base_url="http://127.0.0.1:9/v1").transport == "httpx"
    with pytest.raises(ValueError, match=r"openai\[aiohttp\]"):
        to.get_engine("openai:m", base_url="http://127.0.0.1:9/v1", transport="aiohttp")
    with pytest.raises(ValueError, match="transport"):
        to.get_engine("openai:m", base_url="http://127.0.0.1:9/v1", transport="curl")


def test_the_body_sent_is_what_the_sdks_transform_would_send():
    """The engine posts the body it builds, skipping the SDK's per-request transform of typed parameters (a
    third of the client's time per call). Guard: for every shape we send (text, images, both JSON modes,
    options), that transform is the identity, so an SDK release where it isn't fails here."""
    import asyncio

    from openai._utils import async_maybe_transform
    from openai.types.chat import completion_create_params as params

    from textopt import image
    from textopt.image import openai_messages

    msgs = [{"role": "system", "content": "be brief"},
            {"role": "user", "content": ["look", to.Image(b"\x89PNG\r\n\x1a\n" + b"0" * 16), to.Image("https://example.com/a.png")]},
            {"role": "assistant", "content": "ok"}, {"role": "user", "content": "and now?"}]
    sent = [{"role": m["role"], "content": image.content(m["content"])} for m in msgs]
    schema = {"type": "object", "properties": {"a": {"type": "string"}, "n": {"type": "integer"}}, "required": ["a"]}
    eng = to.get_engine("openai:m", base_url="http://127.0.0.1:9/v1")
    for mode in ("json_schema", "json_object"):
        eng.json_mode = mode
        body = {"model": "m", "messages": openai_messages(sent), "temperature": 0.0, "max_tokens": 5, "seed": 1,
                "stop": ["\n"], "top_p": 0.9, "response_format": eng._response_format(schema)}
        assert asyncio.run(async_maybe_transform(body, params.CompletionCreateParamsNonStreaming)) == body


def test_a_base_url_with_credentials_keeps_the_httpx_transport():
    """aiohttp refuses user:password@ in the URL next to the SDK's Authorization header; httpx sends it."""
    pytest.importorskip("httpx_aiohttp")
    with_creds = to.get_engine("openai:m", base_url="http://user:pw@127.0.0.1:9/v1", api_key="k", cache=False)
    plain = to.get_engine("openai:m", base_url="http://127.0.0.1:9/v1", api_key="k", cache=False)
    assert with_creds.transport == "httpx" and plain.transport == "aiohttp"


class _Recorder:
    """A chat server that records each request (path, headers, body) and answers `reply` (status, bytes)."""

    def __init__(self, status: int = 200, body: bytes = b"") -> None:
        self.seen: list[tuple[str, dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                data = self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, data))
                reply = outer.body or json.dumps({"choices": [{"message": {"content": "hello"}}], "model": "m",
                                                  "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()
                self.send_response(outer.status)
                self.send_header("content-type", "application/json")
                self.send_header("x-request-id", "req-7")
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.status, self.body = status, body
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _sent(transport: str, status: int = 200, body: bytes = b"") -> tuple[Any, tuple[str, dict[str, str], bytes]]:
    """One call over `transport`: its result (a Completion, or the provider's exception) and what it sent."""
    from textopt._sync import run_sync
    from textopt.engines.base import Request

    recorder = _Recorder(status, body)
    with recorder as base:
        eng = to.get_engine("openai:m", base_url=base, api_key=KEY, cache=False, transport=transport, max_tokens=5)
        req = Request(messages=[{"role": "user", "content": "héllo ünïcode"}],
                      options={"temperature": 0.0, "max_tokens": 5, "seed": 1, "stop": ["\n"]}, timeout=12.5)
        try:
            out: Any = run_sync(eng._acomplete(req))
        except Exception as exc:  # noqa: BLE001 - the exception is the result under test
            out = exc
    return out, recorder.seen[0]


def test_the_direct_aiohttp_post_sends_and_fails_as_the_sdk_does():
    """On aiohttp the chat POST skips the SDK's request layer (BENCHMARKS (h): 1.4 ms of CPU per call). Guard:
    it sends what the SDK's own path (httpx transport) sends, byte for byte in the body and header for header,
    and a failed reply raises the SDK's exception of the same class, status, message and request id."""
    import urllib.request

    pytest.importorskip("httpx_aiohttp")
    if {"http", "all"} & set(urllib.request.getproxies()):
        pytest.skip("a proxy in the environment keeps the SDK's path on both transports")
    assert to.get_engine("openai:m", base_url="http://127.0.0.1:9/v1", transport="aiohttp")._direct is not None
    ok_a, (path_a, head_a, body_a) = _sent("aiohttp")
    ok_h, (path_h, head_h, body_h) = _sent("httpx")
    assert ok_a.text == ok_h.text == "hello" and ok_a.prompt_tokens == ok_h.prompt_tokens == 3
    assert path_a == path_h == "/v1/chat/completions" and body_a == body_h
    skip = {"host", "accept-encoding"}  # the port differs; each stack names the encodings it can decode
    assert {k: v for k, v in head_a.items() if k not in skip} == {k: v for k, v in head_h.items() if k not in skip}
    assert head_a["authorization"] == f"Bearer {KEY}" and head_a["x-stainless-read-timeout"] == "12.5"
    for status in (400, 401, 404, 429, 500):
        err_a, _ = _sent("aiohttp", status, b'{"error": {"message": "no", "type": "t"}}')
        err_h, _ = _sent("httpx", status, b'{"error": {"message": "no", "type": "t"}}')
        assert type(err_a) is type(err_h) and err_a.status_code == err_h.status_code == status
        assert str(err_a) == str(err_h) and err_a.body == err_h.body and err_a.request_id == err_h.request_id == "req-7"
    bad_a, _ = _sent("aiohttp", 200, b"<html>oops</html>")
    bad_h, _ = _sent("httpx", 200, b"<html>oops</html>")
    assert type(bad_a) is type(bad_h) is ValueError and str(bad_a) == str(bad_h)


def test_an_attempt_cannot_change_the_callers_request():
    """Each attempt gets its own copy of the request (the caller's messages are the cache key and the history)."""
    from textopt.engines.retry import attempt_request
    from textopt.engines.base import Request

    img = to.Image(b"\x89PNG\r\n\x1a\n" + b"0" * 16)
    req = Request(messages=[{"role": "user", "content": "hi"}, {"role": "user", "content": ["look", img]}],
                  json_schema={"type": "object", "properties": {"a": {"type": "string"}}},
                  options={"temperature": 0.0, "stop": ["\n"]})
    copy = attempt_request(req, 3.0)
    copy.messages[0]["content"] = "changed"
    copy.messages[1]["content"].append("more")
    copy.options["stop"].append("x")
    copy.options["seed"] = 1
    copy.json_schema["properties"]["b"] = {}
    assert copy.timeout == 3.0 and req.timeout is None
    assert req.messages[0]["content"] == "hi" and len(req.messages[1]["content"]) == 2
    assert req.options == {"temperature": 0.0, "stop": ["\n"]} and "b" not in req.json_schema["properties"]
