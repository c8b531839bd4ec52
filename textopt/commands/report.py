"""`textopt report DIR`: the summary of a run (steps, metrics, tokens and cost, parameter diffs, every
validation report with its worst examples first), printed and written to DIR/report.txt, and its curves
saved as DIR/curves.png (best effort: without matplotlib the report is still written)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..aegis.outputs import plot_rounds as aegis_plot
from ..engines.pricing import format_cost
from ..evaluate import EvalReport
from ..recipes.humaneval_job import report_text
from ..run import CHECKPOINT, History, Run, describe_row, read_checkpoint, read_spec
from ..search import search_report
from ..search.report import plot_search
from ._common import time_split_line


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="summarize a run directory and plot its curves")
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("--png", default=None, help="where to save the plot (default: RUN_DIR/curves.png)")
    p.add_argument("--no-plot", action="store_true", help="skip the plot (no matplotlib needed)")
    p.add_argument("--worst", type=int, default=3, help="worst examples shown per evaluation report (default: 3)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error")
    return p


def _clip(text: Any, n: int = 100) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= n else s[: n - 3] + "..."


def eval_section(run_dir: Path, worst: int) -> list[str]:
    """Every saved evaluation report: its mean and interval, then its worst rows."""
    folder = run_dir / "evals"
    if not folder.is_dir():
        return []
    out = ["", "evaluation reports (worst examples first):"]
    for path in sorted(folder.glob("*.jsonl"), key=lambda p: (p.stat().st_mtime, p.name)):
        report = EvalReport.load(path)
        out.append(f"  {path.stem}: {report.summary()}")
        for row in report.worst(worst):
            score = "-" if row.score is None else f"{row.score:.2f}"
            why = row.error or row.feedback
            example = row.example.get("question", row.example) if isinstance(row.example, dict) else row.example
            out.append(f"    [{score}] {_clip(example, 60)} -> {_clip(row.output, 60)}" + (f"  ({_clip(why, 80)})" if why else ""))
    return out


def aegis_text(run_dir: Path, state: dict[str, Any]) -> str:
    rows = state.get("history", [])
    out = [f"{run_dir}: aegis run, {state.get('rounds_run', 0)} round(s), stopped: {state.get('stopped') or 'not finished'}"]
    out += [describe_row(r) for r in rows]
    u = state.get("usage", {})
    out.append(f"tokens: {u.get('total_tokens', 0)} in {u.get('calls', 0)} paid calls, {u.get('cached_calls', 0)} "
               f"served by the cache; cost: {format_cost(u.get('cost_usd', 0.0), u.get('cost_known', True))}")
    best = state.get("best", {})
    for side in ("defense", "attack"):
        if side in best:
            out += [f"\nbest {side} prompt:", best[side]]
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    state = read_checkpoint(run_dir)
    if state is None:
        raise FileNotFoundError(f"{run_dir} holds no {CHECKPOINT}; is it a run directory (textopt optimize --out DIR)?")
    kind = state.get("kind") or read_spec(run_dir).get("kind")
    view = Run(run_dir, kind=kind or "trainer")  # not opened: report reads, and writes only its own files
    if kind == "search":
        text = search_report(run_dir)
        draw = lambda path: plot_search(state, path)  # noqa: E731
    elif kind == "code":
        text = report_text(run_dir, state)
        draw = None
    elif kind == "aegis":
        text = aegis_text(run_dir, state)
        draw = None
        if "history" in state and state["history"]:
            draw = lambda path: aegis_plot(state["history"], path)  # noqa: E731
    else:
        history = History.from_dict(state["history"], str(run_dir))
        text = history.summary()
        draw = history.plot
        failures = (state.get("optimizer") or {}).get("failures") or []
        if failures:
            text += f"\n\nfailed updates: {len(failures)} (last {min(len(failures), 3)}):"
            text += "".join(f"\n  step {f.get('step')} {f.get('variable')}: {_clip(f.get('error'), 200)}" for f in failures[-3:])
    result_path = run_dir / "result.json"
    if result_path.exists() and kind not in ("aegis", "code"):
        r = json.loads(result_path.read_text(encoding="utf-8"))
        f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        text += (f"\n\ntest accuracy ({r.get('eval_size')} held-out examples): before {f(r.get('accuracy_before'))}, "
                 f"after {f(r.get('accuracy_after'))}")
        line = time_split_line(r.get("time_split"))
        text += f"\n{line}" if line else ""
    text += "\n".join([""] + eval_section(run_dir, args.worst)) if (run_dir / "evals").is_dir() else ""
    if not args.no_plot and draw is not None:
        png = Path(args.png) if args.png else run_dir / "curves.png"
        if png.parent == run_dir:
            saved = view.plot(draw, png.name)
        else:
            png.parent.mkdir(parents=True, exist_ok=True)
            saved = Run(png.parent, kind=view.kind).plot(draw, png.name)
        if saved:
            text += f"\n\nplot: {saved}"
    view.write_text("report.txt", text + "\n")
    print(text)
    return 0
