"""DSPy's side of the workloads (dspy 3.4.1). Runs inside the DSPy virtual environment
(benchmarks/.cache/venvs/dspy), never in the project's: `python dspy_bench.py WORKLOAD CONFIG.json` prints
`BENCH_RESULT {json}`.

DSPy reaches the server through `dspy.LM("openai/<model>", api_base=..., api_key=...)` (LiteLLM), its
documented path for OpenAI-compatible servers. Evaluation is DSPy's own `dspy.Evaluate(num_threads=...)`
over a `dspy.Predict` program whose signature's instructions are the instruction template.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any


def throughput(cfg: dict[str, Any]) -> dict[str, Any]:
    import dspy
    from _labels import score

    labels = cfg["labels"]

    def metric(example: Any, pred: Any, trace: Any = None) -> float:
        return score(getattr(pred, "answer", "") or "", example.answer, labels)[0]

    runs = []
    for run in [{"concurrency": 1, "base_url": cfg["warmup_url"], "warmup": True, "label": "warm-up"}] + cfg["runs"]:  # untimed warm-up first
        c = run["concurrency"]
        lm = dspy.LM("openai/" + cfg["model"], api_base=run["base_url"], api_key="bench", max_tokens=cfg.get("max_tokens"),
                     temperature=0.0, num_retries=0)
        dspy.configure(lm=lm)
        sig = dspy.Signature("question -> answer", cfg["template"].replace("{input}", "the question"))
        program = dspy.Predict(sig)
        devset = [dspy.Example(question=f"(level {run.get('label', c)}) {e['question']}", answer=e["answer"]).with_inputs("question")
                  for e in (cfg["examples"][:1] if run.get("warmup") else cfg["examples"])]
        evaluate = dspy.Evaluate(devset=devset, metric=metric, num_threads=c, display_progress=False, max_errors=len(devset))
        t0 = time.perf_counter()
        result = evaluate(program)
        if not run.get("warmup"):
            runs.append({"concurrency": c, "seconds": time.perf_counter() - t0, "scored": len(result.results), "errors": 0})
    return {"available": True, "how": "dspy.Evaluate(num_threads=c) over dspy.Predict('question -> answer')", "runs": runs}


WORKLOADS = {"throughput": throughput}


def main() -> None:
    workload, path = sys.argv[1], sys.argv[2]
    if workload not in WORKLOADS:
        print("BENCH_RESULT " + json.dumps({"available": False, "reason": f"DSPy is benchmarked on {', '.join(WORKLOADS)} only"}))
        return
    with open(path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    print("BENCH_RESULT " + json.dumps(WORKLOADS[workload](cfg)), flush=True)


if __name__ == "__main__":
    main()
