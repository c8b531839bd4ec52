"""What a Trainer run did (its History), the before/after diff of a parameter, and the plot of both."""
from __future__ import annotations

import difflib
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..engines.pricing import format_cost
from .files import CHECKPOINT
from .rundir import read_checkpoint


@dataclass
class History:
    """What a run did. `rows`: one dict per step (step 0 = the validation baseline before any update)
    with step, epoch, train (metric on the batch, before the update), val, best_val, accepted, tokens,
    calls, cached_calls, cost_usd, seconds, failures. `initial` / `final`: parameter values before and after."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    initial: dict[str, Any] = field(default_factory=dict)
    final: dict[str, Any] = field(default_factory=dict)
    stopped: str | None = None
    run_dir: str | None = None

    @property
    def best(self) -> dict[str, Any]:
        """The run protocol's best values: the parameters as the run left them (the best kept, with keep_best)."""
        return dict(self.final)

    @property
    def history(self) -> list[dict[str, Any]]:
        """The run protocol's history: one row per step (step 0 = the validation baseline)."""
        return self.rows

    @property
    def best_val(self) -> float | None:
        vals = [r["val"] for r in self.rows if r.get("val") is not None and r.get("accepted")]
        return max(vals) if vals else None

    @property
    def rejected(self) -> list[int]:
        """Steps whose update was reverted because validation got worse."""
        return [r["step"] for r in self.rows if not r.get("accepted", True)]

    @property
    def tokens(self) -> int:
        return sum(int(r.get("tokens", 0)) for r in self.rows)

    @property
    def cost_usd(self) -> float:
        return round(sum(float(r.get("cost_usd", 0.0) or 0.0) for r in self.rows), 8)

    def to_dict(self) -> dict[str, Any]:
        return {"stopped": self.stopped, "initial": self.initial, "final": self.final, "rows": self.rows}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], run_dir: str | None = None) -> "History":
        return cls(list(data.get("rows", [])), dict(data.get("initial", {})), dict(data.get("final", {})),
                   data.get("stopped"), run_dir)

    @classmethod
    def load(cls, run_dir: str | Path) -> "History":
        """The history of a run directory (from its checkpoint, or the backup if that is unreadable)."""
        state = read_checkpoint(run_dir)
        if state is None or "history" not in state:
            raise FileNotFoundError(f"{run_dir} holds no Trainer checkpoint ({CHECKPOINT}); is it a run directory made "
                                    "by the Trainer (run_dir=...) or `textopt optimize`?")
        return cls.from_dict(state["history"], str(run_dir))

    def diff(self, name: str, width: int = 90) -> list[str]:
        """A line diff of one parameter's value, before -> after (values are wrapped to `width`)."""
        return text_diff(self.initial.get(name, ""), self.final.get(name, ""), name, width)

    def summary(self) -> str:
        """A plain-text table of the steps, the totals, and a diff of every parameter."""
        steps = [r for r in self.rows if r["step"] > 0]
        where = f"{self.run_dir}: " if self.run_dir else ""
        out = [f"{where}{len(steps)} step(s), stopped: {self.stopped or 'not finished'}",
               f"{'step':>4} {'epoch':>5} {'train':>6} {'val':>6} {'best':>6} {'kept':>5} {'tokens':>7} {'calls':>5} "
               f"{'cached':>6} {'usd':>8} {'sec':>6}"]
        fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
        for r in self.rows:
            kept = "base" if r["step"] == 0 else ("yes" if r.get("accepted") else "NO")
            out.append(
                f"{r['step']:>4} {r.get('epoch', 0):>5} {fmt(r.get('train')):>6} {fmt(r.get('val')):>6} "
                f"{fmt(r.get('best_val')):>6} {kept:>5} {r.get('tokens', 0):>7} {r.get('calls', 0):>5} "
                f"{r.get('cached_calls', 0):>6} {float(r.get('cost_usd', 0) or 0):>8.4f} {r.get('seconds', 0):>6.1f}")
        calls = sum(int(r.get("calls", 0)) for r in self.rows)
        cached = sum(int(r.get("cached_calls", 0)) for r in self.rows)
        out.append(f"best val: {fmt(self.best_val)}; rejected steps: {self.rejected or 'none'}; "
                   f"tokens: {self.tokens} in {calls} paid calls, {cached} served by the cache; "
                   f"cost: {format_cost(self.cost_usd, all(r.get('cost_known', True) for r in self.rows))}")
        why = [(r["step"], n, t) for r in self.rows for n, t in (r.get("reasoning") or {}).items() if t]
        if why:
            out.append("\nwhy the optimizer changed what it changed:")
            out.extend(f"  step {step} {name}: {' '.join(str(text).split())[:300]}" for step, name, text in why)
        for name in self.initial:
            d = self.diff(name)
            out.append(f"\nparameter {name}: " + ("unchanged" if not d else "before -> after"))
            out.extend(d[2:] if d else [])
        return "\n".join(out)

    def plot(self, path: str | Path | None = None) -> Any:
        """A matplotlib Figure: metric per step (rejected steps marked), tokens per step, and the
        before/after diff of each parameter. With `path`, also saved there as PNG. Needs matplotlib."""
        return plot_history(self, path)


