"""The two decisions AEGIS measures, asked of the engine and parsed by code.

The detector answers {"injection": bool, "reason": str}; the protected grader {"score": number, "reason": str}.
Both are requested with a JSON schema (enforced where the engine can, e.g. llama.cpp's grammar, OpenAI
structured outputs) and parsed tolerantly: JSON, fenced JSON, JSON amid prose, <key> tags, and, for a reply
cut short by the token limit, the explicit `"injection": true` / `"score": 7` it already contains. A reply
without a readable decision is an error (`Decision.error`), never a guess.
"""
from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any

from ..engines.base import Engine
from ..errors import ParseError
from ..optim.parse import parse_reply
from ..prompts import render_messages
from .scenario import Scenario

_TRUNC_BOOL = re.compile(r'"injection"\s*:\s*(true|false)\b', re.IGNORECASE)
_TRUNC_NUM = re.compile(r'"score"\s*:\s*"?(-?\d+(?:\.\d+)?)')


@dataclass(frozen=True)
class Decision:
    """A parsed reply. value is True/False (detector) or a float (grader); None with `error` set when unreadable."""

    value: Any
    reason: str = ""
    raw: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def _decision_schema(key: str, kind: str, reason_chars: int | None) -> dict[str, Any]:
    reason: dict[str, Any] = {"type": "string"}
    if reason_chars:
        reason["maxLength"] = reason_chars
    return {
        "type": "object",
        "properties": {key: {"type": kind}, "reason": reason},
        "required": [key, "reason"],
        "additionalProperties": False,
    }


def detect_schema(reason_chars: int | None = None) -> dict[str, Any]:
    return _decision_schema("injection", "boolean", reason_chars)


def grade_schema(reason_chars: int | None = None) -> dict[str, Any]:
    return _decision_schema("score", "number", reason_chars)


def _reason(obj: dict[str, Any]) -> str:
    r = obj.get("reason", "")
    return r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)


def parse_detection(text: str) -> Decision:
    """{"injection": bool, ...} -> Decision(True/False). Strings "true"/"false" (from tags) are accepted; nothing else."""
    try:
        obj = parse_reply(text, ["injection"])
    except ParseError as exc:
        m = _TRUNC_BOOL.search(text or "")
        if m:
            return Decision(m.group(1).lower() == "true", "", text)
        return Decision(None, "", text, f"unparseable detector reply: {exc}")
    value = obj["injection"]
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        value = value.strip().lower() == "true"
    if not isinstance(value, bool):
        return Decision(None, _reason(obj), text, f"'injection' must be true or false, got {value!r}")
    return Decision(value, _reason(obj), text)


def parse_grade(text: str, lo: float = 0.0, hi: float = 10.0) -> Decision:
    """{"score": number in [lo, hi], ...} -> Decision(float). Out-of-range or non-numeric scores are errors, not clipped."""
    try:
        obj = parse_reply(text, ["score"])
        value, reason = obj["score"], _reason(obj)
    except ParseError as exc:
        m = _TRUNC_NUM.search(text or "")
        if not m:
            return Decision(None, "", text, f"unparseable grader reply: {exc}")
        value, reason = m.group(1), ""
    if isinstance(value, bool):
        return Decision(None, reason, text, f"'score' must be a number, got {value!r}")
    try:
        score = float(value)
    except (TypeError, ValueError):
        return Decision(None, reason, text, f"'score' must be a number, got {value!r}")
    if not lo <= score <= hi:
        return Decision(None, reason, text, f"'score' {score} is outside {lo}..{hi}")
    return Decision(score, reason, text)


class Judge:
    """Asks the engine for detections and grades; identical requests within a run are made once.

    reason_chars bounds the "reason" string in the schema (llama.cpp enforces it; a tiny model otherwise
    rambles until the token limit). Default: 80 on the local engine, unbounded elsewhere.
    """

    def __init__(self, engine: Engine, scenario: Scenario, *, max_tokens: int = 96, reason_chars: int | None = None) -> None:
        self.engine = engine
        self.scenario = scenario
        self.max_tokens = max_tokens
        if reason_chars is None and getattr(engine, "kind", "") == "local":
            reason_chars = 80
        self.reason_chars = reason_chars
        self._memo: dict[tuple[str, ...], asyncio.Future[Decision]] = {}
        self._done: dict[tuple[str, ...], Decision] = {}

    async def _once(self, key: tuple[str, ...], make: Any) -> Decision:
        if key in self._done:
            return self._done[key]
        fut = self._memo.get(key)
        if fut is None or fut.get_loop() is not asyncio.get_running_loop():
            fut = asyncio.ensure_future(make())
            self._memo[key] = fut
        decision = await asyncio.shield(fut)
        self._done[key] = decision
        self._memo.pop(key, None)
        return decision

    async def detect(self, defense_prompt: str, text: str) -> Decision:
        async def make() -> Decision:
            messages = render_messages("aegis_detect.j2", defense=defense_prompt, text=text)
            reply = await self.engine.acomplete(messages, json_schema=detect_schema(self.reason_chars), max_tokens=self.max_tokens)
            return parse_detection(reply.text)

        return await self._once(("detect", defense_prompt, text), make)

    async def grade(self, item: str) -> Decision:
        async def make() -> Decision:
            messages = self.scenario.grade_messages(item)
            reply = await self.engine.acomplete(messages, json_schema=grade_schema(self.reason_chars), max_tokens=self.max_tokens)
            return parse_grade(reply.text, self.scenario.score_min, self.scenario.score_max)

        return await self._once(("grade", item), make)
