"""`textopt optimize`: optimize the system prompt of an LLM on a built-in task, and report before/after."""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("optimize", help="optimize a system prompt on a built-in task (default: object counting)")
    p.add_argument("--engine", default="local", help="engine spec: local, openai:<model>, litellm:<model> (default: local)")
    p.add_argument("--backward-engine", default=None, help="engine for feedback and updates (default: --engine)")
    p.add_argument("--base-url", default=None, help="base URL of an OpenAI-compatible server (with --engine openai:<model>)")
    p.add_argument("--task", default="object_counting", help="built-in task name or a .jsonl/.csv file")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=3, help="training examples per step")
    p.add_argument("--eval-size", type=int, default=10, help="held-out examples scored before and after")
    p.add_argument("--prompt", default="You are a helpful assistant. Answer the question.", help="initial system prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="do not read or write the disk cache")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p


def _engine(spec: str, args: argparse.Namespace) -> Any:
    from ..engines import get_engine

    options: dict[str, Any] = {}
    if args.no_cache:
        options["cache"] = False
    if args.base_url and spec.startswith("openai:"):
        options["base_url"] = args.base_url
    return get_engine(spec, **options)


async def _accuracy(llm: Any, examples: list[Any]) -> float:
    from ..datasets import exact_match

    outs = await asyncio.gather(*(llm.acall(_question(e)) for e in examples))
    return sum(exact_match(o.text, e.answer) for o, e in zip(outs, examples)) / len(examples)


def _question(e: Any) -> Any:
    from ..variable import Variable

    return Variable(e.question, role="question to answer")


async def optimize(args: argparse.Namespace) -> dict[str, Any]:
    import textopt as to
    from ..datasets import load

    engine = _engine(args.engine, args)
    backward_engine = _engine(args.backward_engine, args) if args.backward_engine else engine
    examples = load(args.task, n=args.steps * args.batch_size + args.eval_size, seed=args.seed)
    evals = examples[: args.eval_size]
    train = examples[args.eval_size :]
    rng = random.Random(args.seed)

    prompt = to.Variable(args.prompt, role="system prompt of an assistant that answers questions", requires_grad=True)
    llm = to.LLM(engine, system_prompt=prompt)
    opt = to.TGD([prompt], engine=backward_engine, constraints=["The prompt must ask for the final answer as a number."] if args.task in ("object_counting", "arithmetic") else ())
    start = time.perf_counter()
    with to.track_usage() as usage:
        before = await _accuracy(llm, evals)
        for step in range(1, args.steps + 1):
            batch = rng.sample(train, min(args.batch_size, len(train)))
            outs = await asyncio.gather(*(llm.acall(_question(e)) for e in batch))
            losses = await asyncio.gather(
                *(
                    to.TextLoss(
                        f"Question: {e.question}\nThe correct answer is {e.answer}. Say whether the response gives "
                        "exactly this answer and, if not, what went wrong in its reasoning. Be brief.",
                        engine=backward_engine,
                    ).acall(o)
                    for e, o in zip(batch, outs)
                )
            )
            opt.zero_grad()
            await to.sum(losses).abackward(backward_engine)
            await opt.astep()
            if not args.json:
                print(f"step {step}/{args.steps}: prompt now {prompt.value[:80]!r}", file=sys.stderr)
        after = await _accuracy(llm, evals)
    return {
        "task": args.task,
        "engine": args.engine,
        "accuracy_before": before,
        "accuracy_after": after,
        "eval_size": len(evals),
        "steps": args.steps,
        "failed_updates": len(opt.failures),
        "tokens": usage.to_dict(),
        "seconds": round(time.perf_counter() - start, 2),
        "final_prompt": prompt.value,
    }


def run(args: argparse.Namespace) -> int:
    from .._sync import run_sync

    result = run_sync(optimize(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    t = result["tokens"]
    print(f"task: {result['task']} on {result['engine']} ({result['eval_size']} held-out examples)")
    print(f"accuracy before: {result['accuracy_before']:.2f}")
    print(f"accuracy after:  {result['accuracy_after']:.2f}")
    print(
        f"tokens: {t['total_tokens']} ({t['prompt_tokens']} prompt + {t['completion_tokens']} completion) "
        f"in {t['calls']} calls, {t['cached_calls']} served by the cache; {result['seconds']} s"
    )
    print(f"failed updates: {result['failed_updates']}")
    print("final prompt:")
    print(result["final_prompt"])
    return 0
