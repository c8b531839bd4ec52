"""`textopt optimize`: optimize a prompt on a task, and report before/after on held-out examples.

The defaults are the README's main job: candidate search (`to.Search`) for a better instruction template
on the `sentiment` task with the embedded model, starting from a weak template, scored on held-out test
examples before and after with 95% intervals (and the paired interval of the gain).

`--task humaneval` is another job (the "humaneval" recipe, textopt.recipes.humaneval_job): each problem's code is the
Variable, optimized from its unit tests' report within `--updates` update calls; pass@1 before and after.

A thin adapter over the "optimize" recipe (textopt.recipes): the arguments become the recipe's JSON
arguments (stored in DIR/spec.json: engine spec strings only, never a key), so `textopt resume DIR`
rebuilds the same run after a crash. The run directory is saved by default (runs/optimize-<time>).
"""
from __future__ import annotations

import argparse
import sys
from typing import Any

from ..datasets import TASKS
from ..engines.pricing import format_cost
from ..recipes import OPTIMIZERS, OPTIMIZE_DEFAULTS, OPTIMIZE_DEFAULTS as D, SIZES, RunSpec, build
from ..recipes.humaneval_job import CODE_DEFAULTS, CODE_DEFAULTS as C, summary_text
from ._common import add_common, callbacks, default_out, time_split_line


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("optimize", help="optimize a prompt on a built-in task (default: sentiment, with search)",
                       description="Optimize a prompt on a task; score it before and after on held-out examples. "
                       "Label tasks (sentiment, categories) train an instruction template rendered around each input "
                       "in the user turn; the other tasks train a system prompt.")
    p.add_argument("--engine", default=None,
                   help="engine spec: local, local:<name|path.gguf>, openai:<model>, litellm:<model>, or fake (an offline "
                        "deterministic stand-in for trying the machinery; its answers are noise) (default: local; "
                        f"with --task humaneval {C['engine']}, the coder model)")
    p.add_argument("--backward-engine", default=None, help="engine for feedback and updates (default: --engine; with --engine local, the 1.5B reflection model local:reflect when installed)")
    p.add_argument("--base-url", default=None, help="base URL of an OpenAI-compatible server (with --engine openai:<model>)")
    p.add_argument("--task", default=D["task"],
                   help=f"built-in task ({', '.join(TASKS)}), a .jsonl/.csv file with question and answer columns, "
                        f"or humaneval: code, not a prompt (needs pip install 'textopt[code]') (default: {D['task']})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help=f"search (a pool of candidates, TGD reflection), or tgd / optoprime under the Trainer "
                        f"(default: {D['optimizer']}). With --task humaneval (default: {C['optimizer']}): tgd or optoprime "
                        "rewrite a failing problem's code from its test report, up to --updates times; search keeps the "
                        "best version so far (most checks passed; a worse one is dropped) and proposes from it, with "
                        "--proposer writing the proposals (a keep-best search, not textopt.search.Search)")
    label, other = SIZES["label"], SIZES["other"]
    sized = lambda k: f"default: {label[k]} for a label task with search, else {other[k]}"  # noqa: E731
    p.add_argument("--steps", type=int, default=None, help=f"optimizer steps; with search, mutations' worth of budget ({sized('steps')})")
    p.add_argument("--batch-size", type=int, default=None, help=f"training examples per step or minibatch ({sized('batch_size')})")
    p.add_argument("--eval-size", type=int, default=None,
                   help=f"held-out test examples scored before and after ({sized('eval_size')})")
    p.add_argument("--val-size", type=int, default=None, help="validation examples scored for every candidate or after "
                   f"every step; 0 turns validation off for tgd/optoprime ({sized('val_size')})")
    p.add_argument("--train-size", type=int, default=None,
                   help="training examples drawn from the task (default: steps * batch-size)")
    p.add_argument("--prompt", default=None, help="initial prompt: for a label task an instruction template with {input} "
                   "where the text goes (default: a weak one, e.g. '{input}\\nIs this positive or negative?'); "
                   "else a system prompt")
    p.add_argument("--seed", type=int, default=D["seed"])
    p.add_argument("--max-tokens", type=int, default=None,
                   help=f"cap on each answer of the optimized LLM (default: {label['max_tokens']} for a label task, "
                        f"else {other['max_tokens']})")
    p.add_argument("--update-tokens", type=int, default=None,
                   help=f"cap on each reply of the optimizer's update call (default: {D['update_tokens']}; "
                        f"{C['update_tokens']} with --task humaneval)")
    p.add_argument("--proposer", choices=("tgd", "optoprime"), default=D["proposer"],
                   help="--optimizer search: what writes each proposal, TGD (feedback, then an update) or OptoPrime "
                        "(one call that sees the calls and their feedback) (default: tgd)")
    p.add_argument("--update-format", choices=("json", "text"), default=None,
                   help="TGD's update reply: json (reasoning and the new value, under the engine's JSON grammar) or "
                        "text (the new value alone, plain text; no grammar for a small model to fight) (default: "
                        f"{D['update_format']}; {C['update_format']} with --task humaneval)")
    p.add_argument("--concurrency", type=int, default=None,
                   help=f"forward passes in flight per batch (default: {D['concurrency']})")
    p.add_argument("--budget-tokens", type=int, default=None, help="stop cleanly once this many paid tokens are spent")
    p.add_argument("--budget-calls", type=int, default=None, help="stop cleanly once this many paid calls are made")
    p.add_argument("--budget-usd", type=float, default=None, help="stop cleanly once this many dollars are spent")
    p.add_argument("--budget-metric-calls", type=int, default=None, help="--optimizer search: stop after this many "
                   "scored examples (default: (steps + 1) * (val-size + 2 * batch-size))")
    p.add_argument("--patience", type=int, default=None, help="stop after this many steps without a validation gain")
    p.add_argument("--no-keep-best", dest="keep_best", action="store_false",
                   help="keep every update even when validation gets worse")
    code = p.add_argument_group("--task humaneval (code)")
    code.add_argument("--updates", type=int, default=None,
                      help=f"update calls (optimizer steps) per failing problem (default: {C['updates']})")
    p.add_argument("--samples", type=int, default=None,
                   help="proposals drawn from one piece of feedback, the first as usual and the others sampled, each "
                        "under a different seed; the best one on the same examples goes on. --optimizer search: per "
                        "mutation (default 1). --task humaneval: per round of test feedback, each counting against "
                        f"--updates (default: {C['samples']})")
    code.add_argument("--problems", type=int, default=None,
                      help="how many problems: a sample seeded by --seed, in HumanEval's order (default: 10)")
    code.add_argument("--ids", default=None, help="exactly these problems, e.g. HumanEval/0,HumanEval/2 (or 0,2)")
    code.add_argument("--timeout", type=float, default=None,
                      help=f"seconds one run of a problem's tests may take in the sandbox (default: {C['timeout']:g})")
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
    if result.get("task") == "humaneval":
        print(summary_text(result))
        return
    t = result["tokens"]
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"task: {result['task']} on {result['engine']} with {result.get('optimizer', 'tgd')} "
          f"({result['eval_size']} held-out examples)")
    if result.get("backward_engine") and result["backward_engine"] != result["engine"]:
        print(f"feedback and proposals by: {result['backward_engine']}")
    ci = lambda c: f" (95% CI {c[0]:.2f}-{c[1]:.2f})" if c else ""  # noqa: E731
    print(f"accuracy before: {f(result['accuracy_before'])}{ci(result.get('ci95_before'))}")
    print(f"accuracy after:  {f(result['accuracy_after'])}{ci(result.get('ci95_after'))}")
    if result.get("gain") is not None and result.get("ci95_gain"):
        lo, hi = result["ci95_gain"]
        verdict = ("the interval excludes 0: a real gain" if lo > 0 else "the interval excludes 0: a real loss" if hi < 0
                   else "the interval includes 0: not a clear change")
        print(f"gain: {result['gain']:+.2f} (paired 95% CI {lo:+.2f} to {hi:+.2f}; {verdict})")
    if "pareto" in result:
        print(f"search: {result['steps']} iteration(s) ({result['stopped']}), {result['candidates']} candidate(s), "
              f"Pareto front {result['pareto']}, best #{result['best_id']} (val {f(result['best_val'])}), "
              f"{result['metric_calls']} metric calls")
    else:
        print(f"steps: {result['steps']} ({result['stopped']}); rejected by validation: {result['rejected_steps'] or 'none'}")
    run_usage = result.get("run_usage", {})
    cost, known = run_usage.get("cost_usd"), run_usage.get("cost_known", True) is not False
    print(f"tokens: {t['total_tokens']} ({t['prompt_tokens']} prompt + {t['completion_tokens']} completion) "
          f"in {t['calls']} calls, {t['cached_calls']} served by the cache; {result['seconds']} s"
          + (f"; {format_cost(cost, known)}" if cost or not known else ""))
    by_engine = result.get("tokens_by_engine") or {}
    if len(by_engine) > 1:
        print("tokens per model: " + "; ".join(f"{name} {u['total_tokens']} in {u['calls']} calls"
                                              for name, u in by_engine.items()))
    if time_split_line(result.get("time_split")):
        print(time_split_line(result.get("time_split")))
    print(f"failed updates: {result['failed_updates']}" + (f" (last: {result['failures'][-1]})" if result.get("failures") else ""))
    if result.get("initial_prompt") is not None and result["initial_prompt"] != result["final_prompt"]:
        print("initial prompt:")
        print(result["initial_prompt"])
    print("final prompt:" if result.get("initial_prompt") != result["final_prompt"] else "final prompt: (the initial one, unchanged)")
    print(result["final_prompt"])
    if result.get("run_dir"):
        print(f"run directory: {result['run_dir']} (report: textopt report {result['run_dir']})")


