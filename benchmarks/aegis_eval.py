"""AEGIS on real data: TPR/TNR of the initial and the co-evolved defense prompt on a held-out part of bastioncorpus.

    python benchmarks/aegis_eval.py --engine local --out runs/aegis_eval

The corpus is split (stratified, seeded) into train and held-out. The defender co-evolves against the
attacker on clean essays plus a sample of the corpus train part; both defense prompts are then scored on
the held-out part. Prints a markdown table for BENCHMARKS.md and writes everything to --out.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path


def stratified_sample(examples, n, seed):
    """n examples keeping the label mix (seeded)."""
    if n >= len(examples):
        return list(examples)
    rng = random.Random(seed)
    out = []
    for label in ("malicious", "benign"):
        group = [e for e in examples if e.label == label]
        rng.shuffle(group)
        out += group[: round(n * len(group) / len(examples))]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="local")
    p.add_argument("--optimizer-engine", default=None)
    p.add_argument("--held-out", type=float, default=0.5, help="fraction of the corpus held out")
    p.add_argument("--eval-size", type=int, default=40, help="held-out examples scored (stratified sample; 0 = all)")
    p.add_argument("--train-examples", type=int, default=8, help="corpus train examples mixed into the defender's data")
    p.add_argument("--essays", type=int, default=4, help="clean essays used (half train, half validation)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--iterations", type=int, default=1)
    p.add_argument("--pool-size", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=200, help="reply cap of the local engine (updates, gradients)")
    p.add_argument("--threads", type=int, default=1, help="llama.cpp threads (1 avoids spin-wait stalls on a busy machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/aegis_eval")
    args = p.parse_args(argv)

    from textopt import aegis
    from textopt.engines import get_engine, track_usage

    opts = {"max_tokens": args.max_tokens, "n_threads": args.threads} if args.engine.startswith("local") else {}
    engine = get_engine(args.engine, **opts)
    opt_engine = get_engine(args.optimizer_engine) if args.optimizer_engine else engine
    corpus = aegis.load_corpus("bastion")
    train, held = aegis.split(corpus, args.held_out, seed=args.seed)
    held = stratified_sample(held, args.eval_size, args.seed) if args.eval_size else held
    extra = stratified_sample(train, args.train_examples, args.seed) if args.train_examples else []
    essays = list(aegis.ESSAYS)[: args.essays]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    log(f"corpus {len(corpus)}: train {len(train)}, held-out scored {len(held)}; essays {len(essays)}, extra train examples {len(extra)}")
    t0 = time.perf_counter()
    with track_usage() as u_before:
        before = aegis.evaluate_detector(aegis.DEFAULT_DEFENSE, held, engine=engine)
    t_before = time.perf_counter() - t0
    log(f"initial defense: {before!r} in {t_before:.0f} s")

    t0 = time.perf_counter()
    result = aegis.coevolve(list(aegis.DEFAULT_ATTACKS), aegis.DEFAULT_DEFENSE, benign=essays, engine=engine,
                            optimizer_engine=opt_engine, rounds=args.rounds, iterations=args.iterations,
                            pool_size=args.pool_size, seed=args.seed, out=str(out / "coevolve"), examples=extra,
                            gradient_tokens=min(args.max_tokens, 300))
    t_evolve = time.perf_counter() - t0
    log(f"co-evolution: {result.rounds_run} rounds in {t_evolve:.0f} s, tokens {result.tokens}; "
        f"defense changed: {result.defense_prompt != aegis.DEFAULT_DEFENSE}")

    t0 = time.perf_counter()
    with track_usage() as u_after:
        after = aegis.evaluate_detector(result.defense_prompt, held, engine=engine)
    t_after = time.perf_counter() - t0
    log(f"evolved defense: {after!r} in {t_after:.0f} s")

    summary = {
        "engine": args.engine, "seed": args.seed, "held_out_scored": len(held), "corpus": len(corpus),
        "config": vars(args),
        "initial": {**before.summary(), "tokens": u_before.to_dict(), "seconds": round(t_before, 1)},
        "evolved": {**after.summary(), "tokens": u_after.to_dict(), "seconds": round(t_after, 1)},
        "coevolve": {"tokens": result.tokens, "seconds": round(t_evolve, 1), "rounds_run": result.rounds_run,
                     "stopped_early": result.stopped_early, "failed_updates": len(result.failures),
                     "history": [{k: v for k, v in h.items() if not k.endswith("_prompt")} for h in result.history]},
        "initial_defense_prompt": aegis.DEFAULT_DEFENSE, "evolved_defense_prompt": result.defense_prompt,
        "best_attack": result.best_attack,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    b, a = summary["initial"], summary["evolved"]
    print(f"| defense prompt | TPR | TNR | precision | F1 | unparsed | tokens | time (s) |")
    print(f"|---|---|---|---|---|---|---|---|")
    for name, r in (("initial", b), ("evolved", a)):
        print(f"| {name} | {r['tpr']:.3f} | {r['tnr']:.3f} | {r['precision']:.3f} | {r['f1']:.3f} | {r['unparsed']} | "
              f"{r['tokens']['total_tokens']} | {r['seconds']} |")
    print(f"co-evolution: {result.tokens['total_tokens']} tokens in {result.tokens['calls']} calls, {t_evolve:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
