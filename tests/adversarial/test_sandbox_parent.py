"""Issue 24: isolated code that attacks the parent. Each case is a few lines an optimizer could write; before
the fix each one hung the caller, read its API key through /proc, exhausted its memory, ended it with a
signal, or was refused with a wrong reason. Cases that could end or hang the test process run in a child
python whose survival (within a deadline) is the assertion; every case has a hard timeout."""
from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import textopt as to
from textopt.sandbox import MAX_REPLY_BYTES, Sandbox, _names, build_job, minimal_environ

ROOT = Path(to.__file__).resolve().parent.parent
KEY = "sk-issue24-parent-key-0123456789"


@functools.lru_cache(maxsize=1)
def namespaces_work() -> bool:
    """Whether workers get their own namespaces here (asked once, when a test first needs to know)."""
    if not sys.platform.startswith("linux"):
        return False
    box = Sandbox(max_workers=1)
    try:
        fn = _fn(box, "def strategy(question: str) -> str:\n    return question")
        fn("q")
        return box.mode == "namespaces"
    finally:
        box.close()


def _fn(box, code: str, timeout: float = 5.0):
    @to.trace(trainable=True, isolation=box, timeout=timeout)
    def strategy(question: str) -> str:
        return question

    strategy.code.set_value(code)
    return strategy


@pytest.fixture
def needs_namespaces():
    if not namespaces_work():
        pytest.skip("unprivileged user namespaces are not available here")


@pytest.fixture(params=[True, False], ids=["namespaces", "session"])
def box(request):
    """A pool per isolation mode: with namespaces (where Linux allows) and with the launcher and session only."""
    if request.param and not namespaces_work():
        pytest.skip("unprivileged user namespaces are not available here")
    b = Sandbox(max_workers=1, namespaces=request.param)
    yield b
    b.close()


def strategy_in(box, code: str, timeout: float = 5.0):
    return _fn(box, code, timeout)


