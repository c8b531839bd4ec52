"""Top-k pool of candidate prompts per side: kept by training score, best chosen on validation.

Ties break by insertion order (the older candidate wins), so selection is deterministic.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Candidate:
    prompt: str
    train_score: float = 0.0
    val_score: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    born: str = ""  # e.g. "initial", "round 2 iteration 1"
    order: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "train_score": self.train_score, "val_score": self.val_score,
                "metrics": self.metrics, "born": self.born}


class Pool:
    """At most k candidates, the k best by `train_score`; a prompt already in the pool is not added twice."""

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"pool_size must be at least 1, got {k}")
        self.k = k
        self.members: list[Candidate] = []
        self._next = 0

    def __contains__(self, prompt: str) -> bool:
        return any(c.prompt == prompt for c in self.members)

    def add(self, cand: Candidate) -> bool:
        """Add and trim to k; True when the candidate survived."""
        if cand.prompt in self:
            return False
        cand.order = self._next
        self._next += 1
        self.members.append(cand)
        self.members.sort(key=lambda c: (-c.train_score, c.order))
        del self.members[self.k :]
        return cand in self.members

    def resort(self) -> None:
        self.members.sort(key=lambda c: (-c.train_score, c.order))

    def top(self) -> Candidate:
        """Best by training score."""
        if not self.members:
            raise ValueError("the pool is empty")
        return self.members[0]

    def best_on_validation(self) -> Candidate:
        """Best by validation score (every member must have one); ties go to the better training score."""
        if any(c.val_score is None for c in self.members):
            raise ValueError("score every pool member on the validation split first")
        return min(self.members, key=lambda c: (-(c.val_score or 0.0), -c.train_score, c.order))

    def prompts(self) -> list[str]:
        return [c.prompt for c in self.members]
