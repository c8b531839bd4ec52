"""Engines: one small interface in front of every provider. Providers are imported only when built."""
from __future__ import annotations

from typing import Any

from .base import Engine
from .cache import DiskCache
from .litellm import LiteLLMEngine
from .local import LocalEngine
from .openai import OpenAIEngine
from .router import RouterEngine
from .scripted import ScriptedEngine
from .types import Completion, Request
from .usage import Usage, track_usage

__all__ = ["Completion", "DiskCache", "Engine", "Request", "ScriptedEngine", "Usage", "as_engine", "get_engine", "track_usage"]


def get_engine(spec: str, **options: Any) -> Engine:
    """Build an engine from a spec string.

    "local" (or "local:<name>", "local:/path/model.gguf"): a local model via llama.cpp, SmolLM2 by default,
    "local:reflect" for Qwen2.5-Coder-1.5B-Instruct (names in textopt.engines.models.MODELS); "openai:<model>" (with
    base_url=... for any OpenAI-compatible server); "litellm:<model>"; "router" (endpoints=[{"model": ...,
    "base_url": ...}, ...]: several servers behind litellm's Router); "scripted" (reply=..., latency=...).
    Every engine takes timeout= (s per attempt), max_time=, max_concurrency=, cache=, budget_tokens=, budget_usd=.
    """
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "local":
        return LocalEngine(rest or options.pop("model_path", None), **options)
    if kind == "openai":
        if not rest:
            raise ValueError("openai engine spec needs a model: 'openai:<model>', e.g. 'openai:gpt-4.1-mini'")
        return OpenAIEngine(rest, **options)
    if kind == "litellm":
        if not rest:
            raise ValueError("litellm engine spec needs a model: 'litellm:<provider/model>'")
        return LiteLLMEngine(rest, **options)
    if kind == "router":
        if "endpoints" not in options:
            raise ValueError("the router engine needs endpoints=[{'model': ..., 'base_url': ...}, ...]")
        return RouterEngine(options.pop("endpoints"), **options)
    if kind == "scripted":
        return ScriptedEngine(**options)
    raise ValueError(
        f"unknown engine spec {spec!r}: use 'local', 'openai:<model>', 'litellm:<model>', 'router' or 'scripted'"
    )


def as_engine(engine: Engine | str) -> Engine:
    """An Engine as is; a spec string built with `get_engine`."""
    if isinstance(engine, Engine):
        return engine
    if isinstance(engine, str):
        return get_engine(engine)
    raise TypeError(f"expected an Engine or an engine spec string, got {type(engine).__name__}")
