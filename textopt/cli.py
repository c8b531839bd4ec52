"""The `textopt` command. Each subcommand lives in textopt/commands/<name>.py with `add_parser` and `run`;
modules keep heavy imports inside `run`, so `textopt --help` stays fast."""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

COMMANDS = ("optimize", "resume", "report", "aegis")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textopt", description="Optimize the text inside LLM pipelines.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"textopt.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"textopt.commands.{name}":
                continue  # a command not built yet
            raise
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
