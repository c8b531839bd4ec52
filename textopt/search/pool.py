"""The candidate pool of a Search: candidates, the Pareto front over validation examples, parent sampling,
and the choice of a merge. Pure functions over plain data, so they are tested on hand-made score tables.

A candidate *leads* a validation example when no candidate in the pool scores higher on it (ties lead
together). The Pareto front is every candidate that leads at least one example, minus the dominated
ones: a candidate whose led examples are all led by another front member that leads more (or the same
examples with a better mean, then an older id) adds nothing and is dropped. A parent is sampled from
the front in proportion to how many examples it leads.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

Table = Mapping[int, Sequence["float | None"]]


@dataclass
class Candidate:
    """One full set of parameter values with its score on every validation example.

    parents: ids it came from (none for the seed, one for a mutation, two for a merge); changed: the
    parameter names it changed relative to its parent (for a merge: taken from the second parent);
    reasoning: the proposer's words for the change (or how the merge was made)."""

    id: int
    parents: list[int]
    changed: list[str]
    values: dict[str, str]
    val_scores: list[float | None]
    reasoning: str = ""
    kind: str = "seed"  # seed | mutation | merge
    iteration: int = 0
    minibatch: dict[str, Any] = field(default_factory=dict)  # mutation: example indices, parent and child scores
    metric_calls: int = 0  # metric calls spent when it entered the pool

    @property
    def val(self) -> float | None:
        """Mean validation score (unscored examples left out)."""
        return mean(self.val_scores)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Candidate":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def mean(scores: Sequence[float | None]) -> float | None:
    vals = [s for s in scores if s is not None]
    return math.fsum(vals) / len(vals) if vals else None


def leads(table: Table) -> dict[int, set[int]]:
    """For each candidate, the validation examples (indices) on which no candidate scores higher."""
    out: dict[int, set[int]] = {cid: set() for cid in table}
    width = max((len(s) for s in table.values()), default=0)
    for e in range(width):
        col = {cid: s[e] for cid, s in table.items() if e < len(s) and s[e] is not None}
        if not col:
            continue
        top = max(col.values())
        for cid, v in col.items():
            if v == top:
                out[cid].add(e)
    return out


def pareto_front(table: Table) -> dict[int, int]:
    """{candidate id: number of examples it leads} for the non-dominated leaders, in id order."""
    led = {cid: s for cid, s in leads(table).items() if s}
    means = {cid: mean(table[cid]) or 0.0 for cid in led}

    def preferred(a: int, b: int) -> bool:  # a kept over b when they lead the same examples
        return (means[a], -a) > (means[b], -b)

    front = {}
    for x, sx in led.items():
        dominated = any(y != x and sx <= sy and (sx < sy or preferred(y, x)) for y, sy in led.items())
        if not dominated:
            front[x] = len(sx)
    return dict(sorted(front.items()))


def sample_parent(front: Mapping[int, int], rng: random.Random) -> int:
    """A front member drawn with probability proportional to the examples it leads."""
    if not front:
        raise ValueError("the Pareto front is empty: no candidate has a validation score")
    ids = sorted(front)
    return rng.choices(ids, weights=[front[i] for i in ids], k=1)[0]


def ancestors(pool: Mapping[int, Candidate], cid: int) -> set[int]:
    """Every id `cid` descends from (not itself)."""
    seen: set[int] = set()
    stack = list(pool[cid].parents)
    while stack:
        p = stack.pop()
        if p not in seen and p in pool:
            seen.add(p)
            stack.extend(pool[p].parents)
    return seen


def lineage(pool: Mapping[int, Candidate], cid: int) -> list[Candidate]:
    """The candidate's ancestors and itself, oldest first (both sides of a merge included)."""
    if cid not in pool:
        raise KeyError(f"no candidate with id {cid} (ids: {sorted(pool)})")
    return [pool[i] for i in sorted(ancestors(pool, cid) | {cid})]


def changed_since(a: Candidate, b: Candidate) -> set[str]:
    """Parameters whose value differs between a and b."""
    return {k for k in b.values if a.values.get(k) != b.values[k]}


