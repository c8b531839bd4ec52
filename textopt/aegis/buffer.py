"""Gradient buffer: the last few gradients of each route, shown when the next one is asked for.

AEGIS feeds past gradients back so that a new gradient says something the earlier ones did not (the
paper's ablation: without the buffer TPR drops about 5 points). One bounded buffer per (side, route).
"""
from __future__ import annotations

from collections import deque
from typing import Any


class GradientBuffer:
    """Keeps at most `size` gradients per route key, oldest first. size=0 turns the buffer off."""

    def __init__(self, size: int = 4) -> None:
        if size < 0:
            raise ValueError(f"buffer size must be >= 0, got {size}")
        self.size = size
        self._items: dict[str, deque[str]] = {}

    def add(self, route: str, gradient: str) -> None:
        if self.size == 0 or not gradient.strip():
            return
        self._items.setdefault(route, deque(maxlen=self.size)).append(gradient)

    def get(self, route: str) -> list[str]:
        return list(self._items.get(route, ()))

    def __len__(self) -> int:
        return sum(len(v) for v in self._items.values())

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) for k, v in self._items.items()}
