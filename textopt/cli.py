"""The `textopt` command. Each subcommand lives in textopt/commands/<name>.py with `add_parser` and `run`;
modules keep heavy imports inside `run`, so `textopt --help` stays fast.

Every error is one line that says what to do, with a non-zero exit (2: arguments, files or setup;
1: a failure while running); `--debug` shows the traceback instead. Ctrl-C stops after the call in
flight and prints the command that continues the run.
"""
from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import threading
from typing import Sequence

from .commands._common import interrupted_line, one_line, user_error

COMMANDS = ("optimize", "resume", "report", "aegis", "doctor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="textopt", description="Optimize the text inside LLM pipelines.")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module = importlib.import_module(f"textopt.commands.{name}")
        p = module.add_parser(sub)
        p.set_defaults(_run=module.run)
    return parser


#: Seconds between Ctrl-C and a hard exit when winding down takes longer (a model call that can't be cancelled).
EXIT_GRACE = 3.0


class _Interrupt:
    """Ctrl-C for a command: stop local model workers at once (`textopt.engines.local.abort_all`, where the
    local engine has one), raise KeyboardInterrupt as usual, and make sure the process is gone EXIT_GRACE s
    later even if a call in flight can't be cancelled (its thread would otherwise hold the exit). A second
    Ctrl-C exits at once."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.said, self.hit = args, False, False

    def line(self) -> str:
        return f"textopt {self.args.command}: {interrupted_line(getattr(self.args, 'run_out', None))}"

    def say(self) -> None:
        if not self.said:
            self.said = True
            print(self.line(), file=sys.stderr, flush=True)

    def handler(self, signum: int, frame: object) -> None:
        if self.hit:
            self._exit(os)
        self.hit = True
        local = sys.modules.get("textopt.engines.local")
        abort = getattr(local, "abort_all", None)
        if callable(abort):
            try:
                abort()
            except Exception:  # noqa: BLE001 - stopping must not fail on a worker that is already gone
                pass
        timer = threading.Timer(EXIT_GRACE, self._exit, (os,))
        timer.daemon = True
        timer.start()
        raise KeyboardInterrupt

    def _exit(self, os: object) -> None:
        try:
            self.say()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(130)  # type: ignore[attr-defined]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.run_out = None  # a command sets this once its run directory and spec.json exist
    interrupt = _Interrupt(args)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, interrupt.handler)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        interrupt.say()
        return 130
    except Exception as exc:  # noqa: BLE001 - every error is one line unless --debug
        if getattr(args, "debug", False):
            raise
        print(f"textopt {args.command}: {one_line(exc)} (--debug shows the traceback)", file=sys.stderr, flush=True)
        return 2 if user_error(exc) else 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


if __name__ == "__main__":
    raise SystemExit(main())
