"""Issue 13, the graph: cycles are caught wherever a graph is walked, None is no value, and nested sums
stay small."""
from __future__ import annotations

import pytest

import textopt as to


def _cycle():
    a = to.Variable("a", role="first", requires_grad=True, name="A")
    b = to.Variable("b", role="second", requires_grad=True, parents=[a], name="B")
    a.parents = (b,)
    return a, b


def test_to_graph_rejects_a_cycle():
    _, b = _cycle()
    with pytest.raises(to.GraphError, match="cycle"):
        to.graph(b)


def test_optoprime_rejects_a_cycle():
    a, b = _cycle()
    opt = to.OptoPrime([a], engine=to.ScriptedEngine(""))
    with pytest.raises(to.GraphError, match="cycle"):
        opt.backward(b, "bad")


def test_variable_none_is_a_clear_error():
    with pytest.raises(ValueError, match="None"):
        to.Variable(None, role="answer")


def test_nested_sums_keep_a_short_role_and_a_small_drawing():
    v = to.Variable("loss 0", role="evaluation of the answer", requires_grad=True)
    for i in range(1, 3000):
        v = to.aggregate([v, to.Variable(f"loss {i}", role="evaluation of the answer" if i % 2 else "evaluation of the plan")])
    assert len(v.role) < 200, len(v.role)
    assert len(to.graph(v).to_dot()) < 2_000_000
