"""`textopt optimize`: optimize the system prompt of an LLM on a task with the Trainer, and report before/after.

With `--out DIR` every step is checkpointed there and `spec.json` records these arguments (engine spec
strings only, never a key), so `textopt resume DIR` rebuilds the same run after a crash.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

#: Arguments that define a run (stored in spec.json and used again by `textopt resume`).
SPEC_KEYS = (
    "engine", "backward_engine", "base_url", "task", "steps", "batch_size", "eval_size", "val_size", "prompt",
    "seed", "no_cache", "concurrency", "budget_tokens", "budget_calls", "patience", "keep_best", "latency",
    "max_tokens",
)
DEFAULT_PROMPT = "You are a helpful assistant. Answer the question."


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("optimize", help="optimize a system prompt on a built-in task (default: object counting)")
    p.add_argument("--engine", default="local",
                   help="engine spec: local, openai:<model>, litellm:<model>, or scripted (a fake, deterministic model "
                        "for trying the machinery offline; its answers are noise) (default: local)")
    p.add_argument("--backward-engine", default=None, help="engine for feedback and updates (default: --engine)")
    p.add_argument("--base-url", default=None, help="base URL of an OpenAI-compatible server (with --engine openai:<model>)")
    p.add_argument("--task", default="object_counting", help="built-in task name or a .jsonl/.csv file")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps (default: 2)")
    p.add_argument("--batch-size", type=int, default=2, help="training examples per step (default: 2)")
    p.add_argument("--eval-size", type=int, default=6, help="held-out test examples scored before and after (default: 6)")
    p.add_argument("--val-size", type=int, default=3, help="validation examples scored after every step; 0 turns "
                   "validation (and revert-if-worse) off (default: 3)")
    p.add_argument("--prompt", default=DEFAULT_PROMPT, help="initial system prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=160, help="cap on each answer of the optimized LLM (default: 160)")
    p.add_argument("--concurrency", type=int, default=8, help="forward passes in flight per batch (default: 8)")
    p.add_argument("--budget-tokens", type=int, default=None, help="stop cleanly once this many paid tokens are spent")
    p.add_argument("--budget-calls", type=int, default=None, help="stop cleanly once this many paid calls are made")
    p.add_argument("--patience", type=int, default=None, help="stop after this many steps without a validation gain")
    p.add_argument("--no-keep-best", dest="keep_best", action="store_false",
                   help="keep every update even when validation gets worse")
    p.add_argument("--latency", type=float, default=0.0, help="seconds per call of the scripted engine (for tests)")
    p.add_argument("--out", default=None, help="run directory: checkpoint every step there (resume with `textopt resume DIR`)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the disk cache")
    p.add_argument("--json", action="store_true", help="machine mode: one JSON object per line on stdout (one per step, "
                   "then the result)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: only on a terminal)")
    return p


# -- the scripted engine's fake model ---------------------------------------------------------------
def scripted_reply(messages: list[dict[str, str]]) -> str:
    """A deterministic stand-in for a model (same request, same reply), so that runs on `--engine scripted`
    can be killed, resumed and compared. Answers are a hash of the request: noise, not intelligence."""
    blob = json.dumps(messages, sort_keys=True)
    h = int(hashlib.sha256(blob.encode("utf-8")).hexdigest(), 16)
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    last = messages[-1]["content"]
    if '"new_value"' in system or '"new_value"' in last:
        users = "\n".join(x["content"] for x in messages if x["role"] == "user")
        m = re.search(r"<value>\s*(.*?)\s*</value>", users, re.S)
        current = m.group(1) if m else DEFAULT_PROMPT
        hints = ["Count each item once.", "Reply with a number.", "Think step by step.", "Check the category."]
        return json.dumps({"reasoning": "address the feedback", "new_value": f"{current} {hints[h % len(hints)]}"})
    if "<output>" in last or "<feedback>" in last:
        return ["Be precise about the category.", "State the final number clearly.", "Count more carefully."][h % 3]
    return f"The answer is {h % 6}."


def _engine(spec: str, args: argparse.Namespace) -> Any:
    from ..engines import get_engine

    options: dict[str, Any] = {}
    if args.no_cache:
        options["cache"] = False
    if args.base_url and spec.startswith("openai:"):
        options["base_url"] = args.base_url
    if spec.strip().lower() == "scripted":
        options.setdefault("cache", True)
        options.update(reply=scripted_reply, latency=args.latency)
    return get_engine(spec, **options)


def _spec(args: argparse.Namespace) -> dict[str, Any]:
    return {"kind": "command", "command": "optimize", "args": {k: getattr(args, k) for k in SPEC_KEYS}}


class Job:
    """The pieces of an optimize run, built from its arguments (the same way on first run and on resume)."""

    def __init__(self, args: argparse.Namespace) -> None:
        import textopt as to
        from ..datasets import load

        for name in ("steps", "batch_size", "eval_size", "val_size"):
            if getattr(args, name) < (1 if name == "batch_size" else 0):
                raise SystemExit(f"textopt optimize: --{name.replace('_', '-')} must be >= {1 if name == 'batch_size' else 0}")
        self.args = args
        self.engine = _engine(args.engine, args)
        self.backward_engine = _engine(args.backward_engine, args) if args.backward_engine else self.engine
        n_train = max(1, args.steps * args.batch_size)
        examples = load(args.task, n=args.eval_size + args.val_size + n_train, seed=args.seed)
        if len(examples) < args.eval_size + args.val_size + 1:
            raise SystemExit(f"textopt optimize: {args.task} has {len(examples)} examples, fewer than "
                             f"--eval-size {args.eval_size} + --val-size {args.val_size} + 1 for training")
        self.test = examples[: args.eval_size]
        self.val = examples[args.eval_size : args.eval_size + args.val_size]
        self.train = examples[args.eval_size + args.val_size :]
        self.prompt = to.Variable(args.prompt, role="system prompt of an assistant that answers questions",
                                  requires_grad=True, name="system_prompt")
        self.llm = to.LLM(self.engine, system_prompt=self.prompt, max_tokens=args.max_tokens or 160)
        numeric = args.task in ("object_counting", "arithmetic")
        self.optimizer = to.TGD([self.prompt], engine=self.backward_engine,
                                constraints=["The prompt must ask for the final answer as a number."] if numeric else ())

    async def forward(self, example: Any) -> Any:
        from ..variable import Variable

        return await self.llm.acall(Variable(example.question, role="question to answer"))

    async def loss(self, example: Any, output: Any) -> Any:
        from ..loss import TextLoss

        return await TextLoss(
            f"Question: {example.question}\nThe correct answer is {example.answer}. Say whether the response gives "
            "exactly this answer and, if not, what went wrong in its reasoning. Be brief.",
            engine=self.backward_engine,
            max_tokens=160,
        ).acall(output)


def build_trainer(spec: dict[str, Any], *, run_dir: str | Path | None = None, **overrides: Any) -> Any:
    """A Trainer for an optimize run described by `spec` (as stored in spec.json)."""
    from ..train import Trainer

    args = argparse.Namespace(**{**{k: None for k in SPEC_KEYS}, **spec["args"]})
    if args.keep_best is None:
        args.keep_best = True
    if args.latency is None:
        args.latency = 0.0
    if args.val_size is None:
        args.val_size = 0
    job = Job(args)
    options: dict[str, Any] = dict(
        train=job.train, val=job.val, batch_size=args.batch_size, concurrency=args.concurrency or 8, steps=args.steps,
        budget_tokens=args.budget_tokens, budget_calls=args.budget_calls, keep_best=args.keep_best,
        patience=args.patience, backward_engine=job.backward_engine, seed=args.seed, spec=spec, run_dir=run_dir,
    )
    options.update(overrides)
    trainer = Trainer(job.forward, job.loss, job.optimizer, **options)
    trainer.job = job  # type: ignore[attr-defined]
    return trainer


async def execute(trainer: Any) -> dict[str, Any]:
    """Score the initial prompt on the test set, train, score the final prompt; write result.json."""
    from ..checkpoint import atomic_write_json
    from ..engines.usage import track_usage

    job = trainer.job
    start = time.perf_counter()
    with track_usage() as usage:
        current = job.prompt.value
        job.prompt.set_value(trainer.initial[job.prompt.name])  # a resumed run scores the *initial* prompt (cache hits)
        before = await trainer.evaluate(job.test) if job.test else None
        job.prompt.set_value(current)
        history = await trainer.afit()
        after = await trainer.evaluate(job.test) if job.test else None
    rows = [r for r in history.rows if r["step"] > 0]
    result = {
        "task": job.args.task,
        "engine": job.args.engine,
        "accuracy_before": before,
        "accuracy_after": after,
        "eval_size": len(job.test),
        "val_size": len(job.val),
        "steps": len(rows),
        "rejected_steps": history.rejected,
        "best_val": history.best_val,
        "stopped": history.stopped,
        "failed_updates": len(job.optimizer.failures),
        "tokens": usage.to_dict(),
        "run_tokens": dict(trainer.totals),
        "seconds": round(time.perf_counter() - start, 2),
        "final_prompt": job.prompt.value,
        "run_dir": str(trainer.run_dir) if trainer.run_dir else None,
    }
    if trainer.run_dir is not None:
        atomic_write_json(trainer.run_dir / "result.json", result)
    return result


def json_log(event: dict[str, Any]) -> None:
    print(json.dumps(event, ensure_ascii=False), flush=True)


def text_log(event: dict[str, Any]) -> None:
    if event.get("event") == "step" and event["step"] > 0:
        f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        kept = "kept" if event["accepted"] else "REVERTED (validation got worse)"
        print(f"step {event['step']}: train {f(event['train'])}, val {f(event['val'])}, {kept}, "
              f"{event['tokens']} tokens", file=sys.stderr, flush=True)
    elif event.get("event") == "budget":
        print(event["message"], file=sys.stderr, flush=True)


def report(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        json_log({"event": "result", **result})
        return
    t = result["tokens"]
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"task: {result['task']} on {result['engine']} ({result['eval_size']} held-out examples)")
    print(f"accuracy before: {f(result['accuracy_before'])}")
    print(f"accuracy after:  {f(result['accuracy_after'])}")
    print(f"steps: {result['steps']} ({result['stopped']}); rejected by validation: {result['rejected_steps'] or 'none'}")
    print(
        f"tokens: {t['total_tokens']} ({t['prompt_tokens']} prompt + {t['completion_tokens']} completion) "
        f"in {t['calls']} calls, {t['cached_calls']} served by the cache; {result['seconds']} s"
    )
    print(f"failed updates: {result['failed_updates']}")
    if result.get("run_dir"):
        print(f"run directory: {result['run_dir']} (textopt report {result['run_dir']})")
    print("final prompt:")
    print(result["final_prompt"])


def run(args: argparse.Namespace) -> int:
    from .._sync import run_sync

    if args.out and (Path(args.out) / "checkpoint.json").exists():
        print(f"textopt optimize: {args.out} already holds a run; continue it with `textopt resume {args.out}` "
              "or pick another --out", file=sys.stderr)
        return 2
    bar = False if args.json else (args.progress if args.progress is not None else sys.stderr.isatty())
    trainer = build_trainer(_spec(args), run_dir=args.out, log=json_log if args.json else (None if bar else text_log),
                            progress=bar)
    result = run_sync(execute(trainer))
    report(result, args.json)
    return 0
