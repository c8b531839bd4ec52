"""The text report of a Search: what happened, the pool, the Pareto front, and how the best candidate came
to be (its lineage, with the proposer's reasoning and a diff of every change). Reads a checkpoint state,
so `textopt report RUN_DIR` can show a finished or a killed search alike."""
from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

from pathlib import Path

from ..engines.pricing import format_cost
from ..run import text_diff
from .pool import Candidate, best_id, leads, lineage, pareto_front


def render(state: Mapping[str, Any], *, width: int = 90) -> str:
    """The report of a search from its checkpoint state (or `SearchResult.to_state()`)."""
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


def plot_search(state: Mapping[str, Any], path: Any = None) -> Any:
    """The pool as a picture: each candidate's mean validation score against the metric calls spent when it
    joined, lines from parent to child, the Pareto front marked and the best circled, with the best score so
    far as a step line. With `path`, saved there as PNG. Needs matplotlib (a missing one raises ImportError)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional heavy dependency (matplotlib)
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("the search plot needs matplotlib: pip install matplotlib", name="matplotlib") from exc

    pool = {c.id: c for c in (Candidate.from_dict(d) for d in state.get("pool", []))}
    fig = Figure(figsize=(8, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if pool:
        front, best = pareto_front({cid: c.val_scores for cid, c in pool.items()}), best_id(pool)
        xy = {cid: (c.metric_calls, c.val if c.val is not None else 0.0) for cid, c in pool.items()}
        for cid, c in pool.items():
            for parent in c.parents:
                if parent in xy:
                    ax.plot(*zip(xy[parent], xy[cid]), "-", color="lightgray", zorder=1)
        others = [xy[c] for c in pool if c not in front]
        if others:
            ax.scatter(*zip(*others), color="tab:gray", label="candidate", zorder=2)
        ax.scatter(*zip(*(xy[c] for c in front)), marker="*", s=160, color="tab:orange", label="Pareto front", zorder=3)
        ax.scatter(*xy[best], s=320, facecolors="none", edgecolors="tab:red", linewidths=2, label=f"best #{best}", zorder=4)
        for cid, (x, y) in xy.items():
            ax.annotate(f"#{cid}", (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        order = sorted(pool.values(), key=lambda c: (c.metric_calls, c.id))
        steps, top = [], None
        for c in order:
            top = c.val if top is None or (c.val is not None and c.val > top) else top
            steps.append((c.metric_calls, top if top is not None else 0.0))
        end = max(int(state.get("metric_calls") or 0), steps[-1][0])
        steps.append((end, steps[-1][1]))
        ax.step(*zip(*steps), where="post", color="tab:blue", alpha=0.6, label="best so far")
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("metric calls spent when the candidate joined the pool")
    ax.set_ylabel("mean validation score")
    ax.set_title(f"search: {len(pool)} candidate(s), stopped: {state.get('stopped') or 'not finished'}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig
