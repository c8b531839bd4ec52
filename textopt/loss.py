"""Losses: an LLM evaluates a variable against an instruction; the evaluation is the objective (marked `is_loss`)."""
from __future__ import annotations

from typing import Any, Mapping

from ._sync import sync_twin
from .engines.base import Engine
from .ops.formatted import FormattedLLMCall
from .ops.llm import LLMCall
from .variable import Variable


class TextLoss:
    """`loss(x)` -> evaluation Variable. Backward from it sends criticism to x and, through x, further up.

    instruction tells the evaluator what good looks like (include the reference answer when you have one).
    fields={name: role} makes a judge of several inputs, called by name: `loss(answer=a, reference=r)`;
    each trainable field then gets its own feedback, which says whether that field was at fault.
    template: the judge's prompt for fields mode (jinja2, `{{ name }}` per field; default: each field in turn).
    """

    def __init__(self, instruction: str | Variable, engine: Engine | str | None = None, *,
                 fields: Mapping[str, str] | None = None, template: str | Variable | None = None, **options: Any) -> None:
        if isinstance(instruction, str):
            instruction = Variable(instruction, role="evaluation instruction")
        if not instruction.text.strip():
            raise ValueError("TextLoss needs a non-empty instruction: say what a good value looks like")
        self.instruction = instruction
        self.engine = engine
        self.options = options
        self.fields = dict(fields) if fields is not None else None
        self._op: Any = None
        if self.fields is not None:
            if template is None:
                template = "\n".join(f"{name} ({{{{ {name}.role }}}}):\n{{{{ {name} }}}}" for name in self.fields) \
                    + "\nEvaluate these as instructed."
            role = "evaluation of " + ", ".join(self.fields.values())
            self._op = FormattedLLMCall(template, self.fields, engine, system_prompt=instruction, role=role, **options)
        elif template is not None:
            raise ValueError("template= is for a judge of several fields: pass fields={name: role} too")

    async def acall(self, x: Variable | str | None = None, /, **fields: Any) -> Variable:
        if self._op is not None:
            if x is not None:
                raise TypeError(f"this TextLoss judges fields ({', '.join(self.fields or ())}): call it by name, "
                                f"e.g. loss({next(iter(self.fields or {'x': ''}))}=...)")
            out = await self._op.acall(**fields)
        else:
            if x is None or fields:
                raise TypeError("TextLoss(instruction) takes one input: loss(x); for several, build it with fields={name: role}")
            op = LLMCall(self.engine, role="evaluation of " + (x.role if isinstance(x, Variable) else "input"), **self.options)
            out = await op.acall(self.instruction, x)
        out.is_loss = True  # backward sends it the objective (its own text, to improve) unless a consumer criticised it
        return out

    __call__ = sync_twin(acall)
