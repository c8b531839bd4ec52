"""LLM call: forward sends (system prompt, input) to an engine; backward asks an LLM how each
trainable input should change, given the output and the feedback on it."""
from __future__ import annotations

import asyncio
from typing import Any, Mapping

from .._sync import sync_twin
from ..context import resolve_engine
from ..engines.base import Engine
from ..function import Feedback, Function, OpContext, OpDescription, require_text
from ..image import Image
from ..prompts import render_messages
from ..variable import Variable

#: Characters of each value shown in a backward prompt (longer values are elided in the middle).
SHOWN_CHARS = 6000
#: Feedback is a short list of criticisms; cap its length so a rambling model can't run to the context end.
FEEDBACK_MAX_TOKENS = 400


class LLMCall(Function):
    """One chat call: [system prompt], user input -> response. The system prompt is an input like any other,
    so a trainable prompt gets feedback through the same backward."""

    def __init__(self, engine: Engine | str | None = None, role: str | None = None, **options: Any) -> None:
        self.engine = engine
        self.role = role or "response from the language model"
        self.options = options

    async def forward(self, ctx: OpContext, *inputs: Variable) -> str:
        if len(inputs) == 1:
            system, user = None, inputs[0]
        elif len(inputs) == 2:
            system, user = inputs
        else:
            raise TypeError(f"LLMCall takes (input) or (system_prompt, input), got {len(inputs)} variables")
        messages = []
        if system is not None:
            messages.append({"role": "system", "content": require_text(system, "LLM call")})
        # an image input goes to the model as image content (engines that can't take it fail before the call)
        messages.append({"role": "user", "content": user.value if isinstance(user.value, Image) else require_text(user, "LLM call")})
        engine = resolve_engine(self.engine)
        reply = await engine.acomplete(messages, **self.options)
        ctx.engine = engine
        ctx.args = ([("system", system)] if system is not None else []) + [("input", user)]
        ctx.saved.update(system=system, user=user)
        return reply.text

    def describe(self, ctx: OpContext, output: Variable) -> OpDescription:
        model = f" ({ctx.engine.kind} model {ctx.engine.model!r})" if ctx.engine is not None else ""
        return OpDescription(
            name=self.op_name, args=list(ctx.args),
            doc=f"Calls a language model{model}: the system prompt (if any) as instructions, the input as the user "
                "message; returns its reply.",
        )

    async def backward(self, ctx: OpContext, output: Variable, feedback: Feedback, engine: Engine) -> Mapping[Variable, str]:
        system: Variable | None = ctx.saved["system"]
        user: Variable = ctx.saved["user"]
        targets = [v for v in (system, user) if v is not None and v.requires_grad]

        async def one(target: Variable) -> str:
            messages = render_messages(
                "llm_backward.j2",
                system=system,
                user=user,
                output=output,
                feedback=feedback,
                target="system prompt" if target is system else "input",
                target_role=target.role,
                limit=SHOWN_CHARS,
            )
            return (await engine.acomplete(messages, max_tokens=FEEDBACK_MAX_TOKENS)).text.strip()

        texts = await asyncio.gather(*(one(t) for t in targets))
        return dict(zip(targets, texts))


class LLM:
    """A language model as a module: `llm(x)` -> response Variable; `await llm.acall(x)` on the async path.

    system_prompt may be a (trainable) Variable: that is the usual thing to optimize.
    """

    def __init__(self, engine: Engine | str | None = None, system_prompt: Variable | str | None = None, **options: Any) -> None:
        self.engine = engine
        if isinstance(system_prompt, str):
            system_prompt = Variable(system_prompt, role="system prompt of the language model")
        self.system_prompt = system_prompt
        self.options = options

    def _op(self) -> LLMCall:
        return LLMCall(self.engine, **self.options)

    async def acall(self, x: Variable | str) -> Variable:
        op = self._op()
        return await (op.acall(self.system_prompt, x) if self.system_prompt is not None else op.acall(x))

    __call__ = sync_twin(acall)

    def parameters(self) -> list[Variable]:
        """The trainable variables of this module (its system prompt, when trainable)."""
        return [self.system_prompt] if self.system_prompt is not None and self.system_prompt.requires_grad else []
