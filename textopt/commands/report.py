"""`textopt report DIR`: the summary of a run (steps, metrics, tokens, parameter diffs), printed and
written to DIR/report.txt, and its curves saved as DIR/curves.png."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="summarize a run directory and plot its curves")
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("--png", default=None, help="where to save the plot (default: RUN_DIR/curves.png)")
    p.add_argument("--no-plot", action="store_true", help="skip the plot (no matplotlib needed)")
    return p


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import atomic_write_text, read_json
    from ..train import CHECKPOINT, History

    run_dir = Path(args.run_dir)
    if not (run_dir / CHECKPOINT).exists():
        print(f"textopt report: {run_dir} holds no {CHECKPOINT}; is it a run directory (textopt optimize --out DIR)?",
              file=sys.stderr)
        return 2
    history = History.load(run_dir)
    text = history.summary()
    result_path = run_dir / "result.json"
    if result_path.exists():
        r = read_json(result_path)
        f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        text += (f"\n\ntest accuracy ({r.get('eval_size')} held-out examples): before {f(r.get('accuracy_before'))}, "
                 f"after {f(r.get('accuracy_after'))}")
    if not args.no_plot:
        import matplotlib

        matplotlib.use("Agg")
        png = Path(args.png) if args.png else run_dir / "curves.png"
        history.plot(png)
        text += f"\n\nplot: {png}"
    atomic_write_text(run_dir / "report.txt", text + "\n")
    print(text)
    return 0
