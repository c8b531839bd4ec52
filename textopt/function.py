"""The op contract: a forward and its textual backward, side by side (cf. torch.autograd.Function).

To add an op, subclass Function and write two coroutines, plus (optionally) `describe`:

    forward(ctx, *inputs)                   -> the output value (save what backward needs in ctx.saved)
    backward(ctx, output, feedback, engine) -> {input: feedback text} for inputs that need it
    describe(ctx, output)                   -> OpDescription: how the call reads in OptoPrime's trace
                                               and in the graph drawing (default: class name, docstring)

The framework records the graph (`apply`, the one place an output Variable gets its op and context)
and schedules backward; it never special-cases an op by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ._sync import run_sync
from .errors import TextoptError
from .feedback import Feedback
from .variable import Variable

if TYPE_CHECKING:
    from .engines.base import Engine

@dataclass
class OpContext:
    """One call's record, shared by the op's forward, backward and describe (and read by the graph)."""

    engine: "Engine | None" = None  # the engine forward used; backward defaults to it
    error: BaseException | None = None  # set by forward when the output is an error node (value: the error text)
    args: list[tuple[str, Any]] = field(default_factory=list)  # (name or "", Variable or constant) as called
    saved: dict[str, Any] = field(default_factory=dict)  # op-private values for backward


@dataclass
class OpDescription:
    """How one call of an op is shown to an optimizer (OptoPrime's trace) and in `to.graph()`.

    The trace line reads `output = name(arg=..., ...)  # note`; `doc` is shown once per op name.
    """

    name: str
    args: list[tuple[str, Any]] = field(default_factory=list)
    doc: str = ""
    note: str = ""


class OpError(TextoptError):
    """An op's forward failed. `.variable` is the error node (its value says what went wrong, its parents
    are the call's inputs), so you can backward from it or hand it to an optimizer like any output."""

    def __init__(self, message: str, variable: Variable) -> None:
        super().__init__(message)
        self.variable = variable


class Function:
    """Base class of ops. Subclasses set `role` (the output's role) or override `output_role`."""

    role: str = "output"

    async def forward(self, ctx: OpContext, *inputs: Variable) -> Any:
        raise NotImplementedError

    def forward_sync(self, ctx: OpContext, *inputs: Variable) -> Any:
        """Forward for sync callers. Override when the op can run without the event loop (traced Python)."""
        return run_sync(self.forward(ctx, *inputs))

    async def backward(
        self, ctx: OpContext, output: Variable, feedback: Feedback, engine: "Engine"
    ) -> Mapping[Variable, "str | Feedback"]:
        raise NotImplementedError

    def describe(self, ctx: OpContext, output: Variable) -> OpDescription:
        """How this call reads in OptoPrime's trace and the graph drawing. Default: the op's class name,
        the arguments in ctx.args, and the first paragraph of the class docstring."""
        doc = (type(self).__doc__ or "").strip().split("\n\n")[0]
        return OpDescription(name=self.op_name, args=list(ctx.args), doc=" ".join(doc.split()) or f"produces {output.role}")

    def output_role(self, *inputs: Variable) -> str:
        return self.role

    def output_name(self, ctx: OpContext) -> str | None:
        """Name of the output Variable (None: made from its role)."""
        return None

    def error(self, ctx: OpContext, output: Variable) -> BaseException:
        """The exception raised to the caller when forward set ctx.error (output is the error node)."""
        exc = ctx.error
        first = str(exc).splitlines()[0] if exc is not None and str(exc) else ""
        err = OpError(f"{self.op_name} raised {type(exc).__name__}: {first} (the error node is .variable: {output.name})", output)
        err.__cause__ = exc
        return err

    @property
    def op_name(self) -> str:
        return type(self).__name__

    # -- recording: the one path from a call to a graph node ----------------------------------
    def record(self, ctx: OpContext, inputs: Sequence[Variable], value: Any) -> Variable:
        """The output Variable of a finished call: parents are `inputs`, grad_fn this op, ctx this call.
        Raises `self.error(...)` when forward marked the call as failed (ctx.error)."""
        role = f"error raised by {self.op_name}" if ctx.error is not None else self.output_role(*inputs)
        out = Variable(value, role=role, parents=inputs, requires_grad=any(v.requires_grad for v in inputs),
                       name=self.output_name(ctx))
        out.grad_fn = self
        out.ctx = ctx
        if ctx.error is not None:
            raise self.error(ctx, out)
        return out

    async def apply(self, inputs: Sequence[Variable], ctx: OpContext | None = None) -> Variable:
        """Run forward on `inputs` and record the output. `ctx` may come pre-filled (args with constants)."""
        ctx = ctx if ctx is not None else _positional(inputs)
        value = await self.forward(ctx, *inputs)
        return self.record(ctx, inputs, value)

    def apply_sync(self, inputs: Sequence[Variable], ctx: OpContext | None = None) -> Variable:
        """`apply` for sync callers (forward_sync, then the same recording)."""
        ctx = ctx if ctx is not None else _positional(inputs)
        value = self.forward_sync(ctx, *inputs)
        return self.record(ctx, inputs, value)

    async def acall(self, *inputs: Variable | str) -> Variable:
        """Run forward and record the output Variable with its inputs as parents."""
        return await self.apply(tuple(_as_input(x) for x in inputs))

    def __call__(self, *inputs: Variable | str) -> Variable:
        return self.apply_sync(tuple(_as_input(x) for x in inputs))


def _positional(inputs: Sequence[Variable]) -> OpContext:
    return OpContext(args=[("", v) for v in inputs])


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