# -- 1, 2: the reply is read whole under the time limit -------------------------------------------
@pytest.mark.timeout(60)
def test_a_fake_length_header_then_a_stall_is_a_timeout_not_a_hang(box):
    strategy = strategy_in(box, "import os, struct, sys, time\n"
                                "def strategy(question: str) -> str:\n"
                                "    os.write(int(sys.argv[2]), struct.pack('!i', 100))\n"
                                "    time.sleep(600)", timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(to.TraceError, match="TimeoutError"):
        strategy("q")
    assert time.monotonic() - t0 < 5
    strategy.code.set_value("def strategy(question: str) -> str:\n    return question + '!'")
    assert strategy("q").value == "q!"


@pytest.mark.timeout(60)
def test_a_fake_header_followed_by_a_normal_return_is_an_error_not_a_hang(box):
    strategy = strategy_in(box, "import os, struct, sys\n"
                                "def strategy(question: str) -> str:\n"
                                "    os.write(int(sys.argv[2]), struct.pack('!i', 100))\n"
                                "    return question", timeout=2.0)
    t0 = time.monotonic()
    with pytest.raises(to.TraceError, match="IsolationError"):
        strategy("q")
    assert time.monotonic() - t0 < 5


@pytest.mark.timeout(60)
def test_a_declared_length_over_the_cap_is_refused_naming_the_cap(box):
    strategy = strategy_in(box, "import os, struct, sys, time\n"
                                "def strategy(question: str) -> str:\n"
                                "    os.write(int(sys.argv[2]), struct.pack('!Q', 2**40))\n"
                                "    time.sleep(600)", timeout=2.0)
    with pytest.raises(to.TraceError) as info:
        strategy("q")
    assert "over the cap" in str(info.value) and "MAX_REPLY_BYTES" in str(info.value)


@pytest.mark.timeout(60)
def test_a_half_sent_reply_body_is_a_timeout(box):
    strategy = strategy_in(box, "import os, struct, sys, time\n"
                                "def strategy(question: str) -> str:\n"
                                "    os.write(int(sys.argv[2]), struct.pack('!Q', 1000) + b'x' * 10)\n"
                                "    time.sleep(600)", timeout=1.0)
    t0 = time.monotonic()
    with pytest.raises(to.TraceError, match="TimeoutError"):
        strategy("q")
    assert time.monotonic() - t0 < 5


@pytest.mark.timeout(60)
def test_replacing_builtins_len_does_not_break_the_reply(box):
    strategy = strategy_in(box, "import builtins\n"
                                "def strategy(question: str) -> str:\n"
                                "    builtins.len = lambda x: 42\n"
                                "    return question + ' answered'", timeout=2.0)
    t0 = time.monotonic()
    assert strategy("q").value == "q answered"
    assert time.monotonic() - t0 < 5
    strategy.code.set_value("def strategy(question: str) -> str:\n    return str(len('abc'))")
    assert strategy("q").value == "3"  # the builtins were put back (and the worker replaced)


@pytest.mark.timeout(60)
def test_replacing_the_modules_the_reply_uses_does_not_break_it(box):
    strategy = strategy_in(box, "import os, pickle, struct, builtins\n"
                                "import textopt.sandbox as sb\n"
                                "def strategy(question: str) -> str:\n"
                                "    os.write = lambda *a: 0\n"
                                "    pickle.dumps = lambda *a, **k: b''\n"
                                "    struct.pack = lambda *a: b''\n"
                                "    sb._describe = None\n"
                                "    builtins.isinstance = lambda *a: False\n"
                                "    return question.upper()", timeout=2.0)
    assert strategy("q").value == "Q"


# -- 3, 6: the worker can't see or signal the parent ----------------------------------------------
DRIVER = """
import json, os, sys, time
import textopt as to
from textopt.sandbox import Sandbox
box = Sandbox(max_workers=1, namespaces=sys.argv[1] == "1")

@to.trace(trainable=True, isolation=box, timeout=5.0)
def strategy(question):
    return question

strategy.code.set_value(open(sys.argv[2]).read())
out = {"parent": os.getpid()}
try:
    out["value"] = strategy(str(os.getpid())).value
except to.TraceError as err:
    out["error"] = str(err)
time.sleep(0.5)  # a signal sent to this process would have arrived by now
out["mode"] = box.mode
strategy.code.set_value("def strategy(question):\\n    return question + '!'")
out["after"] = strategy("q").value
print("RESULT " + json.dumps(out))
"""


def run_driver(tmp_path: Path, code: str, namespaces: bool, wrap: list[str] | None = None, wait: float = 40.0) -> dict:
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "code.py").write_text(code)
    env = dict(os.environ, OPENAI_API_KEY=KEY, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(tmp_path / "driver.py"), "1" if namespaces else "0", str(tmp_path / "code.py")]
    if wrap:
        cmd = wrap + cmd
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=wait, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the calling process hung for {wait} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"the calling process ended: rc={proc.returncode}\n{proc.stderr[-2000:]}"
    out = json.loads(lines[-1][len("RESULT "):])
    out["stderr"] = proc.stderr
    return out


@pytest.mark.timeout(90)
@pytest.mark.parametrize("namespaces", [True, False], ids=["namespaces", "session"])
def test_sigint_to_the_workers_parent_does_not_reach_the_caller(tmp_path, namespaces):
    if namespaces and not namespaces_work():
        pytest.skip("unprivileged user namespaces are not available here")
    out = run_driver(tmp_path, "import os, signal\n"
                               "def strategy(question):\n"
                               "    os.kill(os.getppid(), signal.SIGINT)\n"
                               "    os.kill(os.getppid(), signal.SIGTERM)\n"
                               "    return 'sent to %d' % os.getppid()", namespaces)
    assert out["value"].startswith("sent to") and out["value"] != f"sent to {out['parent']}"
    assert out["after"] == "q!"


@pytest.mark.timeout(90)
@pytest.mark.usefixtures("needs_namespaces")
def test_the_parents_environment_is_not_readable_through_proc(tmp_path):
    code = ("import os\n"
            "def strategy(question):\n"
            "    seen = []\n"
            "    for pid in [question, str(os.getppid())] + [p for p in os.listdir('/proc') if p.isdigit()]:\n"
            "        try:\n"
            "            seen.append(open('/proc/%s/environ' % pid, 'rb').read().decode('utf-8', 'replace'))\n"
            "        except OSError as exc:\n"
            "            seen.append(type(exc).__name__)\n"
            "    return repr(seen)")
    out = run_driver(tmp_path, code, namespaces=True)
    assert out["mode"] == "namespaces" and "value" in out, out
    assert KEY not in out["value"] and "OPENAI_API_KEY" not in out["value"]
    assert "PATH=" in out["value"]  # it did read environments: its own, the minimal one


