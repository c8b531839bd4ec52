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
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from ..context import resolve_backward_engine
from ..engines.base import Engine
from ..errors import EngineError, GraphError, ParseError, UpdateError
from ..prompts import render_messages
from ..variable import Variable
from .base import Optimizer, UpdateFailure
from .parse import _objects, loads, parse_reply

#: Budget (characters) for the code-like lines of one trace.
TRACE_CHARS = 4500
#: Intermediate values are shown up to this many characters.
VALUE_CHARS = 80
#: Inputs (constants) and outputs are shown up to these many characters.
INPUT_CHARS = 400
OUTPUT_CHARS = 1500
#: At most this many inputs are listed (the rest are counted).
MAX_INPUTS = 12
#: Non-trainable function source (and docstring) shown in the docs, per function; at most MAX_DOCS functions.
DOC_CHARS = 600
MAX_DOCS = 12


@dataclass
class Past:
    values: dict[str, str]
    feedback: str


@dataclass
class _Record:
    output: Variable
    feedback: str


@dataclass
class TraceView:
    """What one output's trace contributes to the prompt (ready for the template)."""

    lines: list[str] = field(default_factory=list)
    docs: list[tuple[str, str]] = field(default_factory=list)
    inputs: list[tuple[str, str, str]] = field(default_factory=list)
    output: tuple[str, str, str] = ("", "", "")
    feedback: str = ""


def _short(text: str, limit: int) -> str:
    text = " ".join(text.split()) if limit <= VALUE_CHARS else text
    if len(text) <= limit:
        return text
    keep = max(limit - 30, 10)
    return f"{text[: keep * 2 // 3]} [... {len(text) - keep} chars elided ...] {text[len(text) - keep // 3:]}"


def _op_label(var: Variable) -> str:
    op = var.grad_fn
    return op.op_name if op is not None else "?"


def _call_line(var: Variable, names: dict[int, str]) -> str:
    """`out = fn(a=x_1, b='const')` for traced calls, `out = Op(x_1, x_2)` for other ops."""
    ctx = var.ctx or {}
    args = ctx.get("args")
    if args is not None:
        parts = []
        for key, val in args:
            if isinstance(val, Variable):
                parts.append(f"{key}={names.get(id(val), val.name)}")
            else:
                parts.append(f"{key}={_short(repr(val), 40)}")
        call = f"{_op_label(var)}({', '.join(parts)})"
    else:
        call = f"{_op_label(var)}({', '.join(p.name for p in var.parents)})"
    code = ctx.get("code")
    if code is not None:
        call += f"  # runs {code.name}"
    return f"{var.name} = {call}"


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
        if id(output) not in ids and not any(id(v) in ids for v in self._ancestors(output)):
            raise GraphError(
                f"output {output.name!r} does not depend on any of the optimizer's parameters "
                f"({', '.join(p.name for p in self.parameters)}); compute it from them first"
            )
        self._records.append(_Record(output, feedback))

    @staticmethod
    def _ancestors(output: Variable) -> list[Variable]:
        """Every ancestor of `output` (and itself), consumers before producers; iterative, so deep chains are fine."""
        order: list[Variable] = []
        done: set[int] = set()
        stack: list[tuple[Variable, bool]] = [(output, False)]
        while stack:
            var, expanded = stack.pop()
            if expanded:
                order.append(var)
                continue
            if id(var) in done:
                continue
            done.add(id(var))
            stack.append((var, True))
            for p in reversed(var.parents):
                if id(p) not in done:
                    stack.append((p, False))
        order.reverse()
        return order

    # -- the prompt ---------------------------------------------------------------------------
    def _view(self, record: _Record) -> TraceView:
        out = record.output
        nodes = list(reversed(self._ancestors(out)))  # producers first
        in_graph = {id(v) for v in nodes}
        params = {id(p) for p in self.parameters}
        ops = [v for v in nodes if v.grad_fn is not None]
        leaves: list[Variable] = []
        seen: set[int] = set()
        for v in ops:
            for p in v.parents:
                if id(p) not in seen and id(p) not in params and (id(p) not in in_graph or p.grad_fn is None):
                    seen.add(id(p))
                    leaves.append(p)
        view = TraceView(feedback=record.feedback)
        # code-like lines, each with its value (short; repeats point back)
        first_seen: dict[str, str] = {}
        lines: list[str] = []
        for v in ops:
            text = v.text
            if v is out:
                shown = "(the output, below)"
            elif text in first_seen:
                shown = f"[same value as {first_seen[text]}]"
            else:
                first_seen[text] = v.name
                shown = repr(_short(text, VALUE_CHARS))
            lines.append(f"{_call_line(v, {})}   # -> {shown}")
        view.lines = self._fit(lines, ops, params)
        # docs, once per function
        docs: dict[str, str] = {}
        for v in ops:
            label = _op_label(v)
            if label in docs or len(docs) >= MAX_DOCS:
                continue
            fn = getattr(v.grad_fn, "traced", None)
            if fn is not None:
                doc = _short(fn.description, DOC_CHARS) if fn.description else "(no docstring)"
                if fn.code is None:
                    doc += "\nSource:\n" + _short(fn.source or fn.signature_text, DOC_CHARS)
                else:
                    doc += f"\n(its code is the trainable variable {fn.code.name})"
            else:
                doc = (type(v.grad_fn).__doc__ or "").strip().split("\n\n")[0] or f"produces {v.role}"
            docs[label] = doc
        view.docs = list(docs.items())
        for leaf in leaves[:MAX_INPUTS]:
            view.inputs.append((leaf.name, leaf.role, _short(leaf.text, INPUT_CHARS)))
        if len(leaves) > MAX_INPUTS:
            view.inputs.append(("...", "", f"[{len(leaves) - MAX_INPUTS} more inputs not shown]"))
        view.output = (out.name, out.role, _short(out.text, OUTPUT_CHARS))
        return view

    @staticmethod
    def _fit(lines: list[str], ops: list[Variable], params: set[int]) -> list[str]:
        """Lines from both ends (and every call reading a parameter) within TRACE_CHARS; a marker for the gap."""
        if sum(len(x) + 1 for x in lines) <= TRACE_CHARS:
            return lines
        keep: set[int] = {i for i, v in enumerate(ops) if any(id(p) in params for p in v.parents)}
        keep.add(len(ops) - 1)
        budget = TRACE_CHARS - sum(len(lines[i]) + 1 for i in keep)
        lo, hi = 0, len(lines) - 1
        while lo <= hi and budget > 0:
            for i in (lo, hi):
                if i not in keep and len(lines[i]) + 1 <= budget:
                    keep.add(i)
                    budget -= len(lines[i]) + 1
            lo, hi = lo + 1, hi - 1
        # don't let the parameter readers scattered in a huge graph blow the budget: cap the kept set
        kept = sorted(keep)
        total = sum(len(lines[i]) + 1 for i in kept)
        while total > TRACE_CHARS * 1.5 and len(kept) > 2:
            drop = kept.pop(len(kept) // 2)
            total -= len(lines[drop]) + 1
        out: list[str] = []
        prev = -1
        for i in kept:
            if i > prev + 1:
                gap = ops[prev + 1 : i]
                fns = sorted({_op_label(v) for v in gap})
                out.append(f"# [... {len(gap)} calls elided here ({', '.join(fns[:5])}{', ...' if len(fns) > 5 else ''}) ...]")
            out.append(lines[i])
            prev = i
        return out

    def messages(self) -> list[dict[str, str]]:
        """The step request for the recorded feedback (exposed so tests and users can read it)."""
        views = [self._view(r) for r in self._records]
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