def merge_options(pool: Mapping[int, Candidate], front: Sequence[int], tried: set[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """(i, j, ancestor) triples that can be merged: i and j on the front, neither descends from the other,
    and since a common ancestor they changed disjoint, non-empty sets of parameters; the merge would be a
    new set of values, and the triple was not tried before."""
    known = {_key(c.values) for c in pool.values()}
    out = []
    ids = sorted(front)
    for x, i in enumerate(ids):
        anc_i = ancestors(pool, i)
        for j in ids[x + 1 :]:
            anc_j = ancestors(pool, j)
            if i in anc_j or j in anc_i:
                continue
            for a in sorted(anc_i & anc_j):
                if (i, j, a) in tried:
                    continue
                di, dj = changed_since(pool[a], pool[i]), changed_since(pool[a], pool[j])
                if di and dj and not di & dj and _key(merged_values(pool, i, j, a)) not in known:
                    out.append((i, j, a))
    return out


def merged_values(pool: Mapping[int, Candidate], i: int, j: int, a: int) -> dict[str, str]:
    """The ancestor's values, with each parameter i changed taken from i and each j changed from j."""
    values = dict(pool[a].values)
    for k in changed_since(pool[a], pool[i]):
        values[k] = pool[i].values[k]
    for k in changed_since(pool[a], pool[j]):
        values[k] = pool[j].values[k]
    return values


def best_id(pool: Mapping[int, Candidate]) -> int:
    """Highest mean validation score; the older candidate on a tie."""
    return min(pool, key=lambda cid: (-(pool[cid].val if pool[cid].val is not None else -math.inf), cid))


def _key(values: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(values.items()))


class SearchState:
    """Everything a search changes as it goes (all of it goes into the checkpoint): the pool, the RNG that
    samples parents, merges and minibatches, the minibatch order, counters, and one row per iteration."""

    def __init__(self, seed: int = 0) -> None:
        self.pool: dict[int, Candidate] = {}
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.cursor = self.iteration = self.next_param = self.stale = self.merges = 0
        self.merge_due = False
        self.tried: set[tuple[int, int, int]] = set()
        self.rows: list[dict[str, Any]] = []
        self.stopped: str | None = None

    def table(self) -> dict[int, list[float | None]]:
        return {cid: c.val_scores for cid, c in self.pool.items()}

    def best(self) -> Candidate:
        return self.pool[best_id(self.pool)]

    def twin(self, values: Mapping[str, str]) -> int | None:
        """The id of a pool candidate with exactly these values."""
        return next((c.id for c in self.pool.values() if c.values == values), None)

    def next_batch(self, n: int, size: int) -> list[int]:
        """`size` training indices: passes over a seeded shuffle of range(n), a new shuffle when one runs out."""
        if self.cursor + size > len(self.order):
            self.order = list(range(n))
            self.rng.shuffle(self.order)
            self.cursor = 0
        idx = self.order[self.cursor : self.cursor + size]
        self.cursor += len(idx)
        return idx

    def to_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"pool": [c.to_dict() for c in self.pool.values()], "rng": [version, list(internal), gauss],
                "order": self.order, "cursor": self.cursor, "iteration": self.iteration, "next_param": self.next_param,
                "stale": self.stale, "merges": self.merges, "merge_due": self.merge_due, "tried": sorted(self.tried),
                "rows": self.rows, "stopped": self.stopped}

    def load(self, state: Mapping[str, Any]) -> None:
        self.pool = {c.id: c for c in (Candidate.from_dict(d) for d in state["pool"])}
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self.order, self.cursor, self.iteration = list(state["order"]), int(state["cursor"]), int(state["iteration"])
        self.next_param, self.stale, self.merges = int(state["next_param"]), int(state["stale"]), int(state["merges"])
        self.merge_due = bool(state["merge_due"])
        self.tried = {(int(i), int(j), int(a)) for i, j, a in state["tried"]}
        self.rows, self.stopped = list(state["rows"]), state.get("stopped")
