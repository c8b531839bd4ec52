"""`textopt optimize`: optimize the system prompt of an LLM on a task, and report before/after.

A thin adapter over the "optimize" recipe (textopt.recipes): the arguments become the recipe's JSON
arguments (stored in DIR/spec.json: engine spec strings only, never a key), so `textopt resume DIR`
rebuilds the same run after a crash. The run directory is saved by default (runs/optimize-<time>).
"""
from __future__ import annotations

import argparse
from typing import Any

from ._common import add_common, callbacks, default_out


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from ..datasets import TASKS
    from ..recipes import OPTIMIZE_DEFAULTS as D
    from ..recipes import OPTIMIZERS

    p = sub.add_parser("optimize", help="optimize a system prompt on a built-in task (default: object counting)",
                       description="Optimize a system prompt on a task; score it before and after on held-out examples.")
    p.add_argument("--engine", default=D["engine"],
                   help="engine spec: local, local:<path.gguf>, openai:<model>, litellm:<model>, or fake (an offline "
                        "deterministic stand-in for trying the machinery; its answers are noise) (default: local)")
    p.add_argument("--backward-engine", default=None, help="engine for feedback and updates (default: --engine)")
    p.add_argument("--base-url", default=None, help="base URL of an OpenAI-compatible server (with --engine openai:<model>)")
    p.add_argument("--task", default=D["task"],
                   help=f"built-in task ({', '.join(TASKS)}) or a .jsonl/.csv file with question and answer columns "
                        f"(default: {D['task']})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=D["optimizer"], help="how updates are made (default: tgd)")
    p.add_argument("--steps", type=int, default=D["steps"], help=f"optimizer steps (default: {D['steps']})")
    p.add_argument("--batch-size", type=int, default=D["batch_size"], help=f"training examples per step (default: {D['batch_size']})")
    p.add_argument("--eval-size", type=int, default=D["eval_size"],
                   help=f"held-out test examples scored before and after (default: {D['eval_size']})")
    p.add_argument("--val-size", type=int, default=D["val_size"], help="validation examples scored after every step; 0 "
                   f"turns validation (and revert-if-worse) off (default: {D['val_size']})")
    p.add_argument("--train-size", type=int, default=None,
                   help="training examples drawn from the task (default: steps * batch-size)")
    p.add_argument("--prompt", default=D["prompt"], help="initial system prompt")
    p.add_argument("--seed", type=int, default=D["seed"])
    p.add_argument("--max-tokens", type=int, default=D["max_tokens"],
                   help=f"cap on each answer of the optimized LLM (default: {D['max_tokens']})")
    p.add_argument("--concurrency", type=int, default=D["concurrency"], help="forward passes in flight per batch (default: 8)")
    p.add_argument("--budget-tokens", type=int, default=None, help="stop cleanly once this many paid tokens are spent")
    p.add_argument("--budget-calls", type=int, default=None, help="stop cleanly once this many paid calls are made")
    p.add_argument("--budget-usd", type=float, default=None, help="stop cleanly once this many dollars are spent")
    p.add_argument("--budget-metric-calls", type=int, default=None, help="--optimizer search: stop after this many "
                   "scored examples (default: (steps + 1) * (val-size + 2 * batch-size))")
    p.add_argument("--patience", type=int, default=None, help="stop after this many steps without a validation gain")
    p.add_argument("--no-keep-best", dest="keep_best", action="store_false",
                   help="keep every update even when validation gets worse")
    p.add_argument("--latency", type=float, default=0.0, help="seconds per call of the fake engine (for tests)")
    p.add_argument("--out", default=None, help="run directory (default: runs/optimize-<time>); every step is "
                   "checkpointed there: continue with `textopt resume DIR`, summarize with `textopt report DIR`")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the disk cache")
    add_common(p, json_help="machine mode: one JSON object per line on stdout (one per event, then the result)")
    return p


def print_result(result: dict[str, Any], as_json: bool) -> None:
    """The end of an optimize run: the result line in --json mode (already printed as an event), else text."""
    if as_json:
        return
    t = result["tokens"]
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"task: {result['task']} on {result['engine']} with {result.get('optimizer', 'tgd')} "
          f"({result['eval_size']} held-out examples)")
    ci = lambda c: f" (95% CI {c[0]:.2f}-{c[1]:.2f})" if c else ""  # noqa: E731
    print(f"accuracy before: {f(result['accuracy_before'])}{ci(result.get('ci95_before'))}")
    print(f"accuracy after:  {f(result['accuracy_after'])}{ci(result.get('ci95_after'))}")
    if "pareto" in result:
        print(f"search: {result['steps']} iteration(s) ({result['stopped']}), {result['candidates']} candidate(s), "
              f"Pareto front {result['pareto']}, best #{result['best_id']} (val {f(result['best_val'])}), "
              f"{result['metric_calls']} metric calls")
    else:
        print(f"steps: {result['steps']} ({result['stopped']}); rejected by validation: {result['rejected_steps'] or 'none'}")
    cost = result.get("run_usage", {}).get("cost_usd")
    print(f"tokens: {t['total_tokens']} ({t['prompt_tokens']} prompt + {t['completion_tokens']} completion) "
          f"in {t['calls']} calls, {t['cached_calls']} served by the cache; {result['seconds']} s"
          + (f"; ${cost:.4f}" if cost else ""))
    print(f"failed updates: {result['failed_updates']}" + (f" (last: {result['failures'][-1]})" if result.get("failures") else ""))
    print("final prompt:")
    print(result["final_prompt"])
    if result.get("run_dir"):
        print(f"run directory: {result['run_dir']} (report: textopt report {result['run_dir']})")


def run(args: argparse.Namespace) -> int:
    from ..recipes import OPTIMIZE_DEFAULTS, RunSpec, build

    out = args.out or default_out("optimize")
    spec = RunSpec("optimize", {k: getattr(args, k) for k in OPTIMIZE_DEFAULTS},
                   kind="search" if args.optimizer == "search" else "trainer")
    job = build(spec, run_dir=out, callbacks=callbacks(args), progress=False)
    args.resume_hint = f"textopt resume {out}"
    print_result(job.run(), args.json)
    return 0
