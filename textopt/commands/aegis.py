"""`textopt aegis`: co-evolve an injection attacker and a detector prompt; write result, history and a plot."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("aegis", help="co-evolve prompt-injection attacks and a detector prompt (AEGIS)")
    p.add_argument("--engine", default="local", help="engine for the detector and grader: local, openai:<model>, litellm:<model>")
    p.add_argument("--optimizer-engine", default=None, help="engine for gradients and updates (default: --engine)")
    p.add_argument("--base-url", default=None, help="base URL of an OpenAI-compatible server (with openai:<model>)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--pool-size", type=int, default=4)
    p.add_argument("--essays", type=int, default=6, help="built-in clean essays used (half train, half validation)")
    p.add_argument("--corpus-examples", type=int, default=0,
                   help="labeled bastioncorpus texts mixed into the defender's train/validation data (0 = none)")
    p.add_argument("--attack", action="append", default=None, help="initial injection text (repeat for several; default: built-in)")
    p.add_argument("--defense", default=None, help="initial detector instructions (default: built-in)")
    p.add_argument("--max-tokens", type=int, default=None, help="reply cap of the engines (default: the engine's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/aegis", help="folder for result.json, history.json, history.csv, curves.png")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the disk cache")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    return p


def _engine(spec: str, args: argparse.Namespace) -> Any:
    from ..engines import get_engine

    options: dict[str, Any] = {}
    if args.no_cache:
        options["cache"] = False
    if args.max_tokens:
        options["max_tokens"] = args.max_tokens
    if args.base_url and spec.startswith("openai:"):
        options["base_url"] = args.base_url
    return get_engine(spec, **options)


def run(args: argparse.Namespace) -> int:
    from .. import aegis

    if args.essays < 2 or args.essays > len(aegis.ESSAYS):
        print(f"--essays must be between 2 and {len(aegis.ESSAYS)}, got {args.essays}", file=sys.stderr)
        return 2
    engine = _engine(args.engine, args)
    opt_engine = _engine(args.optimizer_engine, args) if args.optimizer_engine else engine
    examples: list[Any] = []
    if args.corpus_examples:
        import random

        corpus = aegis.load_corpus("bastion")
        examples = random.Random(args.seed).sample(corpus, min(args.corpus_examples, len(corpus)))
    result = aegis.coevolve(
        args.attack or list(aegis.DEFAULT_ATTACKS), args.defense or aegis.DEFAULT_DEFENSE,
        benign=list(aegis.ESSAYS)[: args.essays], engine=engine, optimizer_engine=opt_engine, rounds=args.rounds,
        iterations=args.iterations, pool_size=args.pool_size, seed=args.seed, out=args.out, examples=examples,
    )
    if args.json:
        print(result.to_json())
        return 0
    print(f"{'round':>5} {'side':<8} {'tpr':>5} {'tnr':>5} {'asr':>5} {'gain':>6} {'tokens':>7}")
    for h in result.history:
        print(f"{h['round']:>5} {h['side']:<8} {h['tpr']:>5.2f} {h['tnr']:>5.2f} {h['asr']:>5.2f} {h['score_gain']:>6.2f} {h['tokens']:>7}")
    t = result.tokens
    print(f"rounds run: {result.rounds_run}{' (stopped early: neither side improved)' if result.stopped_early else ''}; "
          f"{t['total_tokens']} tokens in {t['calls']} calls ({t['cached_calls']} cached); {result.seconds} s; "
          f"failed updates: {len(result.failures)}; error cases: {len(result.errors)}")
    print("defense prompt:")
    print(result.defense_prompt)
    print("best attack:")
    print(result.best_attack)
    print(f"written to {args.out}/ (result.json, history.json, history.csv, curves.png)")
    return 0
