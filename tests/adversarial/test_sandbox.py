"""Issue 13.1: LLM-written code for @trace(trainable=True) runs in a worker process by default.

Every case here is code an optimizer might write. Before the sandbox each of them either ended or wedged
the caller's process, escaped as a raw exception, kept spinning after its time limit, or handed the
caller's API key back as output. Cases that would end the test process on unprotected code (exits,
interrupts, hangs outside the time limit) run in a child python, so that they fail cleanly there.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import textopt as to
from textopt.sandbox import Sandbox, clean_environ

ROOT = Path(to.__file__).resolve().parent.parent
SECRETS = {"OPENAI_API_KEY": "sk-adversarial-0001", "MY_SERVICE_TOKEN": "tok-adversarial-0002",
           "DB_PASSWORD": "pw-adversarial-0003", "AWS_SECRET_ACCESS_KEY": "aws-adversarial-0004",
           "GCP_CREDENTIALS": "gcp-adversarial-0005", "PROXY_URL": "http://bob:pw-adversarial-0006@proxy:8080"}


@pytest.fixture(scope="module")
def small_box():
    """A pool with a low memory limit, shared by the memory tests (512 MiB of address space)."""
    box = Sandbox(memory_limit=512 * 2**20, max_workers=1)
    yield box
    box.close()


def strategy_fn(**options):
    @to.trace(trainable=True, **options)
    def strategy(question: str) -> str:
        return question

    return strategy


# -- exits and interrupts: run in a child python, whose survival is the assertion ---------------
DRIVER = """
import json, sys, time
import textopt as to
import hostile
t = time.monotonic()
out = {"raised": None}
try:
    hostile.strategy.code.set_value(hostile.CODE)
    out["value"] = hostile.strategy("q").value
except to.TraceError as err:
    out = {"raised": "TraceError", "node": err.variable.value, "message": str(err)}
except Exception as err:
    out = {"raised": type(err).__name__, "message": str(err)}
