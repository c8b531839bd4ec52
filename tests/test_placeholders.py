"""Proposals a small model can use: wrapping fences/backticks removed, declared `{fields}` kept (one re-ask
that names the reason), for TGD, OptoPrime and Search alike."""
from __future__ import annotations

import json

import pytest

import textopt as to
from textopt.optim.base import unwrap
from textopt.variable import template_fields


def template(value="Q: {input}\nA:"):
    p = to.Variable(value, role="instruction template (user turn)", requires_grad=True, name="tpl")
    p.add_gradient("the replies name no label")
    return p


def reply(value: str) -> str:
    return json.dumps({"reasoning": "r", "new_value": value})


@pytest.mark.parametrize("sent, kept", [
    ("`Is {input} positive or negative?`", "Is {input} positive or negative?"),
    ("``Is {input} positive?``", "Is {input} positive?"),
    ("```\nRate: {input}\nAnswer:\n```", "Rate: {input}\nAnswer:"),
    ("```text\nRate: {input}\n```", "Rate: {input}"),
    ("Use `code` inside: {input}", "Use `code` inside: {input}"),   # inner backticks stay
    ("`a` and `b` {input}", "`a` and `b` {input}"),                 # not one wrapping pair
    ("<value>Is {input} positive?</value>", "Is {input} positive?"),  # the prompt's tag, copied back
    ("<value>\nRate: {input}\n</value>", "Rate: {input}"),
])
def test_wrapping_is_stripped_before_the_value_is_applied(sent, kept):
    assert unwrap(sent) == kept
    p = template()
    to.TGD([p], engine=to.ScriptedEngine(reply(sent))).step()
    assert p.value == kept


def test_template_roles_declare_their_fields_and_others_do_not():
    assert template().required == {"input"}
    assert to.Variable("Say {x} {{literal}} {}", role="prompt template", requires_grad=True).required == {"x"}
    assert to.Variable("Say {input}", role="system prompt", requires_grad=True).required == frozenset()
    assert to.Variable("Say hi", role="system prompt", requires_grad=True, required=["name"]).required == {"name"}
    assert template_fields("unbalanced { brace") == frozenset()


def test_a_dropped_field_is_refused_and_asked_again_once_naming_the_reason():
    p = template()
    eng = to.ScriptedEngine([reply("Classify the sentiment as positive or negative."),
                             reply("Classify the sentiment of {input} as positive or negative.")])
    opt = to.TGD([p], engine=eng)
    report = opt.step()
    assert p.value == "Classify the sentiment of {input} as positive or negative."
    assert [f.kind for f in report.failures] == ["missing field"]
    assert len(eng.calls) == 2
    second = "\n".join(m["content"] for m in eng.calls[1])
    assert "Classify the sentiment as positive or negative." in second and "drops {input}" in second


def test_a_field_dropped_twice_leaves_the_value_unchanged_and_is_recorded():
    p = template()
    eng = to.ScriptedEngine([reply("No placeholder here."), reply("Still none.")])
    opt = to.TGD([p], engine=eng)
    report = opt.step()
    assert p.value == "Q: {input}\nA:" and len(eng.calls) == 2
    assert [f.kind for f in report.failures] == ["missing field", "missing field"]


def test_optoprime_refuses_a_dropped_field_too():
    p = template()
    bad = json.dumps({"reasoning": "r", "answer": "", "suggestion": {"tpl": "Answer positive or negative."}})
    good = json.dumps({"reasoning": "r", "answer": "", "suggestion": {"tpl": "Sentence: {input}\nLabel:"}})
    x = to.Variable("great film", role="input")
    out = to.Variable(p.text.format(input=x.text), role="output", parents=[p, x])
    opt = to.OptoPrime([p], engine=to.ScriptedEngine([bad, good]))
    opt.backward(out, "wrong label")
    report = opt.step()
    assert p.value == "Sentence: {input}\nLabel:"
    assert any(f.kind == "missing field" for f in report.failures)
