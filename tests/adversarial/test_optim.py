"""Issue 13, optimizers: hostile or broken replies are rejected before they become a value, each rejection
is a recorded failure with its reason, and what reaches an update prompt is bounded."""
from __future__ import annotations

import json

import pytest

import textopt as to
from textopt.backward import GRADIENT_CHARS


def tgd_param(value="Answer the question.", feedback="be more precise"):
    p = to.Variable(value, role="system prompt", requires_grad=True, name="sys")
    p.add_gradient(feedback)
    return p


def optoprime(reply, value="start", **kw):
    p = to.Variable(value, role="instruction", requires_grad=True, name="instruction")
    out = to.Variable("out", role="output", parents=[p], requires_grad=True)
    engine = to.ScriptedEngine(reply)
    opt = to.OptoPrime([p], engine=engine, **kw)
    opt.backward(out, "bad")
    return p, opt, engine


# -- 2. one bad Unicode escape ---------------------------------------------------------------------
def test_tgd_reply_with_a_lone_surrogate_is_rejected_and_the_run_goes_on(tmp_path):
    p = tgd_param()
    opt = to.TGD([p], engine=to.ScriptedEngine('{"reasoning": "r", "new_value": "Answer \\ud83d carefully."}'))
    opt.step()
    assert p.value == "Answer the question."
    assert opt.failures and "Unicode" in opt.failures[-1].error
    json.dumps(opt.state_dict(), ensure_ascii=False).encode("utf-8")  # the checkpoint can still be written
    to.save([p], tmp_path / "params.json")


def test_optoprime_suggestion_with_a_lone_surrogate_is_rejected():
    p, opt, _ = optoprime('{"suggestion": {"instruction": "Go \\udc00 on"}, "reasoning": "r"}')
    opt.step()
    assert p.value == "start" and "Unicode" in opt.failures[-1].error


# -- 5. bounds -------------------------------------------------------------------------------------
def test_oversized_new_value_is_rejected_and_the_cap_is_configurable():
    big = "x" * 200_000
    p = tgd_param()
    opt = to.TGD([p], engine=to.ScriptedEngine(json.dumps({"reasoning": "r", "new_value": big})))
    opt.step()
    assert p.value == "Answer the question." and "cap" in opt.failures[-1].error
    assert len(opt.failures[-1].reply) < 10_000  # the failure record is bounded too
    roomy = to.TGD([p], engine=to.ScriptedEngine(json.dumps({"reasoning": "r", "new_value": big})), max_value_chars=300_000)
    roomy.step()
    assert p.value == big


def test_oversized_optoprime_suggestion_is_rejected():
    p, opt, _ = optoprime(json.dumps({"suggestion": {"instruction": "y" * 200_000}, "reasoning": "r"}))
    opt.step()
    assert p.value == "start" and "cap" in opt.failures[-1].error


def test_one_huge_gradient_is_cut_with_a_marker_before_the_update_prompt():
    p = tgd_param(feedback="start of the feedback " + "z" * 200_000 + " end of the feedback")
    engine = to.ScriptedEngine('{"reasoning": "r", "new_value": "Shorter."}')
    to.TGD([p], engine=engine).step()
    prompt = engine.calls[-1][-1]["content"]
    assert len(prompt) < GRADIENT_CHARS + 2_000, len(prompt)
    assert "elided" in prompt and "start of the feedback" in prompt and "end of the feedback" in prompt


# -- 6. OptoPrime accepts bad replies ---------------------------------------------------------------
@pytest.mark.parametrize("value", ["<new value>", " <new value> ", "<new_value>", "..."])
def test_optoprime_placeholder_is_not_a_value(value):
    p, opt, _ = optoprime(json.dumps({"suggestion": {"instruction": value}, "reasoning": "r"}))
    opt.step()
    assert p.value == "start" and "placeholder" in opt.failures[-1].error


@pytest.mark.parametrize("reply", ['{"suggestion": {"instruction": null}, "reasoning": "r"}',
                                   '{"suggestion": {"instruction": "null"}, "reasoning": "r"}'])
def test_optoprime_null_is_not_a_value(reply):
    p, opt, _ = optoprime(reply)
    opt.step()
    assert p.value == "start" and opt.failures and opt.failures[-1].variable == "instruction"


def test_optoprime_suggestion_naming_only_unknown_variables_is_a_recorded_failure():
    p, opt, _ = optoprime(json.dumps({"suggestion": {"prompt_7": "new"}, "reasoning": "r"}))
    opt.step()
    assert p.value == "start"
    assert opt.failures and "prompt_7" in opt.failures[-1].error and "not a parameter" in opt.failures[-1].error


# -- 9. silent edges ---------------------------------------------------------------------------------
def test_an_update_that_echoes_the_current_value_is_recorded():
    p = tgd_param()
    opt = to.TGD([p], engine=to.ScriptedEngine('{"reasoning": "r", "new_value": "Answer the question."}'))
    opt.step()
    assert opt.failures and all("unchanged" in f.error for f in opt.failures)


def test_an_empty_gradient_is_recorded_without_an_update_call():
    p = tgd_param(feedback="   ")
    engine = to.ScriptedEngine('{"reasoning": "r", "new_value": "Anything."}')
    opt = to.TGD([p], engine=engine)
    opt.step()
    assert engine.calls == [] and p.value == "Answer the question."
    assert opt.failures and "empty" in opt.failures[-1].error
