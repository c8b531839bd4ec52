"""Several servers behind one engine (litellm's Router): calls spread over the endpoints, and a run goes on
when one of them dies. Fast cases use small fake servers on 127.0.0.1; the server case uses two real
llama.cpp servers and kills one mid-run."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import textopt as to
from test_engines_policy import KEY, FakeOpenAI

MSG = [{"role": "user", "content": "hi"}]


def _dead_url() -> str:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def test_calls_spread_over_endpoints_and_survive_a_dead_one():
    a, b = FakeOpenAI(model="m"), FakeOpenAI(model="m")
    with a as url_a, b as url_b:
        eng = to.get_engine("router", endpoints=[{"model": "m", "base_url": url_a}, {"model": "m", "base_url": url_b},
                                                 {"model": "m", "base_url": _dead_url()}], cache=False, max_concurrency=4)

        async def batch(k: int) -> list[to.Completion]:
            return await asyncio.gather(*(eng.acomplete([{"role": "user", "content": f"q{k}-{i}"}]) for i in range(16)))

        # The Router picks endpoints at random (simple-shuffle): 16 calls leave one live endpoint with fewer
        # than 2 about once in 2,000 runs. Batches of 16 until both have 2 (at most 4 batches: ~1e-17 by
        # chance), so only a router that does not spread can fail this.
        out: list[to.Completion] = []
        while len(out) < 64 and (a.hits < 2 or b.hits < 2):
            out += asyncio.run(batch(len(out) // 16))
    assert [c.text for c in out] == ["hello"] * len(out)
    assert a.hits + b.hits == len(out) and a.hits >= 2 and b.hits >= 2
    assert eng.usage.calls == len(out) and eng.kind == "router"


def test_router_errors_are_scrubbed_and_endpoints_checked():
    with FakeOpenAI(status=401) as url:
        eng = to.get_engine("router", endpoints=[{"model": "m", "base_url": url, "api_key": KEY}], cache=False,
                            retry_wait=0.01)
        with pytest.raises(to.EngineError) as err:
            eng.complete(MSG)
    assert KEY not in str(err.value) and err.value.__cause__ is None
    with pytest.raises(ValueError, match="needs endpoints"):
        to.get_engine("router")
    with pytest.raises(ValueError, match="unknown keys"):
        to.get_engine("router", endpoints=[{"model": "m", "url": "x"}])


# -- two real llama.cpp servers ----------------------------------------------------------------------
def _start_llama(model_path: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path), "--model_alias", "smollm2",
           "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--seed", "0", "--n_threads", "1"]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"llama.cpp server exited:\n{log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("llama.cpp server did not start in 120 s")
            time.sleep(0.5)


@pytest.mark.local
@pytest.mark.server
def test_two_llama_servers_share_calls_and_the_run_survives_killing_one(model_path, tmp_path):
    procs = []
    try:
        for i in range(2):
            procs.append(_start_llama(model_path, tmp_path / f"server{i}.log"))
        counted = [FakeCounter(url) for _, url in procs]
        eng = to.get_engine("router", endpoints=[{"model": "smollm2", "base_url": c.url} for c in counted],
                            cache=False, max_tokens=4, max_concurrency=2, timeout=60)
        # The Router picks at random (simple-shuffle), so 12 calls all land on one server once in 2,048 runs:
        # call until both have answered, at most 40 times (by chance all on one: ~2e-12).
        texts = []
        while len(texts) < 12 or (min(c.requests for c in counted) < 1 and len(texts) < 40):
            texts.append(eng.complete([{"role": "user", "content": f"Say {len(texts)}."}]).text)
        assert all(isinstance(t, str) for t in texts)
        first = [c.requests for c in counted]
        assert sum(first) == len(texts) and min(first) >= 1, first  # both servers answered
        procs[0][0].kill()
        procs[0][0].wait(10)
        more = [eng.complete([{"role": "user", "content": f"Name {i}."}]) for i in range(4)]
        assert len(more) == 4 and eng.usage.calls == len(texts) + 4  # every call still answered, by the live server
        assert counted[1].requests - first[1] == 4
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
        for c in locals().get("counted", []):
            c.close()


class FakeCounter:
    """A counting pass-through in front of one server (the proxy from test_engines_server)."""

    def __init__(self, upstream: str) -> None:
        from test_engines_server import CountingProxy

        self.proxy = CountingProxy(upstream)
        self.url = self.proxy.__enter__()

    @property
    def requests(self) -> int:
        return self.proxy.requests

    def close(self) -> None:
        self.proxy.__exit__(None, None, None)
