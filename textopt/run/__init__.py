"""The run layer: one piece under Trainer, Search and the AEGIS loop that owns a run directory.

- `rundir`: `Run` (the lock, spec.json, usage, budgets, log.jsonl, atomic checkpoints, evals/, plots) and
  the functions that read a run directory back (`read_checkpoint`, `read_spec`, `read_log`, `has_run`);
- `files`: the names of a run directory's files and JSON scrubbed of secrets;
- `budgets`: `Budgets` and the usage columns of a step row;
- `callbacks`: `Callback`, `JsonLines`, `Progress`, `MLflowCallback`;
- `history`: a Trainer run's `History`, `text_diff` and `plot_history`.
- `protocol`: `Fittable` and `FitResult`, the one run protocol (`fit()` / `afit()` -> `.best`, `.history`, `.run_dir`).

Run errors (`RunError`, `RunLocked`, `CheckpointError`, `AuthenticationFailed`) live in `textopt.errors`.
"""
from __future__ import annotations

from ..errors import AuthenticationFailed, CheckpointError, RunError, RunLocked, is_auth_error
from .budgets import Budgets, usage_columns
from .callbacks import Callback, FunctionCallback, JsonLines, MLflowCallback, Progress, as_callback, describe_row
from .files import BACKUP, CHECKPOINT, EVALS, FORMAT, LOCK, LOG, SPEC, USAGE_KEYS, VERSION, scrub, scrub_text, scrubbed_json
from .history import History, plot_history, text_diff
from .protocol import FitResult, Fittable
from .rundir import Run, check_not_busy, has_run, lock_run_dir, read_checkpoint, read_log, read_spec

__all__ = [
    "Run", "Fittable", "FitResult", "Budgets", "Callback", "FunctionCallback", "JsonLines", "MLflowCallback", "Progress", "History",
    "RunError", "RunLocked", "CheckpointError", "AuthenticationFailed",
    "read_checkpoint", "read_spec", "read_log", "has_run", "check_not_busy", "lock_run_dir",
    "usage_columns", "describe_row", "as_callback", "is_auth_error", "text_diff", "plot_history",
    "scrub", "scrub_text", "scrubbed_json",
    "BACKUP", "CHECKPOINT", "EVALS", "FORMAT", "LOCK", "LOG", "SPEC", "USAGE_KEYS", "VERSION",
]
