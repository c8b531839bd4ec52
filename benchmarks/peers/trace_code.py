"""Trace's side of workload (i), test-time code optimization on HumanEval (benchmarks/code_bench.py).
Runs inside Trace's virtual environment (benchmarks/.cache/venvs/trace, package trace-opt), never in the
project's:

    python trace_code.py CONFIG.json

The program is a trainable node (`trace.node(code, trainable=True)`) read by a bundled op, `unit_tests`, whose
output is the test report; `opt.backward(report, feedback)` with the report as feedback, then one OptoPrime
step (one update call, JSON mode). Why a trainable node and not `@bundle(trainable=True)`: a trainable bundle
makes the function's source the parameter and, when called, `exec`s that source and runs it in this process,
so the candidate would run outside textopt's sandbox (and a hang or `os._exit` in it would take this
process down). A trainable node holding the whole program (imports and helpers included, as the other
frameworks' code variables do) keeps Trace's shape -- parameter, traced op, output, feedback -- while the op
sends the program to the driver's test endpoint, which runs it in textopt's sandbox.

Trace reaches the server through its documented backend for OpenAI-compatible servers, CustomLLM, with two
settings every framework here gets: greedy decoding (temperature 0) and no client-side retries (each
request the proxy counts is one the optimizer made).

Protocol (stdout; anything else printed, such as Trace's banner, is ignored): `CODE_BENCH_START {"task_id":
...}` when a problem starts, `CODE_BENCH_ROW {...}` when it ends (steps, unusable proposals, errors, time).
"""
from __future__ import annotations

import os
import sys
import time
import warnings
from collections import Counter
from typing import Any

from _code_common import Tester, clip, run_problems  # the protocol and the test endpoint's client

from opto import trace
from opto.optimizers import OptoPrime
from opto.utils.llm import CustomLLM

#: The problem being optimized and the endpoint that tests it (the bundled op reads them; set per problem).
CURRENT: dict[str, Any] = {"task_id": None, "tester": None}


class GreedyLLM(CustomLLM):
    """CustomLLM (TRACE_CUSTOMLLM_URL / _MODEL / _API_KEY) with temperature 0 and no client retries."""

    @classmethod
    def _factory(cls, base_url: str, server_api_key: str) -> Any:
        import openai

        return openai.OpenAI(base_url=base_url, api_key=server_api_key, max_retries=0, timeout=900)

    def create(self, **config: Any) -> Any:
        config.setdefault("temperature", 0)
        return super().create(**config)


@trace.bundle()
def unit_tests(program, task):
    """Runs the unit tests of the task on the program in a separate process with a time limit and returns the
    test report: the failing assertions, what the code returned or raised, and its last output lines."""
    return CURRENT["tester"].test(CURRENT["task_id"], program)["feedback"]


def solve(problem: dict[str, Any], cfg: dict[str, Any], tester: Tester) -> dict[str, Any]:
    task_id = problem["task_id"]
    CURRENT.update(task_id=task_id, tester=tester)
    tester.seen[(task_id, problem["code"])] = {"passed": False, "feedback": problem["feedback"]}
    os.environ["TRACE_CUSTOMLLM_URL"] = cfg["url"].format(run=f"{cfg['tag']}.{problem['run']}.update")
    os.environ["TRACE_CUSTOMLLM_MODEL"] = cfg["model"]
    os.environ.setdefault("TRACE_CUSTOMLLM_API_KEY", "bench")

    program = trace.node(problem["code"], trainable=True, name="program", constraint=problem["constraint"],
                         description=f"Python program solving the task; the unit tests call its function {problem['entry_point']}")
    task = trace.node(problem["prompt"], name="task", description="statement of the coding task: imports, signature, docstring")
    opt = OptoPrime([program], llm=GreedyLLM(), max_tokens=cfg["update_tokens"])

    passed, steps = False, 0
    unusable: Counter[str] = Counter()
    errors: list[str] = []
    notes: list[dict[str, Any]] = []  # the unusable replies, for reading after the run
    t0 = time.perf_counter()
    while not passed and steps < cfg["updates"]:
        steps += 1
        before = program.data
        try:
            opt.zero_feedback()
            report = unit_tests(program, task)  # a version tested before is answered from the tester's memo
            opt.backward(report, report.data)  # the feedback is the test report itself
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                opt.step()
        except Exception as exc:  # a server error or a failed test request: stop this problem
            errors.append(f"step {steps}: {type(exc).__name__}: {exc}"[:400])
            break
        if program.data == before:
            # OptoPrime keeps the old value when its reply had no usable suggestion for the program
            # (no JSON, another key), or when the suggestion could not be converted (black refused it).
            kind = "unconvertible" if any("Cannot convert" in str(w.message) for w in caught) else "no suggestion"
            unusable[kind] += 1
            reply = opt.log[-1].get("response", "") if getattr(opt, "log", None) else ""
            notes.append({"step": steps, "kind": kind, "reply": clip(str(reply))})
            continue
        result = tester.test(task_id, program.data)
        passed = bool(result["passed"])
    return {"task_id": task_id, "update_steps": steps, "passed_claim": passed, "unusable": dict(unusable),
            "notes": notes, "errors": errors, "wall_s": round(time.perf_counter() - t0, 3)}


def main() -> None:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    run_problems(solve, sys.argv[1])


if __name__ == "__main__":
    main()
