"""The recorded graph as data and as a picture: networkx export, DOT, SVG, inline display in notebooks.

`graph(output)` walks the parents of `output` (iteratively, so deep chains are fine) and returns a
networkx DiGraph (edges point from input to output) that also knows how to show itself: `.to_dot()`,
`.to_svg()` (graphviz's `dot` when it is on PATH, else a small built-in layered layout), and Jupyter's
`_repr_svg_`. Trainable variables are highlighted, error nodes are red.
networkx is imported on first use, never with textopt itself.
"""
from __future__ import annotations

import html
import shutil
import subprocess
from typing import Any

from .errors import GraphError
from .function import OpDescription
from .order import topological_order  # noqa: F401  (re-exported: textopt.graph.topological_order)
from .variable import Variable

LABEL_CHARS = 40
_COLORS = {"trainable": "#ffd966", "error": "#f4a6a6", "op": "#dbe8fb", "leaf": "#eeeeee"}


def describe(var: Variable) -> OpDescription | None:
    """What the op that made `var` says about that call (None for a leaf)."""
    if var.grad_fn is None or var.ctx is None:
        return None
    return var.grad_fn.describe(var.ctx, var)


def _kind(var: Variable) -> str:
    if var.requires_grad and var.grad_fn is None:
        return "trainable"
    if var.ctx is not None and var.ctx.error is not None:
        return "error"
    return "op" if var.grad_fn is not None else "leaf"


def _short(text: str, n: int = LABEL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def graph(output: Variable) -> Any:
    """The recorded graph up to `output` as a networkx DiGraph (a `Graph`: it can draw itself).

    Nodes are variable names with attributes role, value (short), op, doc (what the op says it does),
    trainable, error, kind. Raises GraphError on a cycle.
    """
    if not isinstance(output, Variable):
        raise TypeError(f"graph() takes the output Variable, got {type(output).__name__}")
    nodes = topological_order(output)
    g = _graph_class()()
    ids: dict[int, str] = {}
    used: set[str] = set()
    for v in nodes:
        k = v.name
        n = 2
        while k in used:  # two variables given the same name by hand
            k, n = f"{v.name}#{n}", n + 1
        used.add(k)
        ids[id(v)] = k
        kind = _kind(v)
        desc = describe(v)
        g.add_node(
            k, role=v.role, value=_short(v.text, 200), op=desc.name if desc else "", doc=desc.doc if desc else "",
            trainable=kind == "trainable", error=kind == "error", kind=kind,
        )
    for v in nodes:
        for p in v.parents:
            g.add_edge(ids[id(p)], ids[id(v)])
    return g


def to_dot(g: Any) -> str:
    """DOT text of a graph from `graph()`: trainable variables filled yellow, errors red."""
    def q(s: str) -> str:
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["digraph textopt {", "  rankdir=TB;", '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];']
    for n, a in g.nodes(data=True):
        head = f"{a['op']} -> {n}" if a["op"] else n
        label = q(head)[:-1] + "\\n" + q(_short(a["value"], LABEL_CHARS))[1:]  # two lines: op -> name, value
        extra = ", penwidth=2" if a["trainable"] else ""
        lines.append(f"  {q(n)} [label={label}, fillcolor={q(_COLORS[a['kind']])}, tooltip={q(a['role'])}{extra}];")
    for u, v in g.edges():
        lines.append(f"  {q(u)} -> {q(v)};")
    lines.append("}")
    return "\n".join(lines)


def to_svg(g: Any, *, engine: str = "auto") -> str:
    """SVG of the graph: graphviz `dot` when installed (engine="auto"/"dot"), else a built-in layered layout."""
    dot = shutil.which("dot") if engine in ("auto", "dot") else None
    if engine == "dot" and dot is None:
        raise RuntimeError("graphviz's `dot` is not on PATH; install graphviz (e.g. apt-get install graphviz) or use engine='builtin'")
    if dot is not None:
        done = subprocess.run([dot, "-Tsvg"], input=to_dot(g).encode(), capture_output=True, timeout=60)
        if done.returncode == 0:
            return done.stdout.decode()
        if engine == "dot":
            raise RuntimeError(f"dot failed: {done.stderr.decode()[:500]}")
    return _builtin_svg(g)


def _builtin_svg(g: Any, max_nodes: int = 200) -> str:
    """A plain layered drawing (one row per topological generation), enough to read small graphs inline."""
    import networkx as nx  # networkx is optional: only graph export needs it

    nodes = list(nx.topological_sort(g))
    shown = set(nodes if len(nodes) <= max_nodes else nodes[: max_nodes // 2] + nodes[-max_nodes // 2 :])
    sub = g.subgraph(shown)
    rows = list(nx.topological_generations(sub))
    w_box, h_box, gap_x, gap_y = 190, 44, 20, 36
    width = max(len(r) for r in rows) * (w_box + gap_x) + gap_x
    height = len(rows) * (h_box + gap_y) + gap_y + (20 if len(shown) < len(nodes) else 0)
    pos: dict[str, tuple[int, int]] = {}
    for y, row in enumerate(rows):
        for x, n in enumerate(sorted(row)):
            pos[n] = (gap_x + x * (w_box + gap_x), gap_y + y * (h_box + gap_y))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="Helvetica" font-size="10">',
           '<defs><marker id="a" markerWidth="8" markerHeight="8" refX="8" refY="4" orient="auto"><path d="M0,0 L8,4 L0,8 z"/></marker></defs>']
    for u, v in sub.edges():
        (x1, y1), (x2, y2) = pos[u], pos[v]
        out.append(f'<line x1="{x1 + w_box // 2}" y1="{y1 + h_box}" x2="{x2 + w_box // 2}" y2="{y2}" stroke="#555" marker-end="url(#a)"/>')
    for n in sub.nodes():
        a = g.nodes[n]
        x, y = pos[n]
        stroke = ' stroke-width="2"' if a["trainable"] else ""
        head = f"{a['op']} -> {n}" if a["op"] else n
        out.append(f'<g><title>{html.escape(a["role"])}</title><rect x="{x}" y="{y}" width="{w_box}" height="{h_box}" rx="6" '
                   f'fill="{_COLORS[a["kind"]]}" stroke="#333"{stroke}/>'
                   f'<text x="{x + 6}" y="{y + 17}" font-weight="bold">{html.escape(_short(head, 32))}</text>'
                   f'<text x="{x + 6}" y="{y + 33}">{html.escape(_short(a["value"], 34))}</text></g>')
    if len(shown) < len(nodes):
        out.append(f'<text x="{gap_x}" y="{height - 6}">[{len(nodes) - len(shown)} middle nodes not drawn]</text>')
    out.append("</svg>")
    return "\n".join(out)


_CLASS: list[Any] = []


def _graph_class() -> Any:
    if not _CLASS:
        import networkx as nx  # networkx is optional: only graph export needs it

        class Graph(nx.DiGraph):
            """A networkx DiGraph of a textopt run that can draw itself (DOT, SVG, inline in Jupyter)."""

            def to_dot(self) -> str:
                return to_dot(self)

            def to_svg(self, engine: str = "auto") -> str:
                return to_svg(self, engine=engine)

            def _repr_svg_(self) -> str:
                return to_svg(self)

        _CLASS.append(Graph)
    return _CLASS[0]
