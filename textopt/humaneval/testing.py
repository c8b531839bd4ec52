"""Running a problem's tests on a candidate in a sandbox worker, and the report the caller gets back
(`TestResult`: status, checks, feedback that names the failed assertion, the value and the exception)."""
from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..prompts import elide
from ..sandbox import IsolationError, build_job, default_sandbox
from .harness import _OutOfTime, _check_program
from .problems import (
    DEFAULT_TIMEOUT, FEEDBACK_CHARS, GRACE, OUTPUT_CHARS, OUTPUT_LINES, OUTPUT_LINE_CHARS, Problem, as_program,
)

if TYPE_CHECKING:
    from ..sandbox import Sandbox


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
    _check_timeout(timeout)
    box = sandbox if sandbox is not None else default_sandbox()
    job = _job(problem, code, timeout)
    start = time.monotonic()
    try:
        raw: Any = await box.acall(job, timeout + GRACE)
    except Exception as exc:  # noqa: BLE001 - see run_tests
        raw = exc
    return _result(raw, time.monotonic() - start, problem, timeout)


# -- in the caller: the report ------------------------------------------------------------------------
def _result(raw: Any, duration: float, problem: Problem, timeout: float) -> TestResult:
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
    message = " ".join(str(exc).split())
    if isinstance(exc, TimeoutError) or _OutOfTime.__name__ in message:
        return "timeout", (f"Timed out: the tests did not finish within {timeout:g} s, and the code kept running past "
                           "the limit (an endless loop that catches every exception?), so the test process was "
                           "killed and its output is lost.")
    if isinstance(exc, IsolationError):
        return "crash", (f"The test process ended while running the code, so the tests could not finish: {message}. "
                         "(Code that calls os._exit, kills its process or uses far too much memory ends it.)")
    return "error", f"The tests could not be run on this code: {type(exc).__name__}: {message}"


