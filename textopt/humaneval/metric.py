"""HumanEval for the rest of textopt: a metric for evaluate / Search / Trainer, and the tests as an op
(`RunTests`) whose backward hands the test report to the code variable."""
from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..evaluate import Score
from ..function import Feedback, Function, OpContext, OpDescription
from ..prompts import render
from ..variable import Variable
from .problems import DEFAULT_TIMEOUT, Problem
from .testing import TestResult, _check_timeout, arun_tests, run_tests

if TYPE_CHECKING:
    from ..engines.base import Engine
    from ..sandbox import Sandbox


# -- a metric for evaluate / Search / Trainer -----------------------------------------------------------
def humaneval_metric(*, timeout: float = DEFAULT_TIMEOUT, sandbox: Sandbox | None = None) -> Callable[[Problem, Any], Score]:
    """metric(problem, output) for `textopt.evaluate`, Search and the Trainer: the examples are Problems and
    the output is the code (a Variable or text); the score is 1.0 when every test passes, else 0.0, and its
    feedback is the test report (what Search's reflection reads)."""
    _check_timeout(timeout)

    def metric(example: Problem, output: Any) -> Score:
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
        result: TestResult = ctx.saved["result"]
        text = render("humaneval_feedback.j2", "gradient", task_id=self.problem.task_id,
                      entry_point=self.problem.entry_point, passed=result.passed, report=output.text,
                      feedback=None if feedback.is_objective else feedback.text)
        return {p: text for p in output.parents if p.requires_grad}


