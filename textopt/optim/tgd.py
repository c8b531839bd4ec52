"""Textual gradient descent: one LLM call per parameter rewrites it from its (condensed) feedback."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..backward import feedback_text
from ..context import resolve_backward_engine
from ..engines.base import Engine
from ..errors import EngineError, ParseError, UpdateError
from ..prompts import render_messages
from ..variable import Variable
from .base import Optimizer, UpdateFailure
from .parse import parse_reply, text_field

UPDATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"reasoning": {"type": "string"}, "new_value": {"type": "string"}},
    "required": ["reasoning", "new_value"],
    "additionalProperties": False,
}
UPDATE_SHAPE = '{"reasoning": "<why>", "new_value": "<the full new text>"}'
_PLACEHOLDERS = {"", "...", "<why>", "<the full new text>", "new value", "<new_value>"}


def _usable(text: str) -> str:
    """Reject replies that echo the requested shape instead of filling it."""
    if text.strip().lower() in _PLACEHOLDERS:
        raise ParseError(f"'new_value' is the placeholder {text.strip()!r}, not a new value; write the actual text", text)
    return text


@dataclass
class Past:
    value: str
    feedback: str


class TGD(Optimizer):
    """TextGrad-style update. constraints: rules every new value must keep; momentum=k shows the last k
    (value, feedback) pairs; examples: good values to imitate. A reply that can't be parsed is sent back
    once with the error; if the second reply fails too the variable keeps its value and the failure goes
    to `.failures` (strict=True raises instead). max_tokens caps each update reply."""

    def __init__(
        self,
        parameters: Iterable[Variable],
        *,
        engine: Engine | str | None = None,
        constraints: Sequence[str] = (),
        momentum: int = 0,
        examples: Sequence[str] = (),
        strict: bool = False,
        max_tokens: int = 1024,
    ) -> None:
        super().__init__(parameters, engine=engine, strict=strict)
        self.max_tokens = max_tokens
        if momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}")
        self.constraints = list(constraints)
        self.momentum = momentum
        self.examples = list(examples)
        self.past: dict[str, list[Past]] = {p.name: [] for p in self.parameters}

    def messages_for(self, param: Variable, feedback: str) -> list[dict[str, str]]:
        """The update request for one parameter (exposed so tests and users can read it)."""
        past = self.past[param.name][-self.momentum :] if self.momentum else []
        return render_messages(
            "tgd_update.j2",
            role=param.role,
            value=param.text,
            feedback=feedback,
            constraints=self.constraints,
            past=past,
            examples=self.examples,
        )

    async def astep(self) -> None:
        """Update every parameter that received feedback, concurrently."""
        engine = resolve_backward_engine(self.engine)
        self.steps += 1
        await asyncio.gather(*(self._update(p, engine) for p in self.parameters if p.gradients))

    async def _update(self, param: Variable, engine: Engine) -> None:
        try:
            feedback = await feedback_text(param, engine)
            messages = self.messages_for(param, feedback)
            new_value = await self._ask(messages, engine)
        except (ParseError, EngineError) as exc:
            failure = UpdateFailure(self.steps, param.name, str(exc), getattr(exc, "reply", ""))
            self.failures.append(failure)
            if self.strict:
                raise UpdateError(f"could not update {param.name!r}: {exc}") from exc
            return
        old_value = param.text
        try:
            param.set_value(new_value)  # a variable may refuse a value (e.g. trainable code that doesn't parse)
        except (ValueError, TypeError) as exc:
            self.failures.append(UpdateFailure(self.steps, param.name, f"new value refused: {exc}", new_value))
            if self.strict:
                raise UpdateError(f"could not update {param.name!r}: {exc}") from exc
            return
        if self.momentum:
            self.past[param.name].append(Past(value=old_value, feedback=feedback))
            del self.past[param.name][: -self.momentum]

    async def _ask(self, messages: list[dict[str, str]], engine: Engine) -> str:
        reply = await engine.acomplete(messages, json_schema=UPDATE_SCHEMA, max_tokens=self.max_tokens)
        try:
            return _usable(text_field(parse_reply(reply.text, ["new_value"]), "new_value"))
        except ParseError as first:
            repair = render_messages("repair.j2", error=str(first), shape=UPDATE_SHAPE)
            retry = messages + [{"role": "assistant", "content": reply.text}] + repair
            second = await engine.acomplete(retry, json_schema=UPDATE_SCHEMA, max_tokens=self.max_tokens)
            try:
                return _usable(text_field(parse_reply(second.text, ["new_value"]), "new_value"))
            except ParseError as exc:
                raise ParseError(f"{exc} (after one repair request; first error: {first})", second.text) from exc

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["past"] = {k: [p.__dict__ for p in v] for k, v in self.past.items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        for k, v in state.get("past", {}).items():
            if k in self.past:
                self.past[k] = [Past(**p) for p in v]
