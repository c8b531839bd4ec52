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

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))


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


def seed_prompt(value: str) -> tuple[str, str]:
    """--seed-defense: a prompt name of benchmarks/detector_spread.py (aegis-seed, bare, one-line, signs, ...)
    or the prompt's text itself."""
    from detector_spread import default_prompts

    known = dict(default_prompts())
    return (value, known[value]) if value in known else ("custom", value)


def detect_flags(defense: str, examples, engine) -> tuple[list, dict]:
    """The detector's flag per example (None: unparsed) and its report summary."""
    from textopt import aegis

    report = aegis.evaluate_detector(defense, examples, engine=engine)
    return [c.flagged for c in report.cases], report.summary()


def attack_evasion(attacks: list[str], defenses: dict[str, str], essays: list[str], engine, seed: int) -> list[dict]:
    """Per attack prompt and defense: the share of attacked essays the detector does NOT flag (detection-only
    ASR: the grader's score gain is left out), on essays co-evolution never saw."""
    from textopt import aegis

    scen = aegis.EssayGrading()
    rows = []
    for k, attack in enumerate(attacks):
        texts = [aegis.Example(text=scen.inject(e, attack, seed=seed), label="malicious", category="attack", id=f"a{k}e{i}")
                 for i, e in enumerate(essays)]
        row = {"attack": attack, "label": "evolved best" if k == 0 else f"pool/initial {k}"}
        for name, d in defenses.items():
            flags, _ = detect_flags(d, texts, engine)
            read = [f for f in flags if f is not None]
            row[name] = {"evaded": sum(not f for f in read), "readable": len(read),
                         "asr": round(sum(not f for f in read) / len(read), 4) if read else None}
        rows.append(row)
    return rows


