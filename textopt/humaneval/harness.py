"""The test harness that runs only inside a sandbox worker: the program is compiled and `check(candidate)`
runs one top-level statement at a time, so the report can name the assertion, the value and the exception."""
from __future__ import annotations

import ast
import functools
import time
from typing import Any

from ..sandbox.confine import confined
from .problems import OUTPUT_LINE_CHARS, SHOWN_FAILURES, VALUE_CHARS, _CODE_FILE, _TEST_FILE


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


