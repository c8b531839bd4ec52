"""Dollar cost of a completion, from litellm's model cost map (the copy shipped in the package, no fetch).

The map is loaded when a price is first needed for a model that isn't free: read straight from the
installed litellm package's JSON file when litellm isn't imported yet (importing it costs seconds), else
from `litellm.model_cost` (LITELLM_LOCAL_MODEL_COST_MAP=True, so that is the same local file). Each
model's lookup is cached. A model the map doesn't know has an unknown cost (None), never a guessed one.

litellm is an extra (`pip install 'textopt[litellm]'`): without it every non-free model's cost is unknown,
the litellm and router engines refuse to be built, and a dollar budget on a paid engine is refused up front.
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


#: The install line for everything litellm brings (engines, dollar costs).
INSTALL = "pip install 'textopt[litellm]'"


def litellm_available() -> bool:
    """True when litellm can be imported (checked without importing it)."""
    if "litellm" in sys.modules:
        return sys.modules["litellm"] is not None
    try:
        return importlib.util.find_spec("litellm") is not None
    except (ImportError, ValueError):
        return False


def import_litellm(needed_by: str = "this engine") -> Any:
    """Import litellm with its local cost map (no network at import), quiet and without telemetry.

    Without litellm: ImportError in one line, naming what needs it and the install command."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import litellm  # litellm takes seconds to import and may reach the network
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] != "litellm":
            raise  # litellm is there but one of its own dependencies is not
        raise ImportError(f"{needed_by} needs litellm, which is not installed: {INSTALL}", name="litellm") from None

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
                        table = dict(getattr(import_litellm("dollar costs"), "model_cost", None) or {})
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


def unknown_cost_reason() -> str:
    """Why a paid model's cost can be unknown here: litellm missing, or a model its map doesn't price."""
    if not litellm_available():
        return f"litellm is not installed ({INSTALL} for dollar costs)"
    return "litellm's cost map has no price for this model"


def format_cost(cost_usd: float | None, known: bool = True) -> str:
    """A run's cost for people: "$0.0123"; with unpriced calls, "n/a (...)" or "at least $x (...)"."""
    if known and cost_usd is not None:
        return f"${cost_usd:.4f}"
    why = "install textopt[litellm] for dollar costs" if not litellm_available() else "some models are not in litellm's cost map"
    if cost_usd:
        return f"at least ${cost_usd:.4f} ({why})"
    return f"n/a ({why})"


def check_budget_usd(budget_usd: float | None, free: bool, what: str = "budget_usd=") -> None:
    """Refuse a dollar budget that could never be enforced (a paid engine and no litellm), before any call."""
    if budget_usd is not None and not free and not litellm_available():
        raise ImportError(f"{what} needs dollar prices from litellm's cost map, and litellm is not installed: "
                          f"{INSTALL} (or use a token or call budget)", name="litellm")