def compare(dirs: list[str], reps: int, seed: int) -> int:
    """Paired comparison of the evolved detectors of several runs (same held-out texts): e.g. buffer on vs off."""
    from detector_spread import summarize

    runs = [json.loads((Path(d) / "summary.json").read_text(encoding="utf-8")) for d in dirs]
    ids = [r["held_out_ids"] for r in runs]
    if any(i != ids[0] for i in ids):
        raise SystemExit("the runs scored different held-out texts; compare runs with the same --seed/--eval-size")
    labels = runs[0]["held_out_labels"]
    sets = [runs[0]["initial"]["flags"]] + [r["evolved"]["flags"] for r in runs]
    names = ["seed (" + runs[0]["seed_defense"] + ")"] + [f"evolved, {d}" for d in dirs]
    for name, m in zip(names, summarize(labels, sets, reps, seed)):
        v = m["vs_first"]
        print(f"| {name} | {m['tpr']:.2f} | {m['tnr']:.2f} | {m['balanced_accuracy']:.2f} {m['balanced_accuracy_ci95']} | "
              f"{v['balanced_accuracy_diff']:+.2f} {v['ci95']} | {m['confusion']} |")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", default="local:reflect", help="a textopt engine spec (local, local:reflect, openai:<model>)")
    p.add_argument("--base-url", default=None, help="for openai:<model>: an OpenAI-compatible server")
    p.add_argument("--optimizer-engine", default=None, help="engine for gradients and updates (default: --engine)")
    p.add_argument("--seed-defense", default="aegis-seed",
                   help="the defense prompt co-evolution starts from: a prompt name of detector_spread.py "
                        "(aegis-seed, bare, one-line, signs, signs+benign) or the prompt's text")
    p.add_argument("--held-out", type=float, default=0.5, help="fraction of the corpus held out")
    p.add_argument("--eval-size", type=int, default=0, help="held-out examples scored (stratified sample; 0 = all)")
    p.add_argument("--train-examples", type=int, default=24, help="corpus train examples mixed into the defender's data (half train, half validation)")
    p.add_argument("--essays", type=int, default=4, help="clean essays used in co-evolution (half train, half validation); "
                                                         "the others score the attacks afterwards")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--iterations", type=int, default=2)
    p.add_argument("--pool-size", type=int, default=2)
    p.add_argument("--buffer-size", type=int, default=4, help="gradient buffer per route (0 = off: the ablation)")
    p.add_argument("--gradient-tokens", type=int, default=300)
    p.add_argument("--patience", type=int, default=2, help="stop after this many rounds in a row that improved neither side")
    p.add_argument("--explore-temperature", type=float, default=0.7, help="temperature of iterations after the first in a turn")
    p.add_argument("--no-quote-failures", dest="quote_failures", action="store_false",
                   help="the defender's gradients without its failing texts quoted (the ablation)")
    p.add_argument("--exemplars", type=int, default=0, help="labeled excerpts of missed training texts a defender "
                   "proposal adds per iteration (0 = off)")
    p.add_argument("--threads", type=int, default=2, help="llama.cpp threads for local engines")
    p.add_argument("--no-cache", action="store_true", help="ask the engine every time (default: textopt's disk cache)")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/aegis_eval")
    p.add_argument("--compare", nargs="+", metavar="DIR", help="only compare the evolved detectors of finished runs")
    args = p.parse_args(argv)
    if args.compare:
        return compare(args.compare, args.bootstrap, args.seed)

    from detector_spread import build_engine, load, summarize
    from textopt import aegis
    from textopt.engines import track_usage

    engine = build_engine(args)
    opt_engine = build_engine(argparse.Namespace(**{**vars(args), "engine": args.optimizer_engine})) if args.optimizer_engine else engine
    seed_name, seed_defense = seed_prompt(args.seed_defense)
    corpus = aegis.load_corpus("bastion")
    train, held = aegis.split(corpus, args.held_out, seed=args.seed)
    held = stratified_sample(held, args.eval_size, args.seed) if args.eval_size else held
    extra = stratified_sample(train, args.train_examples, args.seed) if args.train_examples else []
    essays = list(aegis.ESSAYS)[: args.essays]
    unseen_essays = list(aegis.ESSAYS)[args.essays:]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    load_start = load()

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}; {load()}", file=sys.stderr, flush=True)

    log(f"corpus {len(corpus)}: train {len(train)}, held-out scored {len(held)}; essays {len(essays)}, extra train "
        f"examples {len(extra)}; seed defense {seed_name!r}; buffer {args.buffer_size}; "
        f"quoted failures {'on' if args.quote_failures else 'off'}")
    t0 = time.perf_counter()
    with track_usage() as u_before:
        flags_before, before = detect_flags(seed_defense, held, engine)
    t_before = time.perf_counter() - t0
    log(f"seed defense on held-out: {before} in {t_before:.0f} s")

    def progress(row) -> None:
        log("round " + str(row.get("round")) + " " + str(row.get("side")) + ": " +
            ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("round", "side") and not str(k).endswith("_prompt"))[:400])

    t0 = time.perf_counter()
    result = aegis.coevolve(list(aegis.DEFAULT_ATTACKS), seed_defense, benign=essays, engine=engine,
                            optimizer_engine=opt_engine, rounds=args.rounds, iterations=args.iterations,
                            pool_size=args.pool_size, seed=args.seed, out=str(out / "coevolve"), examples=extra,
                            buffer_size=args.buffer_size, gradient_tokens=args.gradient_tokens, callbacks=[progress],
                            patience=args.patience, explore_temperature=args.explore_temperature,
                            quote_failures=args.quote_failures, exemplars=args.exemplars)
    t_evolve = time.perf_counter() - t0
    log(f"co-evolution: {result.rounds_run} rounds in {t_evolve:.0f} s, tokens {result.tokens}; "
        f"defense changed: {result.defense_prompt != seed_defense}")

    t0 = time.perf_counter()
    with track_usage() as u_after:
        flags_after, after = detect_flags(result.defense_prompt, held, engine)
    t_after = time.perf_counter() - t0
    log(f"evolved defense on held-out: {after} in {t_after:.0f} s")

    t0 = time.perf_counter()
    attacks = [result.best_attack] + [a for a in aegis.DEFAULT_ATTACKS if a != result.best_attack]
    with track_usage() as u_attacks:
        evasion = attack_evasion(attacks, {"seed_defense": seed_defense, "evolved_defense": result.defense_prompt},
                                 unseen_essays, engine, args.seed)
    t_attacks = time.perf_counter() - t0
    log(f"attacks on {len(unseen_essays)} unseen essays: {[(r['label'], r['seed_defense']['asr'], r['evolved_defense']['asr']) for r in evasion]}")

    labels = [e.label for e in held]
    paired = summarize(labels, [flags_before, flags_after], args.bootstrap, args.seed)
    summary = {
        "engine": args.engine, "seed": args.seed, "held_out_scored": len(held), "corpus": len(corpus),
        "config": vars(args), "load_start": load_start, "load_end": load(), "seed_defense": seed_name,
        "held_out_ids": [e.id for e in held], "held_out_labels": labels,
        "initial": {**before, "flags": flags_before, "metrics": paired[0], "tokens": u_before.to_dict(), "seconds": round(t_before, 1)},
        "evolved": {**after, "flags": flags_after, "metrics": paired[1], "tokens": u_after.to_dict(), "seconds": round(t_after, 1)},
        "coevolve": {"tokens": result.tokens, "seconds": round(t_evolve, 1), "rounds_run": result.rounds_run,
                     "stopped_early": result.stopped_early, "failed_updates": len(result.failures), "failures": result.failures,
                     "history": [{k: v for k, v in h.items() if not k.endswith("_prompt")} for h in result.history]},
        "attacks": {"essays_unseen": len(unseen_essays), "rows": evasion, "tokens": u_attacks.to_dict(), "seconds": round(t_attacks, 1)},
        "initial_defense_prompt": seed_defense, "evolved_defense_prompt": result.defense_prompt,
        "best_attack": result.best_attack,
        "command": "python benchmarks/aegis_eval.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "history": result.history,  # every round's row with both sides' prompts (notebooks/03 draws it)
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    print("| defense prompt | TPR [95% CI] | TNR [95% CI] | F1 | bal. acc. [95% CI] | Δ vs seed [95% CI] | TP/FN/TN/FP | unparsed |")
    print("|---|---|---|---|---|---|---|---|")
    for name, m in (("seed " + seed_name, paired[0]), ("evolved", paired[1])):
        c, v = m["confusion"], m["vs_first"]
        print(f"| {name} | {m['tpr']:.2f} {m['tpr_ci95']} | {m['tnr']:.2f} {m['tnr_ci95']} | {m['f1']:.2f} | "
              f"{m['balanced_accuracy']:.2f} {m['balanced_accuracy_ci95']} | {v['balanced_accuracy_diff']:+.2f} {v['ci95']} | "
              f"{c.get('tp')}/{c.get('fn')}/{c.get('tn')}/{c.get('fp')} | {c.get('unparsed_malicious', 0) + c.get('unparsed_benign', 0)} |")
    print(f"co-evolution: {result.tokens.get('total_tokens')} tokens in {result.tokens.get('calls')} calls, {t_evolve:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