#: Flags of the prompt jobs that --task humaneval has no use for, and the flags only it takes.
PROMPT_ONLY = ("steps", "batch_size", "eval_size", "val_size", "train_size", "prompt", "patience",
               "budget_metric_calls", "concurrency")
CODE_ONLY = ("updates", "problems", "ids", "timeout")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def make_spec(args: argparse.Namespace) -> Any:
    """The recipe and JSON arguments of this command line; a flag that doesn't fit the task is one line."""
    if args.task == "humaneval":
        given = [flag(k) for k in PROMPT_ONLY if getattr(args, k) is not None] + ([] if args.keep_best else ["--no-keep-best"])
        if given:
            raise ValueError(f"{given[0]} does not apply to --task humaneval: each problem's code is optimized on its "
                             "own tests with at most --updates update calls (pick problems with --problems N or --ids)")
        return RunSpec("humaneval", {k: getattr(args, k) for k in CODE_DEFAULTS}, kind="code")
    given = [flag(k) for k in CODE_ONLY if getattr(args, k) is not None]
    if given:
        raise ValueError(f"{given[0]} is for --task humaneval (code); with --task {args.task} use --steps, "
                         "--eval-size and the other prompt options")
    return RunSpec("optimize", {k: getattr(args, k) for k in OPTIMIZE_DEFAULTS},
                   kind="search" if (args.optimizer or OPTIMIZE_DEFAULTS["optimizer"]) == "search" else "trainer")


def run(args: argparse.Namespace) -> int:
    out = args.out or default_out("optimize")
    spec = make_spec(args)
    job = build(spec, run_dir=out, callbacks=callbacks(args), progress=False)  # every argument checked here
    job.ready()  # a missing key, a dead server, an unknown model: one line now, nothing written or spent
    job.prepare()  # the run directory and spec.json exist from here on: `textopt resume` works whenever it stops
    args.run_out = out
    if not args.json:
        print(f"textopt optimize: run directory {out} (later: textopt report {out})", file=sys.stderr, flush=True)
    print_result(job.fit().summary, args.json)
    return 0
