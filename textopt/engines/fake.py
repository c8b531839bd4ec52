"""An offline stand-in for a model, for trying the machinery (CLI runs, resume, budgets) with no model at all.

Same request, same reply: the reply is a function of a hash of the request, so a killed run resumes to
exactly the result of an uninterrupted one. It reads the request's JSON schema (never the prompt prose):
a request with a schema gets a JSON object of that shape, filled deterministically; one without gets a
short answer. Editing a prompt template changes the hash, never what kind of reply comes back.
Answers are noise, not intelligence.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from .base import Engine
from .types import Completion, Request

#: What a fake optimizer proposes for a free-text field (picked by hash): complete instructions.
PROPOSALS = (
    "You are a careful assistant. Answer the question and reply with the final answer only.",
    "Read the question twice, count each item once, and give the final answer as a number.",
    "Think step by step, then state the final answer clearly on the last line.",
    "Answer the question. Check the category of every item before counting it.",
)
REASONS = ("address the feedback", "be more precise", "state the answer clearly")


def _hash(*parts: Any) -> int:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=True, default=str)
    return int(hashlib.sha256(blob.encode("utf-8")).hexdigest(), 16)


def fill(schema: dict[str, Any] | None, seed: int, name: str = "") -> Any:
    """A value of the JSON-schema `schema`, chosen by `seed` (deterministic, no prose read)."""
    schema = schema or {}
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if "enum" in schema and schema["enum"]:
        return schema["enum"][seed % len(schema["enum"])]
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {k: fill(v, _hash(seed, k), k) for k, v in props.items()}
    if kind == "array":
        return [fill(schema.get("items"), _hash(seed, i), name) for i in range(1 + seed % 2)]
    if kind == "boolean":
        return bool(seed % 2)
    if kind == "integer":
        return int(schema.get("minimum", 0)) + seed % 11
    if kind == "number":
        return float(int(schema.get("minimum", 0)) + seed % 11)
    text = (REASONS if "reason" in name.lower() or "explan" in name.lower() else PROPOSALS)
    out = text[seed % len(text)]
    limit = schema.get("maxLength")
    return out[:limit] if isinstance(limit, int) else out


def fake_reply(request: Request) -> str:
    """The reply to one request: JSON of the requested shape, else a short numeric answer."""
    h = _hash(request.messages, request.json_schema, request.options.get("temperature"))
    if request.json_schema:
        return json.dumps(fill(request.json_schema, h))
    return f"The answer is {h % 6}."


class FakeEngine(Engine):
    """`--engine fake` (alias `scripted` in the CLI): deterministic offline replies; `latency` seconds per call."""

    kind = "fake"
    supports_json_schema = True
    free = True  # offline: every call costs $0 (and needs no cost-map lookup)

    def __init__(self, *, latency: float = 0.0, model: str = "fake", **kwargs: Any) -> None:
        kwargs.setdefault("retry_wait", 0.0)
        super().__init__(model, **kwargs)
        self.latency = latency

    async def _acomplete(self, request: Request) -> Completion:
        if self.latency:
            await asyncio.sleep(self.latency)
        text = fake_reply(request)
        prompt_tokens = sum(len(m["content"]) for m in request.messages) // 4 + 1
        return Completion(text=text, prompt_tokens=prompt_tokens, completion_tokens=len(text) // 4 + 1, model=self.model)
