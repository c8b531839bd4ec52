"""TextGrad's side of workload (i), test-time code optimization on HumanEval (benchmarks/code_bench.py).
Runs inside TextGrad's virtual environment (benchmarks/.cache/venvs/textgrad), never in the project's:

    python textgrad_code.py CONFIG.json

TextGrad's usage for code at test time: the program is a `tg.Variable(requires_grad=True)`; the loss is an
LLM evaluation (`FormattedLLMCall`) that reads the task, the code and the unit-test report; `loss.backward()`
sends a textual gradient to the code; `tg.TGD(...).step()` rewrites it. That is one update call per step, plus
the loss call and the gradient call, which go to a separate route of the counting proxy so the driver can
tell them apart. The engines are the capped `ChatExternalClient` of textgrad_bench.py (TextGrad's path to an
OpenAI-compatible server; greedy, as TextGrad's default temperature is 0).

No candidate runs here: every changed version is sent to the driver's test endpoint (`test_url`), which runs
it in textopt's sandbox and answers with the same report the other frameworks get.

Protocol (stdout; anything else printed is ignored): `CODE_BENCH_START {"task_id": ...}` when a problem
starts, `CODE_BENCH_ROW {...}` when it ends (steps, unusable proposals by kind, errors, wall time).
"""
from __future__ import annotations

import sys
import time
from collections import Counter
from typing import Any

from _code_common import Tester, clip, run_problems  # the protocol and the test endpoint's client
from textgrad_bench import engine as capped_engine  # TextGrad's ChatExternalClient with a reply cap

#: The evaluator (TextGrad's loss) reads the test report and says what is wrong; it writes no code itself,
#: so the rewrite stays the update call's job.
REVIEWER = "You review Python code against its unit test report. Explain failures precisely; do not write code."
EVALUATION = (
    "Task statement:\n{task}\n\nCode under review:\n{code}\n\nUnit test report of this code:\n{report}\n\n"
    "Say briefly which part of the code causes the failures in the report and what it should do instead."
)


def url_for(cfg: dict[str, Any], problem: dict[str, Any], kind: str) -> str:
    """The proxy route of this problem's update calls ("update") or its loss and gradient calls ("other")."""
    return cfg["url"].format(run=f"{cfg['tag']}.{problem['run']}.{kind}")


def solve(problem: dict[str, Any], cfg: dict[str, Any], tester: Tester) -> dict[str, Any]:
    import textgrad as tg
    from textgrad.autograd import FormattedLLMCall

    task_id = problem["task_id"]
    tester.seen[(task_id, problem["code"])] = {"passed": False, "feedback": problem["feedback"]}
    update = capped_engine({"base_url": url_for(cfg, problem, "update"), "model": cfg["model"], "max_tokens": cfg["update_tokens"]})
    aux = capped_engine({"base_url": url_for(cfg, problem, "other"), "model": cfg["model"], "max_tokens": cfg["aux_tokens"]})
    tg.set_backward_engine(aux, override=True)  # gradients go to the "other" route

    code = tg.Variable(problem["code"], requires_grad=True,
                       role_description=f"Python program solving the task; the unit tests call its function {problem['entry_point']}")
    task = tg.Variable(problem["prompt"], requires_grad=False, role_description="statement of the coding task")
    reviewer = tg.Variable(REVIEWER, requires_grad=False, role_description="system prompt of the code reviewer")
    evaluate = FormattedLLMCall(engine=aux, format_string=EVALUATION, fields={"task": None, "code": None, "report": None},
                                system_prompt=reviewer)
    opt = tg.TGD([code], engine=update, constraints=[problem["constraint"]])

    report, passed, steps = problem["feedback"], False, 0
    unusable: Counter[str] = Counter()
    errors: list[str] = []
    notes: list[dict[str, Any]] = []  # the unusable replies, for reading after the run
    t0 = time.perf_counter()
    while not passed and steps < cfg["updates"]:
        steps += 1
        before = code.value
        opt.zero_grad()
        try:
            loss = evaluate(inputs={"task": task, "code": code,
                                    "report": tg.Variable(report, requires_grad=False, role_description="unit test report of the code")},
                            response_role_description="review of the code against its unit test report")
            loss.backward()
            opt.step()
        except IndexError as exc:  # TGD's reply had no <IMPROVED_VARIABLE> tags: TextGrad raises, the code stays
            unusable["no tags"] += 1
            notes.append({"step": steps, "kind": "no tags", "reply": clip(str(exc).split("Response: ", 1)[-1])})
            continue
        except Exception as exc:  # a server error: stop this problem, the driver records it
            errors.append(f"step {steps}: {type(exc).__name__}: {exc}"[:400])
            break
        if code.value == before:
            unusable["no change"] += 1
            continue
        result = tester.test(task_id, code.value)
        report, passed = result["feedback"], bool(result["passed"])
    return {"task_id": task_id, "update_steps": steps, "passed_claim": passed, "unusable": dict(unusable),
            "notes": notes, "errors": errors, "wall_s": round(time.perf_counter() - t0, 3)}


def main() -> None:
    run_problems(solve, sys.argv[1])


if __name__ == "__main__":
    main()
