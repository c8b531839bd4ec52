"""The op contract: a forward and its textual backward, side by side (cf. torch.autograd.Function).

To add an op, subclass Function and write two coroutines:

    forward(ctx, *inputs)                 -> the output value (save what backward needs on ctx)
    backward(ctx, output, feedback, engine) -> {input: feedback text} for inputs that need it

The framework records the graph and schedules backward; it never special-cases an op by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from ._sync import run_sync
from .engines.base import Engine
from .variable import Variable


class Context(dict):
    """Per-call scratch space shared by an op's forward and backward (messages sent, engine used, ...)."""


@dataclass(frozen=True)
class Feedback:
    """What backward hands an op about its output. is_objective: the output *is* the objective (a loss),
    so `text` is the output itself and the task is to improve it, not to follow further feedback."""

    text: str
    is_objective: bool = False


class Function:
    """Base class of ops. Subclasses set `role` (the output's role) or override `output_role`."""

    role: str = "output"

    async def forward(self, ctx: Context, *inputs: Variable) -> Any:
        raise NotImplementedError

    async def backward(self, ctx: Context, output: Variable, feedback: Feedback, engine: Engine) -> Mapping[Variable, str]:
        raise NotImplementedError

    def output_role(self, *inputs: Variable) -> str:
        return self.role

    @property
    def op_name(self) -> str:
        return type(self).__name__

    async def acall(self, *inputs: Variable | str) -> Variable:
        """Run forward and record the output Variable with its inputs as parents."""
        vars_ = tuple(_as_input(x) for x in inputs)
        ctx = Context()
        value = await self.forward(ctx, *vars_)
        out = Variable(value, role=self.output_role(*vars_), parents=vars_, requires_grad=any(v.requires_grad for v in vars_))
        out.grad_fn = self
        out.ctx = ctx
        return out

    def __call__(self, *inputs: Variable | str) -> Variable:
        return run_sync(self.acall(*inputs))


def _as_input(x: Variable | str) -> Variable:
    if isinstance(x, Variable):
        return x
    if isinstance(x, str):
        return Variable(x, role="input")
    raise TypeError(f"ops take Variables (or str, wrapped as a constant input), got {type(x).__name__}")


def require_text(var: Variable, op: str) -> str:
    """The variable's text, or a clear error when there is nothing for an LLM to read."""
    text = var.text
    if not text.strip():
        raise ValueError(
            f"{op} got an empty variable {var.name!r} (role: {var.role}); give it text before calling the op"
        )
    return text
