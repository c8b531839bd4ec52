"""Sum (`to.aggregate`): join several variables into one (e.g. the losses of a minibatch). Backward needs no LLM call."""
from __future__ import annotations

from typing import Iterable, Mapping

from ..engines.base import Engine
from ..function import Feedback, Function, OpContext
from ..variable import Variable

#: Roles named in a sum's own role (nested sums name the roles of what they add up, not each other's roles).
ROLES_SHOWN = 3


def _base_roles(inputs: tuple[Variable, ...]) -> list[str]:
    roles: set[str] = set()
    for v in inputs:
        inner = v.ctx.saved.get("roles") if isinstance(v.grad_fn, Sum) and v.ctx is not None else None
        roles.update(inner if inner is not None else (v.role,))
    return sorted(roles)


class Sum(Function):
    """Joins its inputs' texts, one block each. Backward: each input gets the sum's feedback as is; when the
    sum is the objective, each input is the objective itself (its own text, not the joined one)."""

    def output_role(self, *inputs: Variable) -> str:
        roles = _base_roles(inputs)
        more = f"; and {len(roles) - ROLES_SHOWN} more" if len(roles) > ROLES_SHOWN else ""
        return "sum of " + "; ".join(roles[:ROLES_SHOWN]) + more

    async def forward(self, ctx: OpContext, *inputs: Variable) -> str:
        return self.forward_sync(ctx, *inputs)

    def forward_sync(self, ctx: OpContext, *inputs: Variable) -> str:  # no I/O: no event loop needed
        ctx.saved["roles"] = _base_roles(inputs)
        return "\n\n".join(v.text for v in inputs)

    async def backward(self, ctx: OpContext, output: Variable, feedback: Feedback, engine: Engine) -> Mapping[Variable, str | Feedback]:
        if feedback.is_objective:
            return {v: Feedback.objective(v.text) for v in output.parents if v.requires_grad}
        return {v: feedback.text for v in output.parents if v.requires_grad}


def aggregate(variables: Iterable[Variable]) -> Variable:
    """One Variable standing for all of `variables` (typically losses); backward reaches each.
    An aggregate of losses is a loss itself (`is_loss`). (Named so as not to shadow the builtin sum.)"""
    vs = list(variables)
    if not vs:
        raise ValueError("to.aggregate needs at least one Variable")
    out = Sum()(*vs)
    out.is_loss = all(v.is_loss for v in vs if isinstance(v, Variable))
    return out
