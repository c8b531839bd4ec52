"""Variable: a value in a text pipeline, the node of the dynamic graph, and the holder of its feedback.

The graph is only `parents` links (and the op that made the variable); drop the variables and the
graph goes with them. There is no registry.
"""
from __future__ import annotations

import functools
import io
import itertools
import pickle
import re
import string
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ._sync import sync_twin
from .backward import run_backward
from .feedback import Feedback
from .text import as_text  # noqa: F401  (re-exported: textopt.variable.as_text)

#: The old name of Feedback, kept so that Variables pickled before the merge still load.
Gradient = Feedback

if TYPE_CHECKING:
    from .engines.base import Engine

_counter = itertools.count(1)


@functools.lru_cache(maxsize=1024)  # every Variable made without a name asks; roles repeat (one per call site)
def _slug(role: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", role.lower()).strip("_")
    return (s[:32].rstrip("_") or "var")


class Variable:
    """A value (usually text) with a role, optionally trainable, linked to the variables it came from.

    role says what the value is for ("system prompt of the counting assistant"); the LLM sees it in
    every gradient and update prompt, so make it specific. Trainable variables must hold text.
    """

    def __init__(
        self,
        value: Any,
        *,
        role: str,
        requires_grad: bool = False,
        name: str | None = None,
        parents: Iterable["Variable"] = (),
        required: Iterable[str] | None = None,
        validate: "Callable[[str], str | None] | None" = None,
    ) -> None:
        if not isinstance(role, str) or not role.strip():
            raise ValueError("Variable needs a role: a short description of what the value is, e.g. role='system prompt'")
        self.role = role
        self.name = name if name is not None else f"{_slug(role)}_{next(_counter)}"
        self.parents: tuple[Variable, ...] = tuple(parents)
        for p in self.parents:
            if not isinstance(p, Variable):
                raise TypeError(f"parents of {self.name!r} must be Variables, got {type(p).__name__}")
        if value is None and not self.parents:
            raise ValueError(
                f"Variable(None, role={role!r}): a Variable needs a value (None would reach the LLM as the text 'null'); "
                "use '' for empty text"
            )
        if requires_grad and not self.parents and not isinstance(value, str):
            raise TypeError(
                f"trainable variable {self.name!r} holds a {type(value).__name__}; trainable values must be text "
                "(convert it with str(...) or keep it constant with requires_grad=False)"
            )
        self.value = value
        self.requires_grad = bool(requires_grad)
        #: `{field}`s every new value must keep (an optimizer refuses a proposal that drops one). Declared, or
        #: for a role that says "template", the fields of the initial value: a template without `{input}` would
        #: be scored without the input, and a small model would game the metric by echoing a label.
        self.required: frozenset[str] = frozenset(required) if required is not None else (
            template_fields(value) if isinstance(value, str) and "template" in role.lower() else frozenset())
        #: Optional rule for new values: returns why a value is refused (optimizers re-ask once with it), or None.
        self.validate = validate
        self.gradients: list[Feedback] = []
        self.grad_fn: Any = None  # the op (a textopt.function.Function) that made it; function.py imports this module
        self.ctx: Any = None  # that op's textopt.function.OpContext
        #: True for a loss's output (a TextLoss evaluation, or `to.aggregate` of losses): the one record of that
        #: fact. A backward pass sends such a variable the objective (`Feedback.objective`: its own text, the
        #: thing to improve) when no consumer sent it feedback.
        self.is_loss = False
        self._feedback_cache: tuple[int, str] | None = None

    # -- text ---------------------------------------------------------------------------------
    @property
    def text(self) -> str:
        """The value as the LLM reads it."""
        return as_text(self.value)

    def set_value(self, value: str) -> None:
        """Replace the value (optimizers call this). Trainable values stay text."""
        if self.requires_grad and not self.parents and not isinstance(value, str):
            raise TypeError(f"new value of trainable variable {self.name!r} must be text, got {type(value).__name__}")
        self.value = value
        self._feedback_cache = None

    # -- gradients ----------------------------------------------------------------------------
    def add_gradient(self, text: str, source: "Variable | None" = None) -> None:
        """Record feedback on this variable (from a consumer, or given by hand)."""
        self.gradients.append(Feedback(text=text, source=source.name if source else "", source_role=source.role if source else ""))
        self._feedback_cache = None

    def zero_grad(self) -> None:
        self.gradients.clear()
        self._feedback_cache = None

    async def abackward(self, engine: "Engine | str | None" = None) -> None:
        """Textual backward pass from this variable (usually a loss): feedback reaches every trainable ancestor."""
        await run_backward(self, engine)

    backward = sync_twin(abackward, "Sync `abackward`; works in scripts and inside a notebook's running event loop.")

    # -- pickling -------------------------------------------------------------------------------
    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        """Pickle the graph flat: a 10,000-node chain would nest pickle 10,000 levels deep (RecursionError).
        Every ancestor's state is pickled on its own, other variables of the graph referred to by index;
        shared nodes stay shared and a cycle of parents comes back as a cycle. (Two variables pickled side by
        side, one an ancestor of the other, come back as two graphs: pickle the output alone.)"""
        nodes = _ancestors(self)
        index = {id(v): i for i, v in enumerate(nodes)}

        class Flat(pickle.Pickler):
            def persistent_id(self, obj: Any) -> Any:
                return index.get(id(obj)) if isinstance(obj, Variable) else None

        blobs = []
        for v in nodes:
            state = {k: val for k, val in v.__dict__.items() if k != "parents"}
            buf = io.BytesIO()
            Flat(buf, protocol if isinstance(protocol, int) and protocol >= 2 else 2).dump(state)
            blobs.append(buf.getvalue())
        parents = [tuple(index[id(p)] for p in v.parents) for v in nodes]
        return (_rebuild_graph, ([type(v) for v in nodes], blobs, parents, index[id(self)]))

    # -- misc -----------------------------------------------------------------------------------
    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        text = self.text
        short = text if len(text) <= 60 else text[:57] + "..."
        flag = ", requires_grad=True" if self.requires_grad else ""
        return f"Variable({short!r}, role={self.role!r}, name={self.name!r}{flag})"


def template_fields(text: str) -> frozenset[str]:
    """The `{name}` fields of a str.format template (`{{` escapes and positional `{}` are not fields)."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError:  # an unbalanced brace: not a format template
        return frozenset()
    return frozenset(f for _, f, _, _ in parsed if f and f.isidentifier())


def missing_fields(param: Variable, value: Any) -> tuple[str, str] | None:
    """("missing field", reason) when text `value` lacks a `{field}` that `param` declares, ("invalid", reason)
    when the variable's own `validate` refuses it, else None."""
    rule = getattr(param, "validate", None)
    if rule is not None and isinstance(value, str):
        why = rule(value)
        if why:
            return ("invalid", f"the proposed value was refused: {why}")
    required = getattr(param, "required", frozenset())
    if not required or not isinstance(value, str):
        return None
    lost = sorted(f for f in required if "{" + f + "}" not in value)
    if not lost:
        return None
    names = ", ".join("{" + f + "}" for f in lost)
    return ("missing field", f"the proposed value drops {names}: {param.name!r} must keep {names} exactly as written "
            "(that is where the input goes)")


def _ancestors(root: Variable) -> list[Variable]:
    """root and everything reachable through parents, each once (iterative: any depth, cycles included)."""
    seen = {id(root)}
    order = [root]
    stack = [root]
    while stack:
        for p in stack.pop().parents:
            if id(p) not in seen:
                seen.add(id(p))
                order.append(p)
                stack.append(p)
    return order


def _rebuild_graph(classes: list[type], blobs: list[bytes], parents: list[tuple[int, ...]], root: int) -> Variable:
    """Unpickle what `Variable.__reduce_ex__` wrote: bare nodes first, then each node's state and parents."""
    nodes = [cls.__new__(cls) for cls in classes]

    class Flat(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            return nodes[pid]

    for node, blob, links in zip(nodes, blobs, parents):
        state = Flat(io.BytesIO(blob)).load()
        if "is_objective" in state:  # pickled before the objective marker moved to Feedback
            state["is_loss"] = state.pop("is_objective")
        node.__dict__.update(state)
        node.parents = tuple(nodes[i] for i in links)
    return nodes[root]

