"""Sum: join several variables into one (e.g. the losses of a minibatch). Backward needs no LLM call."""
from __future__ import annotations

from typing import Iterable, Mapping

from ..engines.base import Engine
from ..function import Context, Feedback, Function
from ..variable import Variable


class Sum(Function):
    """Forward: the inputs' texts, one per block. Backward: each input gets the sum's feedback as is
    (when the sum is the objective, each input is the objective itself: its own text)."""

    def output_role(self, *inputs: Variable) -> str:
        roles = sorted(set(v.role for v in inputs))
        return "sum of " + (roles[0] if len(roles) == 1 else "; ".join(roles))

    async def forward(self, ctx: Context, *inputs: Variable) -> str:
        return "\n\n".join(v.text for v in inputs)

    async def backward(self, ctx: Context, output: Variable, feedback: Feedback, engine: Engine) -> Mapping[Variable, str]:
        if feedback.is_objective:
            return {v: v.text for v in output.parents if v.requires_grad}
        return {v: feedback.text for v in output.parents if v.requires_grad}


def sum(variables: Iterable[Variable]) -> Variable:  # noqa: A001 - mirrors torch.sum
    """One Variable standing for all of `variables` (typically losses); backward reaches each."""
    vs = list(variables)
    if not vs:
        raise ValueError("to.sum needs at least one Variable")
    return Sum()(*vs)
