"""The text report of a Search: what happened, the pool, the Pareto front, and how the best candidate came
to be (its lineage, with the proposer's reasoning and a diff of every change). Reads a checkpoint state,
so `textopt report RUN_DIR` can show a finished or a killed search alike."""
from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

from .search_pool import Candidate, best_id, leads, lineage, pareto_front


def render(state: Mapping[str, Any], *, width: int = 90) -> str:
    """The report of a search from its checkpoint state (or `SearchResult.to_state()`)."""
    from .engines.pricing import format_cost
    from .run import text_diff

    pool = {c.id: c for c in (Candidate.from_dict(d) for d in state.get("pool", []))}
    if not pool:
        return "search: no candidate yet (the starting values were not scored)"
    table = {cid: c.val_scores for cid, c in pool.items()}
    front, led, best = pareto_front(table), leads(table), best_id(pool)
    rows = list(state.get("rows", []))
    usage = state.get("usage") or {}
    options = (state.get("search") or {}).get("options", {})
    budget = f" of {options['budget']}" if options.get("budget") else ""
    where = f"{state['run_dir']}: " if state.get("run_dir") else ""
    out = [f"{where}search stopped: {state.get('stopped') or 'not finished'}, after {state.get('iteration', 0)} iteration(s); "
           f"{state.get('metric_calls', 0)}{budget} metric calls; {usage.get('total_tokens', 0)} tokens in "
           f"{usage.get('calls', 0)} paid calls ({usage.get('cached_calls', 0)} cached), "
           f"{format_cost(float(usage.get('cost_usd', 0) or 0), usage.get('cost_known', True))}"]
    out.append(_outcomes(rows))
    out.append(f"\npool: {len(pool)} candidate(s); * = on the Pareto front; leads = validation examples where none scores higher")
    out.append(f"{'id':>4}  {'kind':<8} {'parents':<9} {'changed':<24} {'val':>6} {'leads':>5}  front")
    for cid in sorted(pool):
        c = pool[cid]
        parents = ",".join(map(str, c.parents)) or "-"
        changed = _cut(",".join(c.changed) or "-", 24)
        out.append(f"{cid:>4}  {c.kind:<8} {parents:<9} {changed:<24} {_f(c.val):>6} {len(led.get(cid, ())):>5}  "
                   f"{'*' if cid in front else ''}{' best' if cid == best else ''}")
    total = sum(front.values()) or 1
    out.append("Pareto front (sampling weight = examples led): "
               + ", ".join(f"#{cid} leads {n} ({n / total:.0%})" for cid, n in front.items()))
    out.append(f"\nbest: #{best}, mean validation score {_f(pool[best].val)}")
    out.append(f"lineage of #{best} (oldest first):")
    for c in lineage(pool, best):
        head = {"seed": "the starting values", "mutation": f"mutation of #{c.parents[0] if c.parents else '?'}",
                "merge": f"merge of {' and '.join('#' + str(p) for p in c.parents)}"}.get(c.kind, c.kind)
        out.append(f"  #{c.id} {head}: val {_f(c.val)}" + (f", changed {', '.join(c.changed)}" if c.changed else ""))
        if c.reasoning and c.kind != "seed":
            out.append(f"     why: {_cut(' '.join(c.reasoning.split()), 300)}")
        if c.parents and c.parents[0] in pool:
            parent = pool[c.parents[0]]
            for name in c.changed:
                diff = text_diff(parent.values.get(name, ""), c.values.get(name, ""), name, width)
                out.extend("     " + line for line in diff[2:])
    out.append(f"\nvalues of #{best}:")
    for name, value in pool[best].values.items():
        out.append(f"  {name}:")
        out.extend("    " + line for line in str(value).splitlines() or [""])
    return "\n".join(out)


def _outcomes(rows: list[dict[str, Any]]) -> str:
    kinds = Counter(r.get("kind") for r in rows)
    mut = [r for r in rows if r.get("kind") == "mutation"]
    added = sum(1 for r in mut if r.get("added") is not None)
    skipped = sum(1 for r in mut if r.get("skipped"))
    rejected = sum(1 for r in mut if r.get("rejected"))
    empty = len(mut) - added - skipped - rejected
    merges = [r for r in rows if r.get("kind") == "merge"]
    failures = sum(int(r.get("failures", 0) or 0) for r in mut)
    return (f"mutations: {kinds.get('mutation', 0)} tried, {added} added to the pool, {rejected} no better on the minibatch, "
            f"{skipped} skipped (parent already perfect there), {empty} without a usable proposal ({failures} failed "
            f"proposals); merges: {len(merges)} tried, {sum(1 for r in merges if r.get('added') is not None)} added")


def _f(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _cut(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
