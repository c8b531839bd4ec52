"""The reply parser takes what grammar-constrained servers really send: JSON whose strings hold raw control
characters (a literal newline or tab), which strict `json.loads` rejects (issue 14)."""
from __future__ import annotations

import json

import pytest

import textopt as to
from textopt.optim.parse import loads, parse_reply

RAW = '{"reasoning": "two\tfixes", "new_value": "Line one.\nLine two:\tindented."}'


def test_strict_json_rejects_the_raw_reply():
    # the premise: this is what broke CI on a fresh clone
    with pytest.raises(json.JSONDecodeError):
        json.loads(RAW)


def test_raw_newlines_and_tabs_inside_strings_are_accepted_and_kept():
    obj = parse_reply(RAW, ["new_value"])
    assert obj["new_value"] == "Line one.\nLine two:\tindented."
    assert obj["reasoning"] == "two\tfixes"
    assert loads('"a\rb"') == "a\rb"


@pytest.mark.parametrize("wrap", ["{}", "```json\n{}\n```", "Here you go: {} Hope it helps."])
def test_raw_control_characters_amid_prose_and_fences(wrap):
    obj = parse_reply(wrap.replace("{}", RAW), ["new_value"])
    assert obj["new_value"].splitlines() == ["Line one.", "Line two:\tindented."]


def test_tgd_uses_a_raw_control_character_reply_without_a_repair_request():
    engine = to.ScriptedEngine([RAW])  # a second request would raise: the script has one reply
    prompt = to.Variable("Answer.", role="system prompt", requires_grad=True)
    prompt.add_gradient("Ask for two lines.")
    opt = to.TGD([prompt], engine=engine)
    opt.step()
    assert len(engine.calls) == 1
    assert opt.failures == []
    assert prompt.value == "Line one.\nLine two:\tindented."


def test_optoprime_suggestion_with_raw_newline_is_used():
    reply = '{"suggestion": {"instruction": "Count.\nThen answer with a number."}, "reasoning": "r"}'
    engine = to.ScriptedEngine([reply])
    instruction = to.Variable("Answer.", role="instruction", requires_grad=True, name="instruction")
    out = to.LLMCall(to.ScriptedEngine("4"))(instruction, "How many?")
    opt = to.OptoPrime([instruction], engine=engine)
    opt.backward(out, "The answer must be 3.")
    opt.step()
    assert len(engine.calls) == 1 and opt.failures == []
    assert instruction.value == "Count.\nThen answer with a number."
