"""Budgets a run checks between steps, and the usage columns every loop writes per step."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

if TYPE_CHECKING:
    from ..engines.usage import Usage


@dataclass
class Budgets:
    """Limits checked between steps (a step in flight finishes). None = no limit."""

    tokens: int | None = None
    calls: int | None = None
    usd: float | None = None
    metric_calls: int | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or math.isnan(v)):
                raise ValueError(f"budget {f.name} must be a non-negative number or None, got {v!r}")

    def exceeded(self, totals: Mapping[str, float], metric_calls: int = 0) -> str | None:
        """The stop reason ("budget_tokens", "budget_calls", "budget_usd", "budget_metric_calls") or None."""
        if self.tokens is not None and totals.get("total_tokens", 0) >= self.tokens:
            return "budget_tokens"
        if self.calls is not None and totals.get("calls", 0) >= self.calls:
            return "budget_calls"
        if self.usd is not None and (totals.get("cost_usd", 0.0) >= self.usd or totals.get("cost_known") is False):
            return "budget_usd"  # a call whose price is unknown: the dollar budget can't be held, so stop
        if self.metric_calls is not None and metric_calls >= self.metric_calls:
            return "budget_metric_calls"
        return None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def usage_columns(usage: "Usage") -> dict[str, Any]:
    """The per-row usage columns of a step (tokens, calls, cached_calls, cost_usd), shared by every loop."""
    return {"tokens": usage.total_tokens, "calls": usage.calls, "cached_calls": usage.cached_calls,
            "cost_usd": round(float(getattr(usage, "cost_usd", 0.0) or 0.0), 8),
            **({"cost_known": False} if getattr(usage, "cost_known", True) is False else {})}


