"""What a metric returns: a number, or a `Score` (the number and the sentence of why the optimizer reads)."""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any


@dataclass
class Score:
    """A metric's score with the reason for it: `feedback` is what the optimizer's reflection reads."""

    value: float
    feedback: str = ""

    def __post_init__(self) -> None:
        number = as_number(self.value)
        if number is None or not math.isfinite(number):
            raise ValueError(f"Score.value must be a finite number, got {self.value!r}")
        self.value = number
        self.feedback = "" if self.feedback is None else str(self.feedback)


def as_number(value: Any) -> float | None:
    """`value` as a float when it is a number: bool, int, float, or a numpy/pandas/torch scalar (np.int64(1),
    np.bool_(True), a one-element array: anything with .item() giving one of these); else None."""
    if isinstance(value, (bool, int, float)) or isinstance(value, numbers.Real):
        try:
            return float(value)
        except (TypeError, ValueError, OverflowError):
            return None
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (str, bytes, dict, list, tuple)):
        try:
            inner = item()
        except Exception:  # noqa: BLE001 - not a scalar (an array of many values)
            return None
        if isinstance(inner, (bool, int, float)):
            return float(inner)
    return None
