"""Variables, graph links, errors that name the variable."""
from __future__ import annotations

import gc
import weakref

import pytest

import textopt as to
from textopt.graph import topological_order


def test_op_output_links_to_inputs_and_inherits_requires_grad():
    eng = to.ScriptedEngine("answer")
    prompt = to.Variable("Be brief.", role="system prompt", requires_grad=True)
    q = to.Variable("What is 2+2?", role="question")
    out = to.LLM(eng, system_prompt=prompt)(q)
    assert out.parents == (prompt, q)
    assert out.requires_grad and out.value == "answer"
    assert isinstance(out.grad_fn, to.LLMCall)
    const = to.LLM(eng)(q)
    assert not const.requires_grad


def test_names_are_unique_and_explicit_names_kept():
    a = to.Variable("x", role="system prompt")
    b = to.Variable("x", role="system prompt")
    assert a.name != b.name and a.name.startswith("system_prompt_")
    assert to.Variable("x", role="r", name="mine").name == "mine"


def test_role_required_and_trainable_values_are_text():
    with pytest.raises(ValueError, match="role"):
        to.Variable("x", role="")
    with pytest.raises(TypeError, match="must be text"):
        to.Variable(3, role="count", requires_grad=True)
    # non-text values are fine when not trainable, and read as JSON
    v = to.Variable({"b": 1, "a": [1, 2]}, role="parsed data")
    assert v.text == '{"a": [1, 2], "b": 1}'


def test_empty_variable_is_a_clear_error_naming_it():
    eng = to.ScriptedEngine("x")
    empty = to.Variable("   ", role="question", name="q_empty")
    with pytest.raises(ValueError, match="q_empty"):
        to.LLM(eng)(empty)
    assert eng.calls == []  # nothing was sent


def test_cycle_is_detected_and_named():
    a = to.Variable("a", role="first", requires_grad=True, name="A")
    b = to.Variable("b", role="second", requires_grad=True, parents=[a], name="B")
    a.parents = (b,)  # re-pointing parents by hand makes a cycle
    with pytest.raises(to.GraphError, match="cycle through variable") as info:
        topological_order(b)
    assert "'A'" in str(info.value) or "'B'" in str(info.value)


def test_backward_without_trainable_ancestor_explains():
    eng = to.ScriptedEngine("fine")
    out = to.LLM(eng)(to.Variable("q", role="question", name="plainq"))
    with pytest.raises(to.GraphError, match="does not require grad"):
        out.backward(eng)


def test_graph_is_freed_when_variables_are_dropped():
    eng = to.ScriptedEngine("r")
    prompt = to.Variable("p", role="system prompt", requires_grad=True)
    out = to.LLM(eng, system_prompt=prompt)(to.Variable("q", role="question"))
    ref = weakref.ref(out)
    q_ref = weakref.ref(out.parents[1])
    del out
    gc.collect()
    assert ref() is None and q_ref() is None


def test_ops_reject_non_variables():
    with pytest.raises(TypeError, match="Variables"):
        to.aggregate([to.Variable("a", role="r"), 3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="at least one"):
        to.aggregate([])
