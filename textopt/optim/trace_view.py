"""What OptoPrime shows of one recorded output: its execution trace as code-like lines, within a budget.

Every op speaks for itself through `Function.describe(ctx, output)` (name, arguments, doc, note); this
module never reads an op's private state. Prompts stay bounded as graphs grow: calls are listed from
both ends of the trace (and every call that reads a trainable variable) until TRACE_CHARS is used; the
middle is replaced by a marker that counts what was left out. Intermediate values are cut to
VALUE_CHARS and repeats point to their first occurrence. Trainable values are never cut.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..function import OpDescription
from ..graph import describe, topological_order
from ..variable import Variable

#: Budget (characters) for the code-like lines of one trace.
TRACE_CHARS = 4500
#: Intermediate values are shown up to this many characters.
VALUE_CHARS = 80
#: Inputs (constants) and outputs are shown up to these many characters.
INPUT_CHARS = 400
OUTPUT_CHARS = 1500
#: At most this many inputs are listed (the rest are counted).
MAX_INPUTS = 12
#: What an op says it does (a traced function: its docstring and, unless trainable, its source), per op;
#: at most MAX_DOCS ops.
DOC_CHARS = 1200
MAX_DOCS = 12


@dataclass
class TraceView:
    """What one output's trace contributes to the prompt (ready for the template)."""

    lines: list[str] = field(default_factory=list)
    docs: list[tuple[str, str]] = field(default_factory=list)
    inputs: list[tuple[str, str, str]] = field(default_factory=list)
    output: tuple[str, str, str] = ("", "", "")
    feedback: str = ""


def short(text: str, limit: int) -> str:
    """`text` within `limit` chars (short limits also fold whitespace); the middle elided with a count."""
    text = " ".join(text.split()) if limit <= VALUE_CHARS else text
    if len(text) <= limit:
        return text
    keep = max(limit - 30, 10)
    return f"{text[: keep * 2 // 3]} [... {len(text) - keep} chars elided ...] {text[len(text) - keep // 3:]}"


def call_line(var: Variable, desc: OpDescription) -> str:
    """`out = fn(a=x_1, b='const')  # note`; positional arguments (name "") show the value alone."""
    parts = []
    for key, val in desc.args:
        shown = val.name if isinstance(val, Variable) else short(repr(val), 40)
        parts.append(f"{key}={shown}" if key else shown)
    note = f"  # {desc.note}" if desc.note else ""
    return f"{var.name} = {desc.name}({', '.join(parts)}){note}"


def ancestors(output: Variable) -> list[Variable]:
    """`output` and everything it was computed from, producers first. Raises GraphError on a cycle."""
    return list(reversed(topological_order(output)))


def build_view(output: Variable, feedback: str, parameters: Sequence[Variable]) -> TraceView:
    """The trace of `output`: a line per call with a short view of its value, the ops' docs, the inputs."""
    nodes = ancestors(output)
    in_graph = {id(v) for v in nodes}
    params = {id(p) for p in parameters}
    ops = [(v, d) for v in nodes if (d := describe(v)) is not None]
    leaves: list[Variable] = []
    seen: set[int] = set()
    for v, _ in ops:
        for p in v.parents:
            if id(p) not in seen and id(p) not in params and (id(p) not in in_graph or p.grad_fn is None):
                seen.add(id(p))
                leaves.append(p)
    view = TraceView(feedback=feedback)
    first_seen: dict[str, str] = {}
    lines: list[str] = []
    docs: dict[str, str] = {}
    for v, desc in ops:
        text = v.text
        if v is output:
            shown = "(the output, below)"
        elif text in first_seen:
            shown = f"[same value as {first_seen[text]}]"
        else:
            first_seen[text] = v.name
            shown = repr(short(text, VALUE_CHARS))
        lines.append(f"{call_line(v, desc)}   # -> {shown}")
        if desc.name not in docs and len(docs) < MAX_DOCS:
            docs[desc.name] = short(desc.doc, DOC_CHARS)
    view.lines = fit(lines, [v for v, _ in ops], [d.name for _, d in ops], params)
    view.docs = list(docs.items())
    for leaf in leaves[:MAX_INPUTS]:
        view.inputs.append((leaf.name, leaf.role, short(leaf.text, INPUT_CHARS)))
    if len(leaves) > MAX_INPUTS:
        view.inputs.append(("...", "", f"[{len(leaves) - MAX_INPUTS} more inputs not shown]"))
    view.output = (output.name, output.role, short(output.text, OUTPUT_CHARS))
    return view


def fit(lines: list[str], ops: list[Variable], labels: list[str], params: set[int]) -> list[str]:
    """Lines from both ends (and every call reading a parameter) within TRACE_CHARS; a marker for the gap."""
    if sum(len(x) + 1 for x in lines) <= TRACE_CHARS:
        return lines
    keep: set[int] = {i for i, v in enumerate(ops) if any(id(p) in params for p in v.parents)}
    keep.add(len(ops) - 1)
    budget = TRACE_CHARS - sum(len(lines[i]) + 1 for i in keep)
    lo, hi = 0, len(lines) - 1
    while lo <= hi and budget > 0:
        for i in (lo, hi):
            if i not in keep and len(lines[i]) + 1 <= budget:
                keep.add(i)
                budget -= len(lines[i]) + 1
        lo, hi = lo + 1, hi - 1
    # don't let the parameter readers scattered in a huge graph blow the budget: cap the kept set
    kept = sorted(keep)
    total = sum(len(lines[i]) + 1 for i in kept)
    while total > TRACE_CHARS * 1.5 and len(kept) > 2:
        drop = kept.pop(len(kept) // 2)
        total -= len(lines[drop]) + 1
    out: list[str] = []
    prev = -1
    for i in kept:
        if i > prev + 1:
            gap = labels[prev + 1 : i]
            fns = sorted(set(gap))
            out.append(f"# [... {len(gap)} calls elided here ({', '.join(fns[:5])}{', ...' if len(fns) > 5 else ''}) ...]")
        out.append(lines[i])
        prev = i
    return out
