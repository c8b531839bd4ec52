"""An op for label tasks: an instruction template rendered around each input, as the user turn of one call."""
from __future__ import annotations

from typing import Any, Mapping

from ..datasets import render
from ..function import Feedback, Function, OpContext, require_text
from ..variable import Variable


class InstructionCall(Function):
    """A label task's program: the instruction template with the text in its {input} slot, as the user turn of
    one call. Backward gives the template what happened on this input (the text, the reply, the verdict) as
    its feedback, without a second model call: the task's metric already says what went wrong, and a
    small model's guess on top of it costs time and adds noise."""

    def __init__(self, engine: Any, **options: Any) -> None:
        self.engine, self.options = engine, options

    async def forward(self, ctx: OpContext, *inputs: Variable) -> str:
        template, text = inputs
        message = render(require_text(template, "instruction call"), require_text(text, "instruction call"))
        reply = await self.engine.acomplete([{"role": "user", "content": message}], **self.options)
        ctx.engine, ctx.args = self.engine, [("template", template), ("input", text)]
        ctx.saved.update(template=template, text=text)
        return reply.text

    def output_role(self, *inputs: Variable) -> str:
        return "reply of the classifier model"

    async def backward(self, ctx: OpContext, output: Variable, feedback: Feedback, engine: Any) -> Mapping[Variable, str]:
        template: Variable = ctx.saved["template"]
        if not template.requires_grad:
            return {}
        return {template: f"Text: {ctx.saved['text'].text}\nReply: {output.text.strip()[:300]}\nVerdict: {feedback.text}"}

