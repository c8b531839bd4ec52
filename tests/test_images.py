"""Images: to.Image values, the request shape the openai and litellm engines send (checked on a fake
OpenAI-compatible server on 127.0.0.1 that records each JSON body), cache keys by content hash, and one clear
error before any call where an engine or model can't take images (the real llama.cpp server: no request)."""
from __future__ import annotations

import base64
import hashlib
import json
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import textopt as to
from textopt.image import key_messages

# a 1x1 PNG
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1 in a daemon thread; `handle(body) -> (status, reply bytes)`."""

    def __init__(self, handle) -> None:
        outer = self
        self.bodies: list[dict] = []
        self.requests = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.requests += 1
                status, reply = handle(self.path, raw)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_openai():
    """A minimal OpenAI-compatible chat completions server that records every JSON body."""
    def handle(path, raw):
        body = json.loads(raw)
        server.bodies.append(body)
        return 200, json.dumps({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "a red dot"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        }).encode()

    server = _Server(handle)
    yield server
    server.close()


@pytest.fixture
def png_file(tmp_path):
    path = tmp_path / "dot.png"
    path.write_bytes(PNG)
    return path


# -- the value ------------------------------------------------------------------------------------
def test_image_from_path_bytes_or_url(png_file):
    sha = hashlib.sha256(PNG).hexdigest()
    from_file, from_bytes = to.Image(png_file), to.Image(PNG)
    assert from_file.sha256 == from_bytes.sha256 == sha and from_file == from_bytes
    assert from_file.mime_type == from_bytes.mime_type == "image/png"  # by name, and by the bytes
    assert from_bytes.to_url() == "data:image/png;base64," + base64.b64encode(PNG).decode()
    url = to.Image("https://example.com/cat.jpg")
    assert url.to_url() == "https://example.com/cat.jpg" and url.data() is None
    assert to.Image(from_bytes.to_url()).sha256 == sha  # a data URL hashes by its bytes
    with pytest.raises(FileNotFoundError, match="no image file"):
        to.Image(png_file.parent / "missing.png")
    with pytest.raises(TypeError):
        to.Image(3)


def test_variable_holds_an_image_and_reads_as_its_description(png_file):
    v = to.Variable(to.Image(png_file), role="photo")
    assert v.text == f"[image dot.png, sha256 {hashlib.sha256(PNG).hexdigest()[:12]}]"
    assert "iVBOR" not in v.text and "iVBOR" not in repr(v)
    with pytest.raises(TypeError, match="must be text"):
        to.Variable(to.Image(png_file), role="photo", requires_grad=True)


def test_cache_key_holds_the_hash_never_the_bytes(png_file):
    msgs = [{"role": "user", "content": ["What is this?", to.Image(png_file)]}]
    keyed = json.dumps(key_messages(msgs))
    assert hashlib.sha256(PNG).hexdigest() in keyed and base64.b64encode(PNG).decode()[:20] not in keyed


# -- the request shape ------------------------------------------------------------------------------
def test_openai_engine_sends_image_content_parts(fake_openai, png_file):
    eng = to.get_engine("openai:vision", base_url=fake_openai.url, supports_images=True, cache=False)
    out = to.LLMCall(eng)(to.Variable(to.Image(png_file), role="photo"))
    assert out.text == "a red dot"
    body = fake_openai.bodies[-1]
    assert body["messages"] == [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}}]}]
    # a field template with text around an image field: parts in order; a URL image goes as is
    call = to.FormattedLLMCall("Describe {{ photo }} in {{ style }}.", fields={"photo": "photo", "style": "style"}, engine=eng)
    call(photo=to.Image("https://example.com/cat.jpg"), style="one word")
    content = fake_openai.bodies[-1]["messages"][-1]["content"]
    assert content == [
        {"type": "text", "text": "Describe <photo>\n"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "text", "text": "\n</photo> in <style>\none word\n</style>."},
    ]


def test_litellm_engine_sends_image_content_parts(fake_openai):
    eng = to.get_engine("litellm:openai/vision", api_base=fake_openai.url, api_key="sk-test",
                        supports_images=True, cache=False)
    reply = eng.complete([{"role": "user", "content": ["What is it?", to.Image(PNG)]}], max_tokens=8)
    assert reply.text == "a red dot"
    assert fake_openai.bodies[-1]["messages"][-1]["content"] == [
        {"type": "text", "text": "What is it?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}},
    ]


def test_same_image_content_is_a_cache_hit_another_image_is_not(fake_openai, png_file, tmp_path):
    eng = to.get_engine("openai:vision", base_url=fake_openai.url, supports_images=True, cache=str(tmp_path / "c"))
    ask = lambda img: eng.complete([{"role": "user", "content": ["What is it?", img]}])  # noqa: E731
    assert not ask(to.Image(png_file)).cached
    assert ask(to.Image(PNG)).cached and fake_openai.requests == 1  # same bytes from another source: cached
    assert not ask(to.Image(PNG + b"\x00")).cached and fake_openai.requests == 2
    eng.cache.flush()  # entries are written by a background thread
    stored = "".join(p.read_text() for p in (tmp_path / "c").rglob("*.json"))
    assert stored and base64.b64encode(PNG).decode()[:20] not in stored


# -- engines that can't take images ---------------------------------------------------------------------
def test_text_only_engines_raise_one_clear_error_before_any_call(tmp_path):
    scripted = to.ScriptedEngine("x")
    with pytest.raises(to.ImagesNotSupported, match="scripted engine 'scripted' can't take images") as info:
        to.LLMCall(scripted)(to.Variable(to.Image(PNG), role="photo"))
    assert scripted.calls == [] and "\n" not in str(info.value)
    assert isinstance(info.value, to.EngineError)

    from textopt.engines.local import LocalEngine

    (tmp_path / "never-loaded.gguf").write_bytes(b"")     # exists (the path is checked eagerly) but is never loaded
    local = LocalEngine(model_path=tmp_path / "never-loaded.gguf")  # the error comes before the model is loaded
    with pytest.raises(to.ImagesNotSupported, match="local engine runs a text-only model"):
        local.complete([{"role": "user", "content": [to.Image(PNG)]}])
    assert local._worker is None and local.usage.calls == 0  # no worker started, no model loaded


def test_openai_engine_images_default_by_server():
    assert to.get_engine("openai:gpt-4o", api_key="sk-test").supports_images  # OpenAI's own API
    other = to.get_engine("openai:some-model", base_url="http://127.0.0.1:9/v1")
    assert not other.supports_images  # another server: only when told
    other.supports_images = True
    assert other.supports_images


class _CountingProxy(_Server):
    """Forwards POSTs to `upstream`, counting them: proof of what reached the real server."""

    def __init__(self, upstream: str) -> None:
        def handle(path, raw):
            req = urllib.request.Request(upstream.rstrip("/").removesuffix("/v1") + path, data=raw,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as resp:
                return resp.status, resp.read()

        super().__init__(handle)


@pytest.mark.local
@pytest.mark.server
def test_text_only_model_on_llama_server_fails_before_any_request(llama_server):
    proxy = _CountingProxy(llama_server)
    try:
        eng = to.get_engine("openai:smollm2", base_url=proxy.url, cache=False)
        with pytest.raises(to.ImagesNotSupported, match="openai engine 'smollm2' can't take images.*supports_images=True"):
            eng.complete([{"role": "user", "content": ["What is this?", to.Image(PNG)]}], max_tokens=8)
        assert proxy.requests == 0 and eng.usage.calls == 0
        reply = eng.complete([{"role": "user", "content": "Say hi."}], max_tokens=4)  # the same engine works for text
        assert isinstance(reply.text, str) and proxy.requests == 1
    finally:
        proxy.close()


def test_openai_shaped_parts_given_by_hand_are_images_too(fake_openai):
    eng = to.get_engine("openai:vision", base_url=fake_openai.url, supports_images=True, cache=False)
    eng.complete([{"role": "user", "content": [{"type": "text", "text": "What?"},
                                               {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}])
    assert fake_openai.bodies[-1]["messages"][-1]["content"][1] == {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    with pytest.raises(to.ImagesNotSupported):  # and so they are checked like any image
        to.ScriptedEngine("x").complete([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://e/a.png"}}]}])
