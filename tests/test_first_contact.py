"""A new user's first runs, through the CLI in subprocesses (issue 23): a missing key, a dead server and a key
refused mid-run each end in one line and a non-zero exit, never in a run that reports accuracies of zero
answers; Ctrl-C at any moment exits within 5 s with a line that is true, and the run resumes; MLflow tracks
into a sqlite store that reads back; search runs plot their pool; --out on a file fails before anything."""
from __future__ import annotations

import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAKE = ["--engine", "fake", "--task", "object_counting", "--optimizer", "tgd", "--batch-size", "2", "--eval-size", "4",
        "--val-size", "3"]
#: Every subprocess exit time measured after a SIGINT, printed at the end of the session (pytest -s shows it).
EXIT_TIMES: list[tuple[str, float]] = []


def env_for(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k not in ("OPENAI_BASE_URL",)}
    return {**env, "TEXTOPT_CACHE_DIR": str(tmp / "cache"), "PYTHONPATH": str(ROOT), **extra}


def textopt(tmp: Path, *args: str, timeout: float = 120, **env: str) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "textopt", *args], env=env_for(tmp, **env), capture_output=True,
                         text=True, timeout=timeout, cwd=tmp)
    return res, time.monotonic() - start


def one_error_line(res: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert lines and "Traceback" not in res.stderr, res.stderr[-2000:]
    return lines[-1]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed when the block ends: nothing listens there


# -- fail fast -------------------------------------------------------------------------------------
def test_openai_without_a_key_is_one_line_naming_the_flags(tmp_path):
    pytest.importorskip("openai")
    res, took = textopt(tmp_path, "optimize", "--engine", "openai:gpt-4o-mini", "--out", str(tmp_path / "run"))
    line = one_error_line(res)
    assert res.returncode == 2 and took < 30, (took, res.stderr)
    assert "OPENAI_API_KEY" in line and "--base-url" in line and "api_key=" not in line and "base_url=" not in line
    assert not (tmp_path / "run").exists() and "accuracy" not in res.stdout


def test_litellm_without_a_key_is_one_line_before_any_call(tmp_path):
    pytest.importorskip("litellm")
    res, took = textopt(tmp_path, "optimize", "--engine", "litellm:anthropic/claude-3-5-haiku-latest",
                        "--out", str(tmp_path / "run"), timeout=180)
    line = one_error_line(res)
    assert res.returncode == 2, res.stderr
    assert "ANTHROPIC_API_KEY" in line and "litellm engine" in line, line
    assert not (tmp_path / "run").exists() and "accuracy" not in res.stdout and "0 tokens" not in res.stdout


def test_a_dead_base_url_is_one_line_at_once(tmp_path):
    pytest.importorskip("openai")
    url = f"http://127.0.0.1:{closed_port()}/v1"
    res, took = textopt(tmp_path, "optimize", "--engine", "openai:x", "--base-url", url, "--out", str(tmp_path / "run"))
    line = one_error_line(res)
    assert res.returncode == 2 and took < 30, (took, res.stderr)
    assert "openai engine 'x'" in line and "nothing answers (connection failed" in line and "--base-url" in line, line
    assert not (tmp_path / "run").exists()


def test_out_pointing_at_a_file_fails_before_it_is_announced(tmp_path):
    target = tmp_path / "afile"
    target.write_text("not a directory\n")
    res, _ = textopt(tmp_path, "optimize", *FAKE, "--steps", "1", "--out", str(target))
    line = one_error_line(res)
    assert res.returncode == 2 and "is a file" in line and "--out" in line
    assert "run directory" not in res.stderr.replace(line, "") and target.read_text() == "not a directory\n"


class Server:
    """An OpenAI-compatible server on 127.0.0.1 whose replies are the fake engine's (JSON of the requested
    shape, else a short answer); after `refuse_after` chat calls it answers 401 until `refuse_after` is None."""

    def __init__(self, refuse_after: int | None) -> None:
        from textopt.engines.base import Request
        from textopt.engines.fake import fake_reply

        self.refuse_after, self.chats, self.refused = refuse_after, 0, 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": "m", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                owner.chats += 1
                if owner.refuse_after is not None and owner.chats > owner.refuse_after:
                    owner.refused += 1
                    return self._send(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error",
                                                      "code": "invalid_api_key"}})
                fmt = body.get("response_format") or {}
                schema = (fmt.get("json_schema") or {}).get("schema") or fmt.get("schema")
                text = fake_reply(Request(messages=body["messages"], json_schema=schema,
                                          options={"temperature": body.get("temperature")}))
                self._send(200, {"id": "c", "object": "chat.completion", "model": "m",
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                              "finish_reason": "stop"}],
                                 "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_key_refused_mid_run_stops_the_run_and_it_resumes(tmp_path):
    pytest.importorskip("openai")
    server = Server(refuse_after=14)
    run = tmp_path / "run"
    args = ["optimize", "--engine", "openai:m", "--base-url", server.url, "--task", "object_counting", "--optimizer",
            "tgd", "--steps", "4", "--batch-size", "2", "--eval-size", "4", "--val-size", "3", "--out", str(run)]
    try:
        res, took = textopt(tmp_path, *args, OPENAI_API_KEY="sk-test-123")
        line = one_error_line(res)
        assert res.returncode == 1, res.stderr[-2000:]
        assert ("answered none of its last" in line or "refused the credentials" in line), line
        assert "sk-test-123" not in res.stderr + res.stdout
        assert server.refused <= 12, server.refused  # it stopped; it didn't go on asking for every example
        assert "accuracy" not in res.stdout and not (run / "result.json").exists()
        assert (run / "spec.json").exists()
        server.refuse_after = None  # the key works again: the same run continues to the end
        done, _ = textopt(tmp_path, "resume", str(run), OPENAI_API_KEY="sk-test-123")
        assert done.returncode == 0, done.stderr[-2000:]
        assert "accuracy after" in done.stdout and json.loads((run / "result.json").read_text())["steps"] >= 1
    finally:
        server.close()


