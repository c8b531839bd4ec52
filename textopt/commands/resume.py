"""`textopt resume DIR`: continue a run made by `textopt optimize --out DIR` from its last completed step.

Everything is rebuilt from DIR/spec.json; calls that were already made are served by the disk cache, so
the resumed run ends where an uninterrupted one would, without paying twice.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("resume", help="continue a run directory made by `textopt optimize --out DIR`")
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("--steps", type=int, default=None, help="change the total number of steps (e.g. to extend a finished run)")
    p.add_argument("--budget-tokens", type=int, default=None, help="replace the token budget")
    p.add_argument("--budget-calls", type=int, default=None, help="replace the call budget")
    p.add_argument("--json", action="store_true", help="one JSON object per line on stdout")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="show a progress bar")
    return p


def run(args: argparse.Namespace) -> int:
    from .._sync import run_sync
    from ..checkpoint import read_json
    from ..train import SPEC, resume
    from .optimize import execute, json_log, report, text_log

    spec_path = Path(args.run_dir) / SPEC
    if not spec_path.exists():
        print(f"textopt resume: {args.run_dir} is not a run directory (no {SPEC}); make one with "
              "`textopt optimize --out DIR`", file=sys.stderr)
        return 2
    spec = read_json(spec_path)
    if spec.get("kind") != "command":
        print(f"textopt resume: {args.run_dir} was made from Python; its code can't be rebuilt from disk. Resume it in "
              "Python: textopt.resume(run_dir, forward=..., loss=..., optimizer=..., train=..., val=...).fit()", file=sys.stderr)
        return 2
    overrides: dict[str, Any] = {}
    for name in ("steps", "budget_tokens", "budget_calls"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    bar = False if args.json else (args.progress if args.progress is not None else sys.stderr.isatty())
    trainer = resume(args.run_dir, log=json_log if args.json else (None if bar else text_log), progress=bar, **overrides)
    if not args.json:
        print(f"resuming {args.run_dir} after step {trainer.step} of {trainer.total_steps}", file=sys.stderr)
    report(run_sync(execute(trainer)), args.json)
    return 0