def text_diff(before: Any, after: Any, name: str, width: int = 90) -> list[str]:
    def lines(text: Any) -> list[str]:
        out: list[str] = []
        for para in str(text).splitlines() or [""]:
            out.extend(textwrap.wrap(para, width) or [""])
        return out

    return list(difflib.unified_diff(lines(before), lines(after), f"{name} (before)", f"{name} (after)", lineterm="", n=2))


def plot_history(history: History, path: str | Path | None = None) -> Any:
    """See History.plot."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional heavy dependency (matplotlib)
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("History.plot needs matplotlib: pip install matplotlib", name="matplotlib") from exc

    diffs = {name: history.diff(name)[2:] for name in history.initial}
    diff_lines = sum(min(len(d), 40) + 2 for d in diffs.values()) or 2
    fig = Figure(figsize=(10, 6 + 0.17 * diff_lines))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, 1, height_ratios=[3, 2, max(1.0, 0.17 * diff_lines)])
    ax1, ax2, ax3 = fig.add_subplot(grid[0]), fig.add_subplot(grid[1]), fig.add_subplot(grid[2])
    rows = history.rows
    steps = [r["step"] for r in rows]
    for key, style, label in (("train", "o-", "train (batch, before update)"), ("val", "s-", "validation")):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        if pts:
            ax1.plot(*zip(*pts), style, label=label)
    rej = [(r["step"], r["val"]) for r in rows if not r.get("accepted", True) and r.get("val") is not None]
    if rej:
        ax1.plot(*zip(*rej), "x", color="red", markersize=12, mew=2, label="rejected (reverted)")
    ax1.set_ylabel("metric")
    ax1.set_title(f"run {history.run_dir or ''} - stopped: {history.stopped or 'not finished'}")
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(loc="best", fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.bar(steps, [r.get("tokens", 0) for r in rows], color="tab:gray", label="paid tokens")
    ax2.set_ylabel("tokens")
    ax2.set_xlabel("step (0 = baseline)")
    if history.cost_usd:
        ax2.set_title(f"cost ${history.cost_usd:.4f}", fontsize=9)
    ax2.grid(alpha=0.3)
    for ax in (ax1, ax2):
        if steps:
            ax.set_xticks(steps)
    ax3.axis("off")
    y, dy = 1.0, 1.0 / (diff_lines + 1)
    for name, d in diffs.items():
        ax3.text(0, y, f"{name}: " + ("unchanged" if not d else "before (-) / after (+)"), family="monospace",
                 fontsize=8, weight="bold", va="top", transform=ax3.transAxes)
        y -= dy
        for line in d[:40]:
            color = "tab:red" if line.startswith("-") else "tab:green" if line.startswith("+") else "black"
            ax3.text(0, y, line[:120], family="monospace", fontsize=7, color=color, va="top", transform=ax3.transAxes)
            y -= dy
        y -= dy
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    return fig
