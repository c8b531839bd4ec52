"""Test-time optimization of one problem's code: a first draft, then optimizer steps from the test report
(TGD or OptoPrime), every version kept as an `Attempt`; keep-best is a mode of the same loop."""
from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from .._sync import sync_twin
from ..context import resolve_engine
from ..engines.usage import track_usage
from ..optim import TGD, OptoPrime
from ..prompts import prompt_dir, render, render_messages
from ..source import CodeVariable
from ..variable import Variable
from .metric import RunTests
from .problems import DEFAULT_TIMEOUT, Problem, as_program
from .testing import TestResult, _check_timeout

if TYPE_CHECKING:
    from ..engines.base import Engine
    from ..optim.base import UpdateFailure
    from ..sandbox import Sandbox


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


async def adraft_code(problem: Problem, engine: Engine | str | None = None, *, max_tokens: int = 512) -> str:
    """A first attempt at `problem` written by `engine` from the problem's prompt (one call), as the
    full program that would be tested (fences removed, a bare body completed with the prompt)."""
    messages = render_messages("humaneval_attempt.j2", prompt=problem.prompt, entry_point=problem.entry_point)
    reply = await resolve_engine(engine).acomplete(messages, max_tokens=max_tokens)
    return as_program(problem, reply.text)


draft_code = sync_twin(adraft_code)


def code_variable(problem: Problem, code: str) -> Variable:
    """`code` (as `as_program` makes it) as the trainable Variable of `problem`: a trace.CodeVariable that
    keeps the prompt's function name and parameters. The first value is kept as written, even when it does
    not compile (the tests then say why); every later value is checked, and one that doesn't parse or
    changes the signature is refused with the reason (optimizers ask again once)."""
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
    max_tokens: int = 512,
    optimizer_options: Mapping[str, Any] | None = None,
    keep_best: bool = False,
    samples: int = 1,
    sample_temperature: float = 0.8,
) -> CodeRun:
    """Test-time optimization of one problem's code: test the first attempt (`first_attempt`, else written by
    `engine`), and while it fails and fewer than `max_updates` updates were made: backward from the test
    report (feedback: the failing assertions, exceptions, output), one optimizer step (TGD or OptoPrime, on
    `optimizer_engine`, default `engine`), test the new version. An update is one optimizer step: one update
    request, plus at most one re-ask when its proposal can't be used and one JSON repair. A step whose
    proposal was refused leaves the code as it was (not tested again) and still counts.
    max_tokens caps the reply of the first attempt; optimizer_options go to the optimizer (constraints are
    added to the built-in one; memory=..., reply=..., max_tokens=...). With TGD and reply="text" the request is
    prompts/code_update.j2: the model may first say what the code does wrong on the failing check, then writes
    the program in one fenced block (the generic text prompt asks for the new value alone). keep_best: each
    update starts from the version that passed most checks so far, a worse one is dropped and named in the
    next request, and the run ends on the best version (`CodeRun.final`).
    samples=k: each round of feedback gets up to k update calls from the same version and the same report,
    the first as usual, the others at `sample_temperature` (separate draws, see engines.cache.Draws); every
    proposal is tested and the round goes on from the one that passed most checks. Each call counts against
    `max_updates`, so samples=3 with max_updates=3 is one round of three proposals instead of three rounds
    of one: a small model that keeps rewriting its own wrong idea gets three ideas from one report."""
    kind = str(optimizer).lower()
    if kind not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if not isinstance(max_updates, int) or max_updates < 0:
        raise ValueError(f"max_updates must be an integer >= 0, got {max_updates!r}")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be an integer >= 1 (update calls per round of feedback), got {samples!r}")
    if not 0 < sample_temperature <= 2:
        raise ValueError(f"sample_temperature must be in (0, 2]: the extra samples of a round must be drawn, "
                         f"got {sample_temperature!r}")
    _check_timeout(timeout)
    options = dict(optimizer_options or {})
    constraint = render("humaneval_feedback.j2", "constraint", entry_point=problem.entry_point)
    options["constraints"] = [constraint, *options.get("constraints", ())]
    if kind == "tgd" and options.get("reply") == "text":  # the code-repair wording (a user's own override wins)
        options["templates"] = {"tgd_update_text.j2": prompt_dir() / "code_update.j2", **(options.get("templates") or {})}
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
        first_temperatures = opt.temperatures
        drawn_temperatures = (sample_temperature, *first_temperatures[1:])
        while not run.attempts[run.final].passed and opt.steps < max_updates:
            if keep_best:  # past the check: the best may be a first attempt that doesn't compile
                Variable.set_value(code, run.attempts[run.final].code)
            base = code.text
            opt.zero_grad()
            feedback = render("humaneval_feedback.j2", "verdict", task_id=problem.task_id)
            if dropped:
                feedback += "\n\n" + render("humaneval_search.j2", "dropped",
                                            dropped=[{"code": d.code, "outcome": outcome(d)} for d in dropped])
            await opt.abackward(report, feedback)
            tried: list[tuple[int, Variable]] = []  # (attempt index, test report) of this round's proposals
            for k in range(min(samples, max_updates - opt.steps)):
                Variable.set_value(code, base)  # every sample of a round starts from the same version
                opt.temperatures = first_temperatures if k == 0 else drawn_temperatures
                try:
                    step = await opt.astep()
                finally:
                    opt.temperatures = first_temperatures
                if step.changed:
                    tried.append((len(run.attempts), await tested(opt.steps)))
                    if run.attempts[-1].passed:
                        break
            if not tried:  # every proposal was refused: the code is still `base`
                continue
            index, new = max(tried, key=lambda t: rank(run.attempts[t[0]]))  # the first of equals
            best = rank(run.attempts[index])
            others = [run.attempts[i] for i, _ in tried if rank(run.attempts[i]) < best]  # named in the next request
            if not keep_best or best >= rank(run.attempts[run.final]):
                report, run.final, dropped = new, index, others
                Variable.set_value(code, run.attempts[index].code)
            else:
                dropped.extend(run.attempts[i] for i, _ in tried)
        if keep_best:
            Variable.set_value(code, run.attempts[run.final].code)
        run.updates = opt.steps
        run.failures = list(opt.failures)
    run.usage = usage.to_dict()
    return run


optimize_code = sync_twin(aoptimize_code, "Sync `aoptimize_code` (same arguments).")


__all__ = [
    "DEFAULT_TIMEOUT", "Attempt", "CodeRun", "Problem", "RunTests", "TestResult", "adraft_code", "aoptimize_code",
    "arun_tests", "as_program", "code_variable", "draft_code", "extract_code", "humaneval_metric", "load_humaneval",
    "optimize_code", "run_tests",
]