out["seconds"] = time.monotonic() - t
hostile.strategy.code.set_value("def strategy(question):\\n    return question + '!'")
out["after"] = hostile.strategy("q").value
print("RESULT " + json.dumps(out))
"""


def run_child(tmp_path: Path, code: str, timeout: float = 1.0, wait: float = 25.0,
              env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """Run hostile `code` as the new version of a trainable function, in a child python (default isolation)."""
    (tmp_path / "hostile.py").write_text(textwrap.dedent(f"""
        import textopt as to
        CODE = {code!r}

        @to.trace(trainable=True, timeout={timeout})
        def strategy(question):
            return question
        """))
    (tmp_path / "driver.py").write_text(DRIVER)
    env = dict(os.environ, **(env or {}), PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    try:
        proc = subprocess.run([sys.executable, str(tmp_path / "driver.py")], capture_output=True, text=True,
                              timeout=wait, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the calling process hung for {wait} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"the calling process ended: rc={proc.returncode}\n{proc.stderr[-2000:]}"
    return proc, json.loads(lines[-1][len("RESULT "):])


def test_isolated_code_sees_no_secret_environment_variables(tmp_path):
    code = ("def strategy(question):\n"
            "    import os\n"
            "    try:\n"
            "        raw = open('/proc/self/environ', 'rb').read().decode('utf-8', 'replace')\n"
            "    except OSError:\n"
            "        raw = ''\n"
            "    return repr(dict(os.environ)) + raw + str(os.environ.get('OPENAI_API_KEY'))")
    _, out = run_child(tmp_path, code, env=dict(SECRETS, TEXTOPT_PROBE="visible"))
    assert out["raised"] is None and "'PATH'" in out["value"]  # the minimal environment reached the code
    assert "TEXTOPT_PROBE" not in out["value"]  # issue 24: only the minimal environment, not the rest
    for k, v in SECRETS.items():
        assert v not in out["value"], f"{k} reached the isolated code"
    assert clean_environ({"OPENAI_API_KEY": "x", "PATH": "/bin"}) == {"PATH": "/bin"}


@pytest.mark.parametrize("body, named", [
    ("def strategy(question):\n    import sys\n    sys.exit(3)", "sys.exit(3)"),
    ("def strategy(question):\n    import os\n    os._exit(7)", "exited with code 7"),
    ("def strategy(question):\n    raise KeyboardInterrupt", "KeyboardInterrupt"),
], ids=["sys.exit", "os._exit", "KeyboardInterrupt"])
def test_exits_and_interrupts_become_error_nodes_and_the_caller_survives(tmp_path, body, named):
    _, out = run_child(tmp_path, body)
    assert out["raised"] == "TraceError" and named in out["node"] and named in out["message"]
    assert out["after"] == "q!"  # the worker was replaced: the next version runs


def test_module_level_hang_is_an_error_node_within_the_limit(tmp_path):
    _, out = run_child(tmp_path, "_x = [i for i in iter(int, 1)]\ndef strategy(question):\n    return question",
                       timeout=1.0)
    assert out["raised"] == "TraceError" and "TimeoutError" in out["node"] and "1 s" in out["node"]
    assert out["seconds"] < 3.0 and out["after"] == "q!"


def test_default_memory_limit_stops_a_huge_allocation(tmp_path):
    _, out = run_child(tmp_path, "def strategy(question):\n    return str(len(bytes(4 * 2**30)))")
    assert out["raised"] == "TraceError" and "MemoryError" in out["node"] and "2048 MiB" in out["node"]
    assert out["after"] == "q!"


# -- in-process cases (they fail cleanly on unprotected code) -----------------------------------
def test_module_level_error_is_an_error_node_with_the_line_marked():
    strategy = strategy_fn()
    strategy.code.set_value("_x = 1/0\ndef strategy(question: str) -> str:\n    return question")
    with pytest.raises(to.TraceError) as info:
        strategy("q")
    node = info.value.variable
    assert "ZeroDivisionError" in node.value and ">> 1 | _x = 1/0" in node.value and strategy.code in node.parents


def test_loop_catching_base_exception_is_killed_not_left_spinning():
    strategy = strategy_fn(timeout=0.5)
    strategy.code.set_value(
        "def strategy(question: str) -> str:\n"
        "    while True:\n"
        "        try:\n"
        "            while True:\n"
        "                pass\n"
        "        except BaseException:\n"
        "            pass")
    threads = threading.active_count()
    t0 = time.monotonic()
    with pytest.raises(to.TraceError, match="TimeoutError"):
        strategy("q")
    assert time.monotonic() - t0 < 2.5
    time.sleep(0.1)
    cpu0, wall0 = time.process_time(), time.monotonic()
    time.sleep(0.5)
    spent = time.process_time() - cpu0
    assert spent < 0.2 * (time.monotonic() - wall0), f"something still spins in this process ({spent:.2f} s of CPU)"
    assert threading.active_count() <= threads


@pytest.mark.parametrize("body", [
    "def strategy(question: str) -> str:\n    chunks = []\n    for _ in range(8):\n        chunks.append(bytes(2**30))\n    return str(len(chunks))",
    "def strategy(question: str) -> str:\n    chunks = []\n    for _ in range(1536):\n        chunks.append(b'x' * 2**20)\n    return str(len(chunks))",
], ids=["reserved-8GiB", "touched-1.5GiB"])
def test_memory_blow_up_is_stopped(small_box, body):
    strategy = strategy_fn(isolation=small_box, timeout=10)
    strategy.code.set_value(body)
    with pytest.raises(to.TraceError) as info:
        strategy("q")
    assert "MemoryError" in info.value.variable.value and "512 MiB" in info.value.variable.value
    strategy.code.set_value("def strategy(question: str) -> str:\n    return question * 2")
    assert strategy("q").value == "qq"  # a fresh worker took over


# -- what the isolation means for ordinary code --------------------------------------------------
def test_worker_is_warm_between_calls_and_replaced_after_a_crash():
    box = Sandbox(max_workers=1)
    try:
        strategy = strategy_fn(isolation=box)
        strategy.code.set_value("import os\ndef strategy(question: str) -> str:\n    return f'{question}:{os.getpid()}'")
        pids = {strategy(str(i)).value.split(":")[1] for i in range(5)}
        assert len(pids) == 1 and int(pids.pop()) != os.getpid() and box.started == 1
        strategy.code.set_value("import os\ndef strategy(question: str) -> str:\n    os._exit(1)")
        with pytest.raises(to.TraceError, match="exited with code 1"):
            strategy("q")
        strategy.code.set_value("def strategy(question: str) -> str:\n    return question.upper()")
        assert strategy("ok").value == "OK" and box.started == 2
    finally:
        box.close()


def test_a_closure_that_cannot_cross_the_process_boundary_names_the_opt_out():
    lock = threading.Lock()

    @to.trace(trainable=True)
    def guarded(question: str) -> str:
        with lock:
            return question

    with pytest.raises(to.TraceError, match='isolation="thread"') as info:
        guarded("q")
    assert "'lock'" in str(info.value)

    @to.trace(trainable=True, isolation="thread")
    def guarded_here(question: str) -> str:
        with lock:
            return question

    assert guarded_here("q").value == "q"


def test_opt_out_runs_in_this_process():
    seen: list[str] = []

    @to.trace(trainable=True, isolation="none")
    def local(question: str) -> str:
        seen.append(question)
        return str(os.getpid())

    assert local("q").value == str(os.getpid()) and seen == ["q"]
    assert strategy_fn()("q").value == "q"
    with pytest.raises(ValueError, match="isolation"):
        strategy_fn(isolation="container")


def test_a_result_cannot_run_code_in_the_caller_when_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    strategy = strategy_fn()
    strategy.code.set_value(
        "def strategy(question: str) -> str:\n"
        "    import os\n"
        "    class Payload:\n"
        "        def __reduce__(self):\n"
        f"            return (os.system, ('touch {marker}',))\n"
        "    return Payload()")
    with pytest.raises(to.TraceError, match="refused"):
        strategy("q")
    assert not marker.exists()


def test_async_trainable_code_runs_isolated():
    import asyncio

    @to.trace(trainable=True)
    async def answer(question: str) -> str:
        return question

    answer.code.set_value("async def answer(question: str) -> str:\n    import asyncio, os\n"
                          "    await asyncio.sleep(0)\n    return str(os.getpid())")
    out = asyncio.run(answer.acall("q"))
    assert out.value != str(os.getpid()) and answer.code in out.parents
