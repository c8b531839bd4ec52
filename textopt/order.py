"""The one walk of a graph: a variable and its ancestors, consumers before producers (backward, OptoPrime and
`graph()` all go through it). It reads only `.parents` and `.requires_grad`, so it needs no Variable import."""
from __future__ import annotations

from typing import Any

from .errors import GraphError


def topological_order(root: Any, *, requires_grad_only: bool = False) -> list[Any]:
    """`root` and its ancestors, each after all its consumers (root first); iterative, so deep chains are fine.

    requires_grad_only: follow only parents that require grad (what backward visits).
    Every walk of the graph (backward, OptoPrime, `graph()`) goes through here, so each one raises the
    same GraphError, naming the variables on the cycle, when parents were re-pointed into a loop.
    """
    order: list[Any] = []
    state: dict[int, int] = {}  # 1 = on the stack, 2 = done
    stack: list[tuple[Any, int]] = [(root, 0)]
    path: list[Any] = []
    while stack:
        var, i = stack.pop()
        if i == 0:
            if state.get(id(var)) == 2:
                continue
            state[id(var)] = 1
            path.append(var)
        parents = [p for p in var.parents if p.requires_grad] if requires_grad_only else var.parents
        if i < len(parents):
            stack.append((var, i + 1))
            p = parents[i]
            s = state.get(id(p))
            if s == 1:
                cycle = path[path.index(p):] + [p]
                names = " -> ".join(v.name for v in cycle)
                raise GraphError(
                    f"the graph has a cycle through variable {p.name!r} ({names}); a variable can't be its own ancestor: "
                    "build a new Variable instead of re-pointing parents"
                )
            if s is None:
                stack.append((p, 0))
        else:
            state[id(var)] = 2
            path.pop()
            order.append(var)
    order.reverse()  # post-order reversed: consumers before producers
    return order
