"""Textual gradient descent: one LLM call per parameter rewrites it from its (condensed) feedback."""
from __future__ import annotations

import asyncio
import re
from typing import Any, ClassVar, Iterable, Mapping, Sequence

from ..backward import feedback_text
from ..engines.base import Engine
from ..errors import EngineError, EngineUnavailable, ParseError
from ..module import Module
from ..prompts import render_messages, using_templates
from ..variable import Variable
from .base import Optimizer, Proposal
from .parse import text_field

UPDATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"reasoning": {"type": "string"}, "new_value": {"type": "string"}},
    "required": ["reasoning", "new_value"],
    "additionalProperties": False,
}
UPDATE_SHAPE = '{"reasoning": "<why>", "new_value": "<the full new text>"}'


class NoFeedback(ValueError):
    """A parameter has gradients, but they say nothing (empty text): there is nothing to update from."""

    kind = "no feedback"


class TGD(Optimizer):
    """TextGrad-style update: each parameter with feedback (its gradients, from `backward`) is rewritten by
    one LLM call. constraints: rules every new value must keep; memory=k shows the last k (value, feedback)
    pairs; examples: good values to imitate; max_tokens caps each update reply. reply="json" (default) asks
    for {"reasoning", "new_value"} (a reply that can't be parsed is sent back once with the error);
    reply="text" asks for the new value alone in plain text (tgd_update_text.j2), which small local models
    get right far more often than a JSON grammar, at the price of no recorded reasoning. Failures are
    recorded in `.failures` (see Optimizer)."""

    placeholders: ClassVar[frozenset[str]] = frozenset({"<why>", "<the full new text>"})

    def __init__(
        self,
        parameters: Iterable[Variable] | Module,
        *,
        engine: Engine | str | None = None,
        constraints: Sequence[str] = (),
        memory: int = 0,
        examples: Sequence[str] = (),
        strict: bool = False,
        max_tokens: int = 1024,
        reply: str = "json",
        **base: Any,
    ) -> None:
        if reply not in ("json", "text"):
            raise ValueError(f"reply must be 'json' or 'text', got {reply!r}")
        super().__init__(parameters, engine=engine, strict=strict, memory=memory, **base)
        self.reply = reply
        self.max_tokens = max_tokens
        self.constraints = list(constraints)
        self.examples = list(examples)

    def messages_for(self, param: Variable, feedback: str, rejected: Sequence[str] = ()) -> list[dict[str, str]]:
        """The update request for one parameter (exposed so tests and users can read it)."""
        with using_templates(self.templates):  # this optimizer's own template overrides, if any
            return render_messages(
                "tgd_update_text.j2" if self.reply == "text" else "tgd_update.j2",
                role=param.role,
                value=param.text,
                feedback=feedback,
                constraints=self.constraints,
                past=[{"value": v, "feedback": f} for v, f in self.window(param.name)],
                examples=self.examples,
                notes=self.notes([param.name]),
                rejected=list(rejected),
            )

    async def propose(self, params: list[Variable], *, temperature: float | None,
                      rejected: dict[str, list[str]]) -> Mapping[Variable, Proposal | BaseException]:
        """One update call per parameter that received feedback, concurrently."""
        engine = self.resolve_engine()
        todo = [p for p in params if p.gradients]
        results = await asyncio.gather(*(self._one(p, engine, temperature, rejected.get(p.name, ())) for p in todo))
        return dict(zip(todo, results))

    async def _one(self, param: Variable, engine: Engine, temperature: float | None,
                   rejected: Sequence[str]) -> Proposal | BaseException:
        try:
            feedback = await feedback_text(param, engine)
            if not feedback.strip():
                return NoFeedback(f"the feedback on {param.name!r} is empty; nothing to update from")
            messages = self.messages_for(param, feedback, rejected)
            if self.reply == "text":
                options = {"max_tokens": self.max_tokens, **({"temperature": temperature} if temperature is not None else {})}
                raw = (await engine.acomplete(messages, **options)).text
                return Proposal(plain_value(raw), feedback=feedback, reply=raw)
            obj, reply = await self.ask_json(
                messages, UPDATE_SCHEMA, ["new_value"], engine=engine, temperature=temperature, shape=UPDATE_SHAPE,
                max_tokens=self.max_tokens,
            )
            return Proposal(text_field(obj, "new_value"), reasoning=str(obj.get("reasoning") or ""), feedback=feedback, reply=reply)
        except EngineUnavailable:
            raise  # a stop for the run, not one failed proposal
        except (ParseError, EngineError) as exc:
            return exc


_LABEL = re.compile(r"^\s*(?:new|improved|updated|revised|better)?\s*(?:text|value|version|prompt|instruction|template)?\s*:\s*\n", re.I)


def plain_value(reply: str) -> str:
    """The new value in a plain-text update reply: without a surrounding code fence, a leading label line
    ("New text:") or quotes around the whole reply. Inner text is kept as written."""
    text = reply.strip()
    fence = re.fullmatch(r"```[\w-]*\n(.*?)\n?```", text, re.S)
    if fence:
        text = fence.group(1).strip()
    unlabeled = _LABEL.sub("", text, count=1).strip()
    text = unlabeled or text  # a reply that is only a label line keeps it (and fails the value check)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`" and text.count(text[0]) == 2:
        text = text[1:-1].strip()
    return text
