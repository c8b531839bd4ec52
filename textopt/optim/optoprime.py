"""OptoPrime: one LLM call per step updates all parameters together, from the whole execution trace.

`backward(output, feedback)` only records what to send (no LLM call). `step()` renders the trace of
every recorded output (see trace_view: a code-like line per call, what each op does, the trainable
values in full, inputs, intermediate values, outputs), the feedback, constraints and `memory=k` past
steps into one prompt and asks for `{"reasoning": ..., "suggestion": {name: new value}}`. The base
(Optimizer) checks and applies the suggestion.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping, Sequence

from ..engines.base import Engine
from ..errors import GraphError, ParseError
from ..module import Module
from ..prompts import render_messages, unescape_tags, using_templates
from ..variable import Variable
from .base import Optimizer, Proposal
from .parse import _objects, loads, parse_reply
from .trace_view import ancestors, build_view

#: Characters of the reasoning the reply grammar allows before the suggestion (where a grammar is enforced).
REASONING_CHARS = 600


@dataclass
class _Record:
    output: Variable
    feedback: str


class OptoPrime(Optimizer):
    """Trace-style optimizer. memory=k shows the last k (parameter values, feedback) pairs; constraints are
    rules every new value must keep; other keyword options (max_tokens=...) go to the engine with the step
    call. Code parameters (from `@trace(trainable=True)`) are checked before they replace the old code; a
    rejected suggestion is recorded in `.failures` and told to the LLM next step."""

    placeholders: ClassVar[frozenset[str]] = frozenset({"<new value>"})

    def __init__(
        self,
        parameters: Iterable[Variable] | Module,
        *,
        engine: Engine | str | None = None,
        memory: int = 0,
        constraints: Sequence[str] = (),
        strict: bool = False,
        temperatures: Sequence[float | None] = (None, 0.7),
        max_value_chars: int = 20_000,
        templates: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(parameters, engine=engine, strict=strict, memory=memory, temperatures=temperatures,
                         max_value_chars=max_value_chars, templates=templates)
        self.options = options  # passed to the engine on the step call, e.g. max_tokens=
        self.constraints = list(constraints)
        self._records: list[_Record] = []

    # -- feedback -----------------------------------------------------------------------------
    async def abackward(self, output: Variable, feedback: str | None = None, *, engine: Engine | str | None = None) -> None:
        """Record `output` and its feedback for the next step (None: the output is the objective, e.g. a
        loss, and its own text is the feedback, as in `Feedback.objective`). No LLM call is made."""
        if not isinstance(output, Variable):
            raise TypeError(f"backward takes the output Variable, got {type(output).__name__}")
        if feedback is None:
            feedback = output.text
        elif not isinstance(feedback, str) or not feedback.strip():
            raise ValueError("feedback must be non-empty text saying how the output fell short (or that it is right)")
        ids = {id(p) for p in self.parameters}
        if not any(id(v) in ids for v in ancestors(output)):
            raise GraphError(
                f"output {output.name!r} does not depend on any of the optimizer's parameters "
                f"({', '.join(p.name for p in self.parameters)}); compute it from them first"
            )
        self._records.append(_Record(output, feedback))

    def zero_grad(self) -> None:
        """Forget the outputs and feedback recorded by `backward` (and any gradients on the parameters)."""
        super().zero_grad()
        self._records.clear()

    # -- the prompt ---------------------------------------------------------------------------
    def messages(self, params: Sequence[Variable] | None = None, rejected: Mapping[str, list[str]] | None = None) -> list[dict[str, str]]:
        """The step request for the recorded feedback, asking for `params` (default all); exposed for reading."""
        asked = list(params) if params is not None else self.parameters
        views = [build_view(r.output, r.feedback, self.parameters) for r in self._records]
        past = [{"values": s.values, "feedback": next(iter(s.feedback.values()), "")} for s in self.past[-self.memory:]] if self.memory else []
        with using_templates(self.templates):  # this optimizer's own template overrides, if any
            return render_messages(
                "optoprime.j2",
                parameters=self.parameters,
                asked=asked,
                views=views,
                constraints=self.constraints,
                past=past,
                notes=self.notes(),
                rejected=dict(rejected or {}),
                code_names=[p.name for p in asked if hasattr(p, "check")],
            )

    def schema(self, params: Sequence[Variable] | None = None) -> dict[str, Any]:
        names = [p.name for p in (params if params is not None else self.parameters)]
        return {
            "type": "object",
            # reasoning first, capped: asked for the suggestion first, the 1.5B copied the current value into it
            # and only then reasoned that it should change (26 of 30 (d) steps unchanged after a re-ask). The
            # cap keeps a small model that loops in its reasoning from never reaching the suggestion; a reply
            # cut off inside the suggestion is still recovered by `_suggestion`.
            "properties": {
                "reasoning": {"type": "string", "maxLength": REASONING_CHARS},
                "suggestion": {
                    "type": "object",
                    "properties": {n: {"type": "string"} for n in names},
                    "required": names,
                    "additionalProperties": False,
                },
            },
            "required": ["reasoning", "suggestion"],
            "additionalProperties": False,
        }

    # -- proposing ----------------------------------------------------------------------------
    async def propose(self, params: list[Variable], *, temperature: float | None,
                      rejected: dict[str, list[str]]) -> Mapping[Variable | str, Proposal]:
        """One call proposes values for `params` from the recorded traces. A value repeated unchanged while
        another one changes means "leave it" and is dropped; names the model made up are passed on as text
        (the base records them as failures)."""
        if not self._records:
            return {}
        shape = '{"reasoning": "...", "suggestion": {' + ", ".join(f'"{p.name}": "..."' for p in params) + '}}'
        obj, reply = await self.ask_json(
            self.messages(params, rejected), self.schema(params), ["suggestion"], engine=self.resolve_engine(),
            temperature=temperature, shape=shape, parse=self._suggestion, **self.options,
        )
        reasoning = str(obj.get("reasoning") or "")
        feedback = "\n".join(r.feedback for r in self._records)
        by_name = {p.name: p for p in self.parameters}
        out: dict[Variable | str, Proposal] = {}
        for key, value in obj["suggestion"].items():
            param = by_name.get(key) or by_name.get(str(key).strip().strip("<>`'\""))
            if value is not None and not isinstance(value, str):
                value = json.dumps(value, ensure_ascii=False)
            out[param if param is not None else str(key)] = Proposal(value, reasoning, feedback, reply)
        if any(isinstance(k, Variable) and isinstance(p.value, str) and unescape_tags(p.value) != k.text for k, p in out.items()):
            out = {k: p for k, p in out.items() if not (isinstance(k, Variable) and p.value is not None and unescape_tags(p.value) == k.text)}
        return out

    def _suggestion(self, text: str) -> dict[str, Any]:
        """The reply as {"suggestion": {...}, "reasoning": ...}; recovers the suggestion of a reply cut short."""
        try:
            obj = parse_reply(text, ["suggestion"])
        except ParseError:
            names = {p.name for p in self.parameters}
            inner = [o for o in _objects(text) if o and set(o) <= names]  # the suggestion object of a cut-off reply
            if inner:
                obj = {"suggestion": inner[0]}
            else:  # cut off inside the suggestion: keep the values whose strings were complete
                found = {}
                for n in names:
                    m = re.search(r'"' + re.escape(n) + r'"\s*:\s*"((?:[^"\\]|\\.)*)"', text)
                    if m:
                        found[n] = loads('"' + m.group(1) + '"')
                if not found:
                    raise
                obj = {"suggestion": found}
        sug = obj["suggestion"]
        if isinstance(sug, str):
            try:
                sug = loads(sug)
            except (json.JSONDecodeError, ValueError):
                sug = None
            if sug is None and len(self.parameters) == 1:
                sug = {self.parameters[0].name: obj["suggestion"]}
        if not isinstance(sug, dict):
            raise ParseError("'suggestion' must be an object mapping variable names to new values", text)
        if not sug:
            raise ParseError("'suggestion' is empty; give a new value for at least one variable", text)
        return {"suggestion": sug, "reasoning": obj.get("reasoning", "")}
