"""Candidate search (GEPA-style): a pool of full sets of parameter values grown by reflective mutation.

- `loop`: `Search` (the loop: seed, mutate, merge, stop) and its `SearchResult`;
- `pool`: candidates, the Pareto front, parent sampling and merge choice (pure functions over plain data);
- `reflect`: the proposer side of a mutation (feedback through the optimizer contract, samples, rejections);
- `report`: the text report and the plot of a search, read from its checkpoint.
"""
from __future__ import annotations

from .loop import MERGES, Search, SearchResult, search_report
from .pool import Candidate, SearchState, best_id, lineage, pareto_front
from .report import plot_search, render

__all__ = ["Search", "SearchResult", "search_report", "plot_search", "render", "Candidate", "SearchState",
           "best_id", "lineage", "pareto_front", "MERGES"]