@pytest.mark.timeout(90)
@pytest.mark.usefixtures("needs_namespaces")
def test_the_parent_has_no_pid_the_worker_could_signal(tmp_path):
    code = ("import os, signal\n"
            "def strategy(question):\n"
            "    try:\n"
            "        os.kill(int(question), signal.SIGKILL)\n"
            "        return 'killed'\n"
            "    except OSError as exc:\n"
            "        return type(exc).__name__ + ' ' + ','.join(p for p in os.listdir('/proc') if p.isdigit())")
    out = run_driver(tmp_path, code, namespaces=True)
    assert out["value"].startswith("ProcessLookupError") and out["after"] == "q!"
    assert set(out["value"].split(" ", 1)[1].split(",")) <= {"1", "2"}  # its own pid namespace: nobody else


@pytest.mark.timeout(90)
@pytest.mark.usefixtures("needs_namespaces")
def test_a_detached_child_dies_with_the_worker(tmp_path):
    marker = f"{time.time_ns() % 10**6}.123"
    code = ("import subprocess\n"
            "def strategy(question):\n"
            f"    subprocess.Popen(['sleep', '{marker}'], start_new_session=True)\n"
            "    while True:\n"
            "        pass")
    out = run_driver(tmp_path, code, namespaces=True)
    assert "TimeoutError" in out["error"]
    time.sleep(0.5)
    alive = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if marker in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                alive.append(pid)
        except OSError:
            pass
    assert not alive, f"sleep {marker} outlived its worker: {alive}"


@pytest.mark.timeout(90)
def test_without_user_namespaces_the_sandbox_falls_back_silently(tmp_path):
    """Inside a user namespace whose limit of further user namespaces is 0, unshare(CLONE_NEWUSER) fails:
    the worker still starts (launcher and session only), with nothing printed."""
    if not shutil.which("unshare") or not sys.platform.startswith("linux"):
        pytest.skip("needs util-linux unshare")
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("user namespaces are not available here at all (the fallback is the only mode)")
    out = run_driver(tmp_path, "def strategy(question):\n    return 'fine'", namespaces=True,
                     wrap=["unshare", "--user", "--map-root-user", "sh", "-c",
                           "echo 0 > /proc/sys/user/max_user_namespaces && exec \"$@\"", "sh"])
    assert out["mode"] == "session" and out["value"] == "fine" and out["after"] == "q!"
    assert "Traceback" not in out["stderr"] and "unshare" not in out["stderr"]


@pytest.mark.timeout(60)
def test_the_worker_holds_only_its_two_pipes_and_a_minimal_environment(box, monkeypatch):
    monkeypatch.setenv("TEXTOPT_UNRELATED", "visible-before-issue-24")
    strategy = strategy_in(box, "import os, json\n"
                                "def strategy(question: str) -> str:\n"
                                "    return json.dumps([sorted(os.listdir('/proc/self/fd')), dict(os.environ)])")
    fds, env = json.loads(strategy("q").value)
    assert len(fds) == 6, fds  # stdin, stdout, stderr, two pipes, and the listing's own descriptor
    assert "TEXTOPT_UNRELATED" not in env and set(env) <= set(minimal_environ()) | {"PATH"}


# -- 4, 5: a result can't exhaust the parent, and a too-large one names the cap -------------------
def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.timeout(60)
@pytest.mark.parametrize("reduce, named", [
    ("(bytearray, (600 * 2**20,))", "bytearray(int) is refused"),
    ("(bytes, (600 * 2**20,))", "bytes(int) is refused"),
    ("(list, (range(10**9),))", "builtins.range"),
    ("(tuple, (range(10**9),))", "builtins.range"),
], ids=["bytearray-size", "bytes-size", "list-range", "tuple-range"])
def test_a_result_that_would_allocate_from_a_size_is_refused(box, reduce, named):
    strategy = strategy_in(box, "class Bomb:\n"
                                "    def __reduce__(self):\n"
                                f"        return {reduce}\n"
                                "def strategy(question: str) -> str:\n"
                                "    return Bomb()")
    before = _max_rss_mib()
    with pytest.raises(to.TraceError, match="refused") as info:
        strategy("q")
    assert named in str(info.value)
    assert _max_rss_mib() - before < 200  # 600 MiB (or 8 GB) were never allocated here


