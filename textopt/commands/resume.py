"""`textopt resume DIR`: continue a run made by a textopt command (optimize, aegis) from its last completed
step. Everything is rebuilt from DIR/spec.json through the recipe registry; calls that were already made
are served by the disk cache, so the resumed run ends where an uninterrupted one would, without paying twice."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any

from ..recipes import RunSpec, resume
from ..run import has_run, read_spec
from ._common import add_common, callbacks

#: Recipes whose results a command of another name prints (the command module that made the run).
PRINTED_BY = {"humaneval": "optimize"}


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("resume", help="continue a run directory made by `textopt optimize` or `textopt aegis`")
    p.add_argument("run_dir", help="the run directory")
    p.add_argument("--steps", type=int, default=None, help="change the total number of steps of an optimize run "
                   "(a --task humaneval run has no steps: it goes on with its next problem)")
    p.add_argument("--rounds", type=int, default=None, help="change the number of rounds of an aegis run")
    p.add_argument("--budget-tokens", type=int, default=None, help="replace the token budget")
    p.add_argument("--budget-calls", type=int, default=None, help="replace the call budget")
    p.add_argument("--budget-usd", type=float, default=None, help="replace the dollar budget")
    p.add_argument("--base-url", default=None, help="the server's URL again (spec.json keeps it without user:password)")
    add_common(p)
    return p


def run(args: argparse.Namespace) -> int:
    spec = RunSpec.from_dict(read_spec(args.run_dir))  # one-line errors: not a run dir / made from Python
    overrides = {k: getattr(args, k) for k in ("steps", "rounds", "budget_tokens", "budget_calls", "budget_usd", "base_url")
                 if getattr(args, k) is not None}
    job = resume(args.run_dir, callbacks=callbacks(args), progress=False, **overrides)
    job.ready()
    job.prepare()
    args.run_out = args.run_dir
    note = job.progress_note if has_run(args.run_dir) else f"{args.run_dir} stopped before its first step: starting it"
    if not args.json and note:
        print(note, file=sys.stderr, flush=True)
    result = job.fit().summary
    command = PRINTED_BY.get(spec.recipe, spec.recipe)
    importlib.import_module(f"textopt.commands.{command}").print_result(result, args.json)
    return 0
