"""Shared fixtures. Unit tests use the scripted engine; integration tests use real parts:
the embedded SmolLM2 model through llama.cpp, and llama.cpp's OpenAI-compatible server on 127.0.0.1."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own cache folder: no test writes to ~/.cache, none sees another's entries."""
    path = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("TEXTOPT_CACHE_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def model_path() -> Path:
    from textopt.engines.local import smollm2_path

    return smollm2_path()


@pytest.fixture(scope="session")
def local_engine(model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """The real embedded model (loaded once per session); its cache lives in a session temp folder."""
    from textopt.engines.local import LocalEngine

    return LocalEngine(model_path, cache=str(tmp_path_factory.mktemp("local-cache")), n_ctx=4096)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """llama.cpp's OpenAI-compatible server serving SmolLM2 on 127.0.0.1; yields its base URL."""
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path), "--model_alias", "smollm2",
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--seed", "0",
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"llama.cpp server did not start in 120 s:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
