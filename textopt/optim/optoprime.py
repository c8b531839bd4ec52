"""OptoPrime: one LLM call per step updates all parameters together, from the whole execution trace.

`backward(output, feedback)` only records what to send (no LLM call). `step()` renders the trace of
every recorded output (a code-like line per call, the functions' docs, the trainable values in full,
inputs, intermediate values, outputs, constraints, feedback, and `memory=k` past steps) into one
prompt and asks for `{"reasoning": ..., "suggestion": {name: new value}}`.

Prompts stay bounded as graphs grow: calls are listed from both ends of the trace (and every call
that reads a trainable variable) until TRACE_CHARS is used; the middle is replaced by a marker that
counts what was left out. Intermediate values are cut to VALUE_CHARS and repeats point to their
first occurrence. Trainable values are never cut.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from ..context import resolve_backward_engine
from ..engines.base import Engine
from ..errors import EngineError, GraphError, ParseError, UpdateError
from ..prompts import render_messages
from ..variable import Variable
from .base import Optimizer, UpdateFailure
from .parse import _objects, loads, parse_reply
from .trace_view import ancestors, build_view

@dataclass
class Past:
    values: dict[str, str]
    feedback: str


@dataclass
class _Record:
    output: Variable
    feedback: str


class OptoPrime(Optimizer):
    """Trace-style optimizer. memory=k shows the last k (parameter values, feedback) pairs; constraints are
    rules every new value must keep; other keyword options (max_tokens=...) go to the engine with the step call.
    Code parameters (from `@trace(trainable=True)`) are checked before they
    replace the old code; a rejected suggestion is recorded in `.failures` and told to the LLM next step."""

    def __init__(
        self,
        parameters: Iterable[Variable],
        *,
        engine: Engine | str | None = None,
        memory: int = 0,
        constraints: Sequence[str] = (),
        strict: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(parameters, engine=engine, strict=strict)
        self.options = options  # passed to the engine on the step call, e.g. max_tokens=
        if memory < 0:
            raise ValueError(f"memory must be >= 0, got {memory}")
        self.memory = memory
        self.constraints = list(constraints)
        self.history: list[Past] = []
        self.notes: list[str] = []  # rejections from the last step, shown in the next prompt
        self._records: list[_Record] = []

    # -- feedback -----------------------------------------------------------------------------
    def zero_feedback(self) -> None:
        """Forget the outputs and feedback recorded by `backward`."""
        self._records.clear()

    zero_grad = zero_feedback

    def backward(self, output: Variable, feedback: str) -> None:
        """Record feedback on `output` for the next step. No LLM call is made."""
        if not isinstance(output, Variable):
            raise TypeError(f"backward takes the output Variable, got {type(output).__name__}")
        if not isinstance(feedback, str) or not feedback.strip():
            raise ValueError("feedback must be non-empty text saying how the output fell short (or that it is right)")
        ids = {id(p) for p in self.parameters}
        if not any(id(v) in ids for v in ancestors(output)):
            raise GraphError(
                f"output {output.name!r} does not depend on any of the optimizer's parameters "
                f"({', '.join(p.name for p in self.parameters)}); compute it from them first"
            )
        self._records.append(_Record(output, feedback))

    def messages(self) -> list[dict[str, str]]:
        """The step request for the recorded feedback (exposed so tests and users can read it)."""
        views = [build_view(r.output, r.feedback, self.parameters) for r in self._records]
        past = self.history[-self.memory :] if self.memory else []
        return render_messages(
            "optoprime.j2",
            parameters=self.parameters,
            views=views,
            constraints=self.constraints,
            past=past,
            notes=self.notes,
            code_names=[p.name for p in self.parameters if hasattr(p, "check")],
        )

    def schema(self) -> dict[str, Any]:
        names = [p.name for p in self.parameters]
        return {
            "type": "object",
            # suggestion first: a reply cut off at max_tokens (a small model looping in its reasoning) still
            # carries a complete suggestion object, which `_suggestion` recovers.
            "properties": {
                "suggestion": {
                    "type": "object",
                    "properties": {n: {"type": "string"} for n in names},
                    "required": names,
                    "additionalProperties": False,
                },
                "reasoning": {"type": "string"},
            },
            "required": ["suggestion", "reasoning"],
            "additionalProperties": False,
        }

    # -- the step -----------------------------------------------------------------------------
    async def astep(self) -> None:
        """One LLM call proposes new values for all parameters; usable ones replace the old values."""
        if not self._records:
            return
        engine = resolve_backward_engine(self.engine)
        self.steps += 1
        messages = self.messages()
        feedback = "\n".join(r.feedback for r in self._records)
        try:
            suggestion, reply = await self._ask(messages, engine)
        except (ParseError, EngineError) as exc:
            self.failures.append(UpdateFailure(self.steps, "*", str(exc), getattr(exc, "reply", "")))
            if self.strict:
                raise UpdateError(f"OptoPrime step {self.steps} failed: {exc}") from exc
            return
        before = {p.name: p.text for p in self.parameters}
        self.notes = []
        by_name = {p.name: p for p in self.parameters}
        problems: list[str] = []
        for key, value in suggestion.items():
            param = by_name.get(key) or by_name.get(str(key).strip().strip("<>`'\""))
            if param is None:
                problems.append(f"the suggestion names {key!r}, which is not a trainable variable")
                continue
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            if not text.strip() or text == param.text:
                continue
            try:
                param.set_value(text)
            except (ValueError, TypeError) as exc:
                reason = str(exc)
                self.failures.append(UpdateFailure(self.steps, param.name, reason, reply))
                self.notes.append(f"Your last suggestion for {param.name} was rejected: {reason}. The old value was kept.")
                problems.append(reason)
        if problems and self.strict:
            raise UpdateError(f"OptoPrime step {self.steps}: " + "; ".join(problems))
        if self.memory:
            self.history.append(Past(values=before, feedback=feedback))
            del self.history[: -self.memory]

    async def _ask(self, messages: list[dict[str, str]], engine: Engine) -> tuple[dict[str, Any], str]:
        schema = self.schema()
        reply = await engine.acomplete(messages, json_schema=schema, **self.options)
        try:
            return self._suggestion(reply.text), reply.text
        except ParseError as first:
            shape = '{"suggestion": {' + ", ".join(f'"{p.name}": "..."' for p in self.parameters) + '}, "reasoning": "..."}'
            repair = render_messages("repair.j2", error=str(first), shape=shape)
            retry = messages + [{"role": "assistant", "content": reply.text}] + repair
            second = await engine.acomplete(retry, json_schema=schema, **self.options)
            try:
                return self._suggestion(second.text), second.text
            except ParseError as exc:
                raise ParseError(f"{exc} (after one repair request; first error: {first})", second.text) from exc

    def _suggestion(self, text: str) -> dict[str, Any]:
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
        return sug

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["history"] = [p.__dict__ for p in self.history]
        state["notes"] = list(self.notes)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.history = [Past(**p) for p in state.get("history", [])]
        self.notes = list(state.get("notes", []))
