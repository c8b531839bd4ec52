"""Scoped defaults for engines (contextvars, so they follow asyncio tasks and threads we start).

Resolution order everywhere: an engine passed explicitly, then `to.using(...)`, then the
`TEXTOPT_ENGINE` environment variable, then the embedded local model. Nothing is global state that a
user must set first, and nothing is built until it is needed.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from typing import TYPE_CHECKING, Iterator

from .engines import as_engine, get_engine

if TYPE_CHECKING:
    from .engines.base import Engine

_engine: contextvars.ContextVar["Engine | None"] = contextvars.ContextVar("textopt_engine", default=None)
_backward_engine: contextvars.ContextVar["Engine | None"] = contextvars.ContextVar(
    "textopt_backward_engine", default=None
)
_fallbacks: dict[str, "Engine"] = {}
_fallback_lock = threading.Lock()

EngineLike = "Engine | str | None"


@contextlib.contextmanager
def using(engine: "Engine | str | None" = None, backward_engine: "Engine | str | None" = None) -> Iterator[None]:
    """Make `engine` (forward calls) and `backward_engine` (gradients, updates) the defaults in this scope."""
    tokens = []
    if engine is not None:
        tokens.append((_engine, _engine.set(as_engine(engine))))
    if backward_engine is not None:
        tokens.append((_backward_engine, _backward_engine.set(as_engine(backward_engine))))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def _fallback() -> "Engine":
    spec = os.environ.get("TEXTOPT_ENGINE", "local")
    with _fallback_lock:
        if spec not in _fallbacks:
            _fallbacks[spec] = get_engine(spec)
        return _fallbacks[spec]


def resolve_engine(engine: "Engine | str | None" = None) -> "Engine":
    """The engine for a forward call."""
    if engine is not None:
        return as_engine(engine)
    return _engine.get() or _fallback()


def resolve_backward_engine(engine: "Engine | str | None" = None, graph_engine: "Engine | None" = None) -> "Engine":
    """The engine for gradients and updates: explicit, then the scoped backward default, then the scoped
    forward default, then the engine that produced the output being differentiated (graph_engine)."""
    if engine is not None:
        return as_engine(engine)
    return _backward_engine.get() or _engine.get() or graph_engine or _fallback()
