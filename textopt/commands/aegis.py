"""`textopt aegis`: co-evolve an injection attacker and a detector prompt (a thin adapter over the "aegis"
recipe); checkpointed every round, so `textopt resume DIR` continues a stopped run."""
from __future__ import annotations

import argparse
import json
from typing import Any

from ..engines.pricing import format_cost
from ..recipes import AEGIS_DEFAULTS, AEGIS_DEFAULTS as D, RunSpec, build
from ._common import add_common, callbacks, default_out


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("aegis", help="co-evolve prompt-injection attacks and a detector prompt (AEGIS)",
                       description="Co-evolve injection attacks and a detector prompt: each round the attacker improves "
                                   "against the current detector, then the detector against the best attack.")
    p.add_argument("--engine", default=D["engine"], help="engine for the detector and grader: local, openai:<model>, "
                   "litellm:<model>, or fake (offline stand-in, answers are noise) (default: local)")
    p.add_argument("--optimizer-engine", default=None, help="engine for gradients and updates (default: --engine)")
    p.add_argument("--base-url", default=None, help="base URL of an OpenAI-compatible server (with openai:<model>)")
    p.add_argument("--rounds", type=int, default=D["rounds"], help=f"attacker+defender rounds (default: {D['rounds']})")
    p.add_argument("--iterations", type=int, default=D["iterations"],
                   help=f"textual-gradient steps per side per round (default: {D['iterations']})")
    p.add_argument("--pool-size", type=int, default=D["pool_size"],
                   help=f"candidate prompts kept per side (default: {D['pool_size']})")
    p.add_argument("--patience", type=int, default=D["patience"],
                   help=f"stop early after this many rounds in a row that improved neither side (default: {D['patience']})")
    p.add_argument("--buffer-size", type=int, default=D["buffer_size"],
                   help=f"past gradients per objective shown with a new gradient request; 0 turns the buffer off "
                        f"(default: {D['buffer_size']})")
    p.add_argument("--no-quote-failures", dest="quote_failures", action="store_false",
                   help="give the detector's update the critic's words alone, without the texts it failed on quoted "
                        "(the ablation of the default)")
    p.add_argument("--exemplars", type=int, default=D["exemplars"], metavar="K",
                   help="each detector iteration also proposes its prompt with K more labeled excerpts of the training "
                        "texts it got wrong (no LLM call); validation decides if they stay (default: "
                        f"{D['exemplars']}, off)")
    p.add_argument("--essays", type=int, default=D["essays"],
                   help=f"built-in clean essays used, half train, half validation (default: {D['essays']})")
    p.add_argument("--corpus", default=D["corpus"], metavar="FILE",
                   help="your own labeled texts for the defender's train/validation data, instead of bastioncorpus: "
                        ".jsonl/.json with one {\"text\": ..., \"label\": ...} object per line, or .csv with text "
                        "and label columns; labels malicious/benign (also injection, attack, 1, true / safe, clean, 0, "
                        "false)")
    p.add_argument("--corpus-examples", type=int, default=D["corpus_examples"], metavar="N",
                   help="how many labeled texts (a seeded sample) are mixed into the defender's train/validation data: "
                        "from --corpus FILE (0 = all its rows), else from bastioncorpus (0 = none; needs "
                        "pip install 'textopt[aegis]')")
    p.add_argument("--attack", action="append", default=None, help="initial injection text (repeat for several; default: built-in)")
    p.add_argument("--defense", default=None, help="initial detector instructions (default: built-in)")
    p.add_argument("--max-tokens", type=int, default=None, help="reply cap of the engines (default: the engine's)")
    p.add_argument("--seed", type=int, default=D["seed"], help="seed of the train/validation split and injection places")
    p.add_argument("--budget-tokens", type=int, default=None, help="stop cleanly (between rounds) after this many paid tokens")
    p.add_argument("--budget-calls", type=int, default=None, help="stop cleanly (between rounds) after this many paid calls")
    p.add_argument("--budget-usd", type=float, default=None, help="stop cleanly (between rounds) after this many dollars")
    p.add_argument("--latency", type=float, default=0.0, help="seconds per call of the fake engine (for tests)")
    p.add_argument("--out", default=None, help="run directory (default: runs/aegis-<time>): checkpoint, result.json, "
                   "history.json, history.csv, curves.png")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the disk cache")
    add_common(p, json_help="one JSON object per event on stdout, then the result")
    return p


def print_result(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps({"event": "result", **result}, ensure_ascii=False), flush=True)
        return
    print(f"{'round':>5} {'side':<8} {'tpr':>5} {'tnr':>5} {'asr':>5} {'gain':>6} {'tokens':>7}")
    for h in result["history"]:
        print(f"{h['round']:>5} {h['side']:<8} {h['tpr']:>5.2f} {h['tnr']:>5.2f} {h['asr']:>5.2f} {h['score_gain']:>6.2f} {h['tokens']:>7}")
    t = result["tokens"]
    cost = f"; {format_cost(t['cost_usd'], t.get('cost_known', True))}" if t.get("cost_usd") or t.get("cost_known") is False else ""
    print(f"rounds run: {result['rounds_run']} (stopped: {result.get('stopped', 'completed')}); {t['total_tokens']} tokens in "
          f"{t['calls']} calls ({t['cached_calls']} cached){cost}; {result['seconds']} s; "
          f"failed updates: {len(result['failures'])}; error cases: {len(result['errors'])}")
    print("defense prompt:")
    print(result["defense_prompt"])
    print("best attack:")
    print(result["attack_prompts"][0])


def run(args: argparse.Namespace) -> int:
    out = args.out or default_out("aegis")
    spec = RunSpec("aegis", {k: getattr(args, k) for k in AEGIS_DEFAULTS}, kind="aegis")
    job = build(spec, run_dir=out, callbacks=callbacks(args), progress=False)
    job.ready()  # one line now for a missing key or a dead server
    job.prepare()  # run directory and spec.json from the first second
    args.run_out = out
    result = job.fit().summary
    print_result(result, args.json)
    if not args.json:
        print(f"run directory: {out} (result.json, history.json, history.csv, curves.png; textopt report {out})")
    return 0