def test_zero_answers_are_never_reported_as_an_accuracy(tmp_path):
    """Every call refused from the first: the readiness check sees the 401 and nothing runs."""
    pytest.importorskip("openai")

    server = Server(refuse_after=0)
    try:
        res, _ = textopt(tmp_path, "optimize", "--engine", "openai:other", "--base-url", server.url, *FAKE[2:],
                         "--steps", "1", "--out", str(tmp_path / "run"), OPENAI_API_KEY="sk-x")
        line = one_error_line(res)
        assert res.returncode == 2 and "refused the API key" in line and "OPENAI_API_KEY" in line, line
        assert "accuracy" not in res.stdout and not (tmp_path / "run").exists()
    finally:
        server.close()


# -- Ctrl-C ------------------------------------------------------------------------------------------
def start(tmp: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "textopt", *args], env=env_for(tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp)


def interrupt(proc: subprocess.Popen, label: str) -> tuple[str, str, float]:
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - sent
    EXIT_TIMES.append((label, round(took, 2)))
    print(f"exit after SIGINT ({label}): {took:.2f} s")
    assert proc.returncode == 130, (proc.returncode, err[-2000:])
    assert took < 5.0, f"{label}: exited {took:.1f} s after SIGINT"
    assert "Traceback" not in err, err[-2000:]
    return out, err, took


def check_line_is_true(err: str, run: Path) -> str:
    """The interrupted line says what is on disk, and nothing more."""
    line = err.strip().splitlines()[-1]
    if line.endswith(f"continue with `textopt resume {run}`"):
        assert (run / "checkpoint.json").exists()
        return "checkpoint"
    if "interrupted before the first step completed" in line:
        assert (run / "spec.json").exists() and not (run / "checkpoint.json").exists()
        return "spec"
    assert "interrupted before the run started; nothing was saved" in line, line
    assert not (run / "spec.json").exists()
    return "nothing"


