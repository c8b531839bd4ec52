"""to.graph: networkx export of the recorded graph, DOT, SVG, inline display; trainable highlighted."""
from __future__ import annotations

import shutil
import subprocess
import sys
import xml.dom.minidom

import pytest

import textopt as to
from textopt.graph import to_svg


@to.trace
def shout(text: str) -> str:
    return text.upper()


@to.trace
def crash(text: str) -> str:
    raise RuntimeError("no")


def build():
    p = to.Variable('say "hi"', role="prompt", requires_grad=True, name="prompt")
    c = to.Variable("ctx", role="context", name="context")
    y = shout(p)
    with pytest.raises(to.TraceError) as info:
        crash(y)
    return p, c, y, info.value.variable


def test_graph_nodes_edges_and_attributes():
    p, _, y, err = build()
    g = to.graph(err)
    import networkx as nx

    assert isinstance(g, nx.DiGraph)
    assert set(g.nodes) == {p.name, y.name, err.name}
    assert set(g.edges) == {(p.name, y.name), (y.name, err.name)}
    assert g.nodes[p.name]["trainable"] and g.nodes[p.name]["kind"] == "trainable"
    assert g.nodes[err.name]["error"] and g.nodes[y.name]["op"] == "shout"


def test_dot_highlights_trainable_and_escapes_quotes():
    p, _, _, err = build()
    dot = to.graph(err).to_dot()
    assert dot.startswith("digraph") and dot.rstrip().endswith("}")
    line = next(l for l in dot.splitlines() if l.strip().startswith(f'"{p.name}" ['))
    assert "#ffd966" in line and "penwidth=2" in line and 'say \\"hi\\"' in line
    if shutil.which("dot"):
        subprocess.run(["dot", "-Tsvg"], input=dot.encode(), check=True, capture_output=True)


def test_svg_renders_inline_without_graphviz():
    _, _, _, err = build()
    g = to.graph(err)
    svg = g._repr_svg_()
    doc = xml.dom.minidom.parseString(svg)
    assert doc.documentElement.tagName == "svg"
    assert svg.count("<rect") == 3 and "#ffd966" in svg and "#f4a6a6" in svg
    assert to_svg(g, engine="builtin") == to_svg(g, engine="builtin")
    if not shutil.which("dot"):
        with pytest.raises(RuntimeError, match="graphviz"):
            g.to_svg(engine="dot")


def test_deep_chain_and_duplicate_names():
    v = to.Variable("x", role="seed", requires_grad=True)
    for _ in range(3000):  # deeper than the recursion limit
        v = shout(v)
    g = to.graph(v)
    assert g.number_of_nodes() == 3001
    a = to.Variable("a", role="r", name="same")
    b = to.Variable("b", role="r", name="same")
    out = to.Variable("o", role="r", parents=[a, b])
    assert to.graph(out).number_of_nodes() == 3
    svg = to_svg(g, engine="builtin")
    assert "middle nodes not drawn" in svg


def test_graph_rejects_non_variables_and_import_stays_lazy():
    with pytest.raises(TypeError, match="Variable"):
        to.graph("text")
    code = "import sys, textopt; assert 'networkx' not in sys.modules; textopt.trace; assert 'networkx' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
