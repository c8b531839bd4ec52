"""Dollar cost of a completion, from litellm's model cost map (the copy shipped in the package, no fetch).

The map is loaded when a price is first needed for a model that isn't free: read straight from the
installed litellm package's JSON file when litellm isn't imported yet (importing it costs seconds), else
from `litellm.model_cost` (LITELLM_LOCAL_MODEL_COST_MAP=True, so that is the same local file). Each
model's lookup is cached. A model the map doesn't know has an unknown cost (None), never a guessed one.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
from pathlib import Path
from typing import Any

#: The cost map litellm ships (and loads itself when LITELLM_LOCAL_MODEL_COST_MAP=True).
COST_MAP_FILE = "model_prices_and_context_window_backup.json"

_lock = threading.Lock()
_prices: dict[str, tuple[float, float] | None] = {}
_cost_map: dict[str, Any] | None = None


def import_litellm() -> Any:
    """Import litellm with its local cost map (no network at import), quiet and without telemetry."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    return litellm


def _read_shipped_map() -> dict[str, Any] | None:
    """The cost map file inside the installed litellm package, read without importing litellm."""
    spec = importlib.util.find_spec("litellm")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / COST_MAP_FILE
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            return data if isinstance(data, dict) else None
    return None


def cost_map() -> dict[str, Any]:
    """litellm's model cost map ({} when litellm is not installed)."""
    global _cost_map
    if _cost_map is None:
        with _lock:
            if _cost_map is None:
                table = None if "litellm" in sys.modules else _read_shipped_map()
                if table is None:
                    try:
                        table = dict(getattr(import_litellm(), "model_cost", None) or {})
                    except ImportError:
                        table = {}
                _cost_map = table
    return _cost_map


def loaded() -> bool:
    """True once the cost map is in memory (looking a price up no longer imports anything)."""
    return _cost_map is not None


def _candidates(model: str) -> list[str]:
    names = [model]
    if "/" in model:  # litellm's "provider/model" form; the map keys most models without the provider
        names.append(model.split("/", 1)[1])
    return names


def price_per_token(model: str) -> tuple[float, float] | None:
    """(input, output) USD per token for `model`, or None if litellm's map doesn't price it."""
    if model in _prices:
        return _prices[model]
    table = cost_map()
    found: tuple[float, float] | None = None
    for name in _candidates(model):
        entry = table.get(name)
        if isinstance(entry, dict) and "input_cost_per_token" in entry and "output_cost_per_token" in entry:
            try:
                found = (float(entry["input_cost_per_token"]), float(entry["output_cost_per_token"]))
            except (TypeError, ValueError):
                continue
            break
    _prices[model] = found
    return found


def cost_usd(models: list[str], prompt_tokens: int, completion_tokens: int) -> float | None:
    """Cost of one completion priced as the first of `models` the map knows; None if it knows none."""
    for model in models:
        if model:
            price = price_per_token(model)
            if price is not None:
                return prompt_tokens * price[0] + completion_tokens * price[1]
    return None
