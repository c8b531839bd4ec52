"""The `textopt` command. Each subcommand lives in textopt/commands/<name>.py with `add_parser` and `run`;
modules keep heavy imports inside `run`, so `textopt --help` stays fast.

Every error is one line that says what to do, with a non-zero exit (2: arguments, files or setup;
1: a failure while running); `--debug` shows the traceback instead. Ctrl-C stops after the call in
flight and prints the command that continues the run.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

COMMANDS = ("optimize", "resume", "report", "aegis")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textopt", description="Optimize the text inside LLM pipelines.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"textopt.commands.{name}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .commands._common import one_line, user_error

    args = build_parser().parse_args(argv)
    args.resume_hint = None  # a command that owns a run directory sets this before it spends anything
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        hint = f"; the last completed step is saved: continue with `{args.resume_hint}`" if args.resume_hint else ""
        print(f"textopt {args.command}: interrupted{hint}", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - every error is one line unless --debug
        if getattr(args, "debug", False):
            raise
        print(f"textopt {args.command}: {one_line(exc)} (--debug shows the traceback)", file=sys.stderr, flush=True)
        return 2 if user_error(exc) else 1


if __name__ == "__main__":
    raise SystemExit(main())
