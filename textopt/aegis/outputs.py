"""What a co-evolution leaves in its run directory: result.json, history.csv and a plot of the rounds."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..run import Run
from .corpus import split
from .state import Result


HISTORY_FIELDS = ("round", "side", "tpr", "tnr", "asr", "score_gain", "attack_score", "defense_score", "improved", "tokens", "seconds")


def history_csv(history: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow(row)
    return buf.getvalue()


def plot_rounds(history: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Curves of TPR, TNR, ASR and score gain per step (needs matplotlib: a missing one raises ImportError)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional heavy dependency (matplotlib)
    from matplotlib.figure import Figure

    xs = list(range(len(history)))
    labels = [f"{h['round']}:{h['side'][0]}" for h in history]
    fig = Figure(figsize=(7, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for key, style in (("tpr", "-o"), ("tnr", "-s"), ("asr", "--^"), ("score_gain", "--v")):
        ax.plot(xs, [h[key] for h in history], style, label=key)
    ax.set_xticks(xs, labels, rotation=45 if len(xs) > 10 else 0)
    ax.set_xlabel("round:side (validation split)")
    ax.set_ylim(-0.05, 1.05)
    ax.legend(loc="best")
    ax.set_title("AEGIS co-evolution")
    fig.tight_layout()
    fig.savefig(str(path), dpi=100)


def write_outputs(result: Result, out: str | Path | Run) -> Path:
    """result.json, history.json, history.csv and (best effort: matplotlib) curves.png in the run directory."""
    run = out if isinstance(out, Run) else Run(out, kind="aegis")
    assert run.dir is not None
    run.dir.mkdir(parents=True, exist_ok=True)
    run.write_json("result.json", result.to_dict())
    run.write_json("history.json", result.history)
    run.write_text("history.csv", history_csv(result.history))
    run.plot(lambda path: plot_rounds(result.history, path), "curves.png")
    return run.dir
