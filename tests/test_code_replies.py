"""Trainable code as a coder model writes it: prose around a fence, several fences, example calls after the
function. The optimizer takes the code out of the reply before it checks it (`CodeVariable.normalize`)."""
from __future__ import annotations

import pytest

import textopt as to
from textopt.source import CodeVariable, code_in_reply

FIXED = 'def f(x):\n    """Add one ("x" + 1)."""\n    return x + 1'


def code_var() -> CodeVariable:
    v = CodeVariable("def f(x):\n    return x\n", function_name="f", is_async=False, role="code of f", name="code_f")
    v.add_gradient("f(1) returned 1, expected 2")
    return v


@pytest.mark.parametrize(
    "reply",
    [
        f"Here is the corrected function:\n\n```python\n{FIXED}\n```\nIt now adds one.",
        f"```python\n{FIXED}\n\nprint(f(3))\nassert f(1) == 2\nif __name__ == \"__main__\":\n    print(f(2))\n```",
        f"First a helper:\n```python\ndef helper():\n    return 0\n```\nThen the function:\n```python\n{FIXED}\n```",
        f"The fix:\n```python\n{FIXED}\n",  # cut off before the closing fence
        FIXED,  # no fence at all
    ],
)
def test_the_code_is_taken_out_of_the_reply(reply: str) -> None:
    assert code_in_reply(reply, "f") == FIXED


def test_what_does_not_parse_is_left_for_the_check_to_name() -> None:
    broken = "Sure:\n```python\ndef f(x)\n    return x + 1\n```"
    assert code_in_reply(broken, "f") == "def f(x)\n    return x + 1"
    assert "does not parse" in code_var().check(code_in_reply(broken, "f"))


def test_a_reply_that_is_only_an_example_call_is_not_emptied() -> None:
    assert code_in_reply("print(f(3))", "f") == "print(f(3))"


def test_tgd_applies_code_written_with_prose_around_the_fence() -> None:
    v = code_var()
    reply = f"The function returns x unchanged. Corrected:\n```python\n{FIXED}\n\nprint(f(1))\n```\nDone."
    opt = to.TGD([v], engine=to.ScriptedEngine(reply), reply="text")
    opt.step()
    assert opt.failures == [] and v.value == FIXED


def test_a_code_reply_with_a_changed_signature_is_still_refused() -> None:
    v = code_var()
    bad = "```python\ndef f(x, y):\n    return x + y\n```"
    opt = to.TGD([v], engine=to.ScriptedEngine([bad, bad]), reply="text")
    opt.step()
    assert v.value == "def f(x):\n    return x\n"
    assert opt.failures and "signature changed" in opt.failures[-1].error


def test_plain_variables_are_not_normalized() -> None:
    p = to.Variable("old", role="system prompt", requires_grad=True, name="sys")
    p.add_gradient("better")
    reply = "Intro\n```python\nprint(1)\n```\nOutro"
    opt = to.TGD([p], engine=to.ScriptedEngine(reply), reply="text")
    opt.step()
    assert p.value == reply


@pytest.mark.parametrize("tag", ["value", "variable", "new_value"])
def test_our_own_structure_tag_around_a_proposal_is_removed(tag: str) -> None:
    from textopt.optim.base import unwrap

    assert unwrap(f"<{tag}>\n{FIXED}\n</{tag}>") == FIXED
    assert unwrap(f"<{tag}>a</{tag}> and <{tag}>b</{tag}>") == f"<{tag}>a</{tag}> and <{tag}>b</{tag}>"  # two: not a wrapper
    assert unwrap("<foo>a</foo>") == "<foo>a</foo>"  # not one of ours: the value's own text


def optoprime_step(suggested_code: str) -> tuple[CodeVariable, to.OptoPrime]:
    """One OptoPrime step on f's code through a traced stand-in for its tests, the model suggesting this code."""
    import json

    @to.trace
    def run_it(code: str) -> str:
        """Stands for the tests of the code."""
        return "f(1) returned 1"

    v = code_var()
    out = run_it(v)
    reply = json.dumps({"suggestion": {"code_f": suggested_code}, "reasoning": "add one"})
    opt = to.OptoPrime([v], engine=to.ScriptedEngine(reply))
    opt.backward(out, "expected 2")
    opt.step()
    return v, opt


def test_optoprime_applies_code_wrapped_in_its_variable_tag() -> None:
    """The 1.5B copied OptoPrime's <variable> tag around its code in workload (i) (BENCHMARKS)."""
    v, opt = optoprime_step(f"<variable>\n{FIXED}\n</variable>")
    assert opt.failures == [] and v.value == FIXED


def test_our_tag_inside_the_fence_is_removed_too() -> None:
    """The 1.5B wrote prose, then ```python <value> ... </value> ``` (HumanEval/115, the code-repair prompt)."""
    v = code_var()
    reply = f"The bug: f returns x.\n\n```python\n<value>\n{FIXED}\n\nprint(f(1))\n</value>\n```\nExplanation: adds one."
    opt = to.TGD([v], engine=to.ScriptedEngine(reply), reply="text")
    opt.step()
    assert opt.failures == [] and v.value == FIXED


def test_our_tag_after_prose_stands_for_the_fence() -> None:
    """Prose, then the program in <value> tags and no fence (the 1.5B on HumanEval/115, workload (i))."""
    v = code_var()
    reply = f"The bug: f returns x; it should add one.\nHere is the fixed program:\n<value>\n{FIXED}\n</value>"
    opt = to.TGD([v], engine=to.ScriptedEngine(reply), reply="text")
    opt.step()
    assert opt.failures == [] and v.value == FIXED
    two = to.TGD([w := code_var()], engine=to.ScriptedEngine([f"<value>{FIXED}</value> or <value>x</value>"] * 2),
                 reply="text")
    two.step()  # two tagged blocks: not a wrapper, so nothing is guessed; the check names what does not parse
    assert w.value == "def f(x):\n    return x\n" and "does not parse" in two.failures[-1].error
    html = 'def f(x):\n    return "<value>" + x + "</value>"'
    assert code_in_reply(html, "f") == html  # the tags of a string literal in the code are the code's own


def test_optoprime_applies_code_under_an_opening_variable_tag_never_closed() -> None:
    """The 1.5B opened OptoPrime's <variable> above the whole program and never closed it (8 refused proposals
    on workload (i)'s 40 problems). For code the opening line is dropped; a prompt value keeps the refusal."""
    v, opt = optoprime_step(f"<variable>\n{FIXED}\n")
    assert opt.failures == [] and v.value == FIXED
    assert code_in_reply(f"<value>\n{FIXED}\n", "f") == FIXED
    kept = f'def f(x):\n    return "<value>" + x\n'
    assert code_in_reply(kept, "f") == kept  # not a first line of its own: the code's own text
