"""Losses: an LLM evaluates a variable against an instruction; the evaluation is the objective (marked `is_objective`)."""
from __future__ import annotations

from typing import Any

from .engines.base import Engine
from .ops.llm import LLMCall
from .variable import Variable


class TextLoss:
    """`loss(x)` -> evaluation Variable. Backward from it sends criticism to x and, through x, further up.

    instruction tells the evaluator what good looks like (include the reference answer when you have one).
    """

    def __init__(self, instruction: str | Variable, engine: Engine | str | None = None, **options: Any) -> None:
        if isinstance(instruction, str):
            instruction = Variable(instruction, role="evaluation instruction")
        if not instruction.text.strip():
            raise ValueError("TextLoss needs a non-empty instruction: say what a good value looks like")
        self.instruction = instruction
        self.engine = engine
        self.options = options

    async def acall(self, x: Variable | str) -> Variable:
        op = LLMCall(self.engine, role="evaluation of " + (x.role if isinstance(x, Variable) else "input"), **self.options)
        out = await op.acall(self.instruction, x)
        out.is_objective = True  # backward shows it as the thing to improve
        return out

    def __call__(self, x: Variable | str) -> Variable:
        from ._sync import run_sync

        return run_sync(self.acall(x))
