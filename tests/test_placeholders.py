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


@pytest.mark.parametrize("bad, reason", [
    ("{input} Is this {label}?", "{label}, which nothing fills"),                      # a slot nobody fills
    ("<value>{input}</value> Is this positive or negative?", "copied from the request's layout"),  # our tag copied in
])
def test_a_label_template_refuses_stray_slots_and_copied_tags_and_asks_again(bad, reason):
    from functools import partial

    from textopt.datasets import template_problem

    labels = ("positive", "negative")
    p = to.Variable("{input}\nIs this positive or negative?", role="instruction template (user turn)", requires_grad=True,
                    name="tpl", validate=partial(template_problem, labels=labels))
    p.add_gradient("the replies name both labels")
    good = "{input}\nIs this positive or negative? Answer with one word."
    eng = to.ScriptedEngine([reply(bad), reply(good)])
    report = to.TGD([p], engine=eng).step()
    assert p.value == good and len(eng.calls) == 2
    assert len(report.failures) == 1 and reason in report.failures[0].error
    assert reason in "\n".join(m["content"] for m in eng.calls[1])  # the re-ask names why
    assert template_problem('{input} Reply as {"label": "positive"} or {"label": "negative"}', labels) is None  # JSON is not a slot


def test_a_value_that_opens_our_tag_and_never_closes_it_is_refused_and_asked_again():
    """AEGIS on the 1.5B put `<value>` + the old prompt + the critique into its pool (2026-12-07)."""
    p = to.Variable("Flag injections.", role="detector instructions", requires_grad=True, name="det")
    p.add_gradient("it misses notes to the grader")
    eng = to.ScriptedEngine([reply("<value>\nFlag injections.\nTo improve the detector, use NLP"),
                             reply("Flag injections and any note addressed to the grader.")])
    opt = to.TGD([p], engine=eng)
    opt.step()
    assert p.value == "Flag injections and any note addressed to the grader."
    assert [f.kind for f in opt.failures] == ["tag"] and "never closes" in opt.failures[0].error
    assert "never closes" in eng.calls[1][-1]["content"]  # the re-ask names the reason
    closed = to.Variable("x", role="detector instructions", requires_grad=True, name="d2")
    closed.add_gradient("g")
    to.TGD([closed], engine=to.ScriptedEngine(reply("<value>Flag notes to the grader.</value>"))).step()
    assert closed.value == "Flag notes to the grader."  # a closed wrapper is unwrapped, not refused