@pytest.mark.timeout(60)
def test_a_shared_structure_that_would_print_forever_is_refused_naming_the_cap(box):
    strategy = strategy_in(box, "def strategy(question: str) -> str:\n"
                                "    a = [question]\n"
                                "    for _ in range(100):\n"
                                "        a = [a, a]\n"
                                "    return a")
    with pytest.raises(to.TraceError) as info:
        strategy("q")
    assert "MAX_RESULT_ITEMS" in str(info.value) and "10,000,000" in str(info.value)


@pytest.mark.timeout(60)
def test_a_result_nested_too_deeply_is_refused_naming_the_cap(box):
    strategy = strategy_in(box, "def strategy(question: str) -> str:\n"
                                "    a = question\n"
                                "    for _ in range(300):\n"
                                "        a = [a]\n"
                                "    return a")
    with pytest.raises(to.TraceError) as info:
        strategy("q")
    assert "MAX_RESULT_DEPTH" in str(info.value)


@pytest.mark.timeout(90)
def test_an_oversized_result_names_the_size_cap_not_a_crash():
    box = Sandbox(max_workers=1)
    try:
        strategy = strategy_in(box, "def strategy(question: str) -> str:\n    return 'x' * (300 * 2**20)", timeout=30)
        with pytest.raises(to.TraceError) as info:
            strategy("q")
        text = str(info.value)
        assert f"over the cap of {MAX_REPLY_BYTES // 2**20} MiB" in text and "MAX_REPLY_BYTES" in text
        assert "exited with code" not in text
    finally:
        box.close()


@pytest.mark.timeout(60)
def test_plain_results_still_come_back_whole(box):
    strategy = strategy_in(box, "import collections, datetime, decimal, fractions\n"
                                "def strategy(question: str):\n"
                                "    return {'s': question, 'b': bytearray(b'ab'), 'n': [1, 2.5, None, True],\n"
                                "            'c': collections.Counter('aab'), 'd': collections.deque([1], maxlen=3),\n"
                                "            'dd': collections.defaultdict(list, {'k': [1]}), 'f': fractions.Fraction(3, 4),\n"
                                "            'dec': decimal.Decimal('1.5'), 't': datetime.date(2024, 1, 2), 'fs': frozenset({1}),\n"
                                "            'big': ['x'] * 100_000}")
    import collections
    import datetime
    import decimal
    import fractions

    out = strategy("q").value
    assert out == {"s": "q", "b": bytearray(b"ab"), "n": [1, 2.5, None, True], "c": collections.Counter("aab"),
                   "d": collections.deque([1], maxlen=3), "dd": {"k": [1]}, "f": fractions.Fraction(3, 4),
                   "dec": decimal.Decimal("1.5"), "t": datetime.date(2024, 1, 2), "fs": frozenset({1}),
                   "big": ["x"] * 100_000}
    assert out["dd"].default_factory is list and out["d"].maxlen == 3


# -- 12: attribute names are not globals ----------------------------------------------------------
def _main_function(globals_: dict):
    namespace = {"__name__": "__main__", **globals_}
    exec("def strategy(question):\n    return question\n", namespace)
    return namespace["strategy"]


@pytest.mark.timeout(30)
def test_an_attribute_named_like_a_global_of_the_script_is_not_shipped():
    fn = _main_function({"run": threading.Lock(), "subprocess": None})  # a global `run` that can't be pickled
    source = "import subprocess\ndef strategy(question):\n    return str(subprocess.run(['true']).returncode)"
    job = build_job(fn, name="strategy", source=source, is_async=False, args=("q",), kwargs={})
    assert "run" not in job["values"]
    used, _ = _names(source, "<x>")
    assert "run" not in used and "subprocess" in used


@pytest.mark.timeout(30)
def test_a_real_global_of_the_script_is_still_shipped_and_locals_are_not():
    fn = _main_function({"PREFIX": ">> ", "helper": None, "count": threading.Lock()})
    source = ("def strategy(question):\n"
              "    count = len(question)\n"
              "    return PREFIX + question + str(count)")
    job = build_job(fn, name="strategy", source=source, is_async=False, args=("q",), kwargs={})
    assert set(job["values"]) == {"PREFIX"}
    box = Sandbox(max_workers=1)
    try:
        assert box.call(job, 5.0) == ">> q1"
    finally:
        box.close()