SLOW = [*FAKE, "--latency", "0.4", "--steps", "8", "--concurrency", "2", "--no-cache"]


@pytest.mark.parametrize("after", [1.0, 10.0])
def test_ctrl_c_at_a_moment_exits_in_5_s_and_resumes(tmp_path, after):
    run = tmp_path / "run"
    proc = start(tmp_path, "optimize", *SLOW, "--out", str(run))
    time.sleep(after)
    assert proc.poll() is None, "the run ended before the signal: make it slower"
    _, err, _ = interrupt(proc, f"optimize at {after:g} s")
    state = check_line_is_true(err, run)
    if after >= 1.0:
        assert state != "nothing", "the run directory must exist within the first second"
    res, _ = textopt(tmp_path, "resume", str(run), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["stopped"] == "completed"
    if state == "spec":
        assert "stopped before its first step: starting it" not in res.stdout  # --json: notes stay off stdout


def test_ctrl_c_mid_step_exits_in_5_s_and_resumes(tmp_path):
    run = tmp_path / "run"
    proc = start(tmp_path, "optimize", *SLOW, "--out", str(run), "--json")
    for line in proc.stdout:
        ev = json.loads(line)
        if ev["event"] == "step" and ev["step"] >= 1:
            break
    time.sleep(1.0)  # inside the next step (a step is several 0.4 s calls)
    _, err, _ = interrupt(proc, "optimize mid-step")
    assert check_line_is_true(err, run) == "checkpoint"
    res, _ = textopt(tmp_path, "resume", str(run), "--json")
    assert res.returncode == 0 and json.loads(res.stdout.strip().splitlines()[-1])["stopped"] == "completed"


def test_ctrl_c_of_a_resume_and_of_aegis_exit_in_5_s(tmp_path):
    run = tmp_path / "run"
    proc = start(tmp_path, "optimize", *SLOW, "--out", str(run), "--json")
    for line in proc.stdout:
        if json.loads(line)["event"] == "step":
            break
    interrupt(proc, "optimize after step 0")
    proc = start(tmp_path, "resume", str(run))
    time.sleep(3.0)
    _, err, _ = interrupt(proc, "resume at 3 s")
    assert check_line_is_true(err, run) == "checkpoint"
    aegis = tmp_path / "aegis"
    proc = start(tmp_path, "aegis", "--engine", "fake", "--latency", "0.2", "--rounds", "3", "--out", str(aegis))
    time.sleep(4.0)
    _, err, _ = interrupt(proc, "aegis at 4 s")
    check_line_is_true(err, aegis)
    assert (aegis / "spec.json").exists()


BLOCKING = """
import sys, time
import textopt.engines.fake as fake

async def stuck(self, request):  # a call that can't be cancelled: a thread blocked in C-like code
    await self._in_worker(time.sleep, 120)
    raise AssertionError("unreachable")

fake.FakeEngine._acomplete = stuck
from textopt.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_with_a_call_stuck_in_a_thread_still_exits_in_5_s(tmp_path):
    script = tmp_path / "stuck.py"
    script.write_text(BLOCKING)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), "optimize", *FAKE, "--steps", "2", "--no-cache", "--out", str(run)],
                            env=env_for(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    time.sleep(3.0)
    _, err, _ = interrupt(proc, "a call stuck in a thread")
    assert check_line_is_true(err, run) == "spec"
    res, _ = textopt(tmp_path, "resume", str(run))  # the real fake engine now: the run starts and completes
    assert res.returncode == 0 and "stopped before its first step: starting it" in res.stderr, res.stderr[-2000:]
    assert json.loads((run / "result.json").read_text())["steps"] == 2


def test_an_engine_that_answers_nothing_stops_after_a_few_calls():
    import asyncio

    from textopt.engines.base import Completion, Engine
    from textopt.errors import EngineError, EngineUnavailable

    class Flaky(Engine):
        kind = "flaky"

        def __init__(self) -> None:
            super().__init__("m", cache=False, retries=0)
            self.calls, self.up = 0, False

        async def _acomplete(self, request):
            self.calls += 1
            if not self.up:
                raise ConnectionRefusedError(111, "Connection refused")
            return Completion("ok", 1, 1)

    async def go(engine: Flaky) -> list[str]:
        seen = []
        for _ in range(5):
            try:
                await engine.acomplete([{"role": "user", "content": "hi"}])
                seen.append("ok")
            except EngineUnavailable:
                seen.append("stop")
            except EngineError:
                seen.append("error")
        return seen

    engine = Flaky()
    assert asyncio.run(go(engine)) == ["error", "error", "error", "stop", "stop"]
    assert engine.calls == 3  # nothing more was sent once the run was told to stop
    engine._dead_calls = 2  # a server that answers again resets the count
    engine.up = True
    assert asyncio.run(go(engine)) == ["ok"] * 5 and engine._dead_calls == 0


# -- the rest of first contact -------------------------------------------------------------------------
def test_search_run_writes_curves_of_its_pool_or_says_why_not(tmp_path):
    run = tmp_path / "run"
    res, _ = textopt(tmp_path, "optimize", "--engine", "fake", "--task", "sentiment", "--eval-size", "4", "--val-size", "4",
                     "--batch-size", "2", "--budget-metric-calls", "30", "--out", str(run))
    assert res.returncode == 0, res.stderr[-2000:]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "plot curves.png skipped: matplotlib is not installed" in res.stderr
        assert not (run / "curves.png").exists()
        return
    png = run / "curves.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_plot_search_marks_the_front_and_the_best():
    pytest.importorskip("matplotlib")
    from textopt.search.report import plot_search

    pool = [
        {"id": 0, "parents": [], "changed": [], "values": {"p": "a"}, "val_scores": [1.0, 0.0], "metric_calls": 2},
        {"id": 1, "parents": [0], "changed": ["p"], "values": {"p": "b"}, "val_scores": [0.0, 1.0], "kind": "mutation",
         "metric_calls": 8},
        {"id": 2, "parents": [1], "changed": ["p"], "values": {"p": "c"}, "val_scores": [0.0, 0.0], "kind": "mutation",
         "metric_calls": 12},
    ]
    fig = plot_search({"pool": pool, "stopped": "budget_metric_calls", "metric_calls": 20})
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    assert "Pareto front" in labels and "best #0" in labels and "candidate" in labels
    front = next(c for c in ax.collections if c.get_label() == "Pareto front")
    assert sorted(map(tuple, front.get_offsets().tolist())) == [(2.0, 0.5), (8.0, 0.5)]  # #2 leads nothing: not on it
    assert ax.get_xlabel().startswith("metric calls")


def test_build_api_without_pdoc_names_the_dev_extra(tmp_path):
    code = ("import runpy, sys; sys.modules['pdoc'] = None; sys.argv = ['build_api.py', %r]; "
            "runpy.run_path(%r, run_name='__main__')" % (str(tmp_path / "api"), str(ROOT / "docs" / "build_api.py")))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "pdoc is not installed" in res.stderr and "[dev]" in res.stderr


def test_mlflow_help_names_the_extra(tmp_path):
    res, _ = textopt(tmp_path, "optimize", "--help")
    assert "pip install 'textopt[mlflow]'" in " ".join(res.stdout.split()) and "sqlite:///" in res.stdout


def test_mlflow_tracks_into_a_sqlite_store_that_reads_back(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("alembic")
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    run = tmp_path / "run"
    res, _ = textopt(tmp_path, "optimize", *FAKE, "--steps", "3", "--out", str(run), "--mlflow", uri, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert db.exists()
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("textopt")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED" and r.data.tags["textopt.run_dir"] == str(run)
    assert r.data.params["engine"] == "fake" and r.data.params["task"] == "object_counting"
    assert r.data.params["steps"] == "3"
    history = client.get_metric_history(r.info.run_id, "tokens")
    assert sorted(m.step for m in history) == [0, 1, 2, 3]
    assert all(m.value > 0 for m in history if m.step > 0)
    artifacts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"spec.json", "history.json", "evals", "parameters.json"} <= artifacts, artifacts
    evals = {a.path for a in client.list_artifacts(r.info.run_id, "evals")}
    assert "evals/test_before.jsonl" in evals and "evals/test_after.jsonl" in evals, evals
    assert "result.json" in artifacts and {"accuracy_before", "accuracy_after"} <= set(r.data.metrics)


def test_mlflow_tracks_a_search_run_with_its_held_out_scores(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("alembic")
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res, _ = textopt(tmp_path, "optimize", "--engine", "fake", "--task", "sentiment", "--eval-size", "3", "--val-size", "3",
                     "--batch-size", "2", "--budget-metric-calls", "20", "--out", str(tmp_path / "run"), "--mlflow", uri,
                     timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    client = MlflowClient(uri, registry_uri=uri)
    (r,) = client.search_runs([client.get_experiment_by_name("textopt").experiment_id])
    assert r.info.status == "FINISHED" and r.data.params["kind"] == "search"
    steps = [m.step for m in client.get_metric_history(r.info.run_id, "metric_calls")]
    assert steps == list(range(len(steps))) and len(steps) >= 2
    evals = {a.path for a in client.list_artifacts(r.info.run_id, "evals")}
    assert {"evals/test_before.jsonl", "evals/test_after.jsonl", "evals/candidate_0.jsonl"} <= evals, evals


@pytest.mark.server
def test_mlflow_tracks_to_a_server_on_localhost(tmp_path):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    port = closed_port()
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                               f"sqlite:///{tmp_path / 'server.db'}", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                # a server that exits is a failure of what [mlflow] installs (it once lacked flask and flask-cors)
                assert server.poll() is None, (tmp_path / "server.log").read_text(errors="replace")[-2000:]
                if time.monotonic() > deadline:
                    pytest.skip("mlflow server did not open its port on 127.0.0.1 within 90 s")
                time.sleep(0.5)
        time.sleep(2.0)  # the port opens a moment before the app answers
        res, _ = textopt(tmp_path, "optimize", *FAKE, "--steps", "2", "--out", str(tmp_path / "run"), "--mlflow", uri,
                         timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        client = MlflowClient(uri)
        (r,) = client.search_runs([client.get_experiment_by_name("textopt").experiment_id])
        assert r.info.status == "FINISHED" and [m.step for m in client.get_metric_history(r.info.run_id, "val")] == [0, 1, 2]
        assert {"spec.json", "result.json", "evals"} <= {a.path for a in client.list_artifacts(r.info.run_id)}
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        log.close()


@pytest.mark.parametrize("uri", ["sqlite:/relative.db", "file:./mlruns"])
def test_an_mlflow_uri_that_fails_is_one_line_with_one_that_works(tmp_path, uri):
    mlflow = pytest.importorskip("mlflow")
    if uri.startswith("file:") and int(mlflow.__version__.split(".")[0]) < 3:
        pytest.skip("MLflow 2 still writes file stores")
    res, _ = textopt(tmp_path, "optimize", *FAKE, "--steps", "1", "--out", str(tmp_path / "run"), "--mlflow", uri,
                     timeout=120)
    line = one_error_line(res)
    assert res.returncode == 2 and "sqlite:///mlflow.db" in line and not (tmp_path / "run").exists(), line


@pytest.fixture(scope="module", autouse=True)
def _report_exit_times():
    yield
    if EXIT_TIMES:
        print("\nexit times after SIGINT: " + ", ".join(f"{label} {t:.2f} s" for label, t in EXIT_TIMES))
