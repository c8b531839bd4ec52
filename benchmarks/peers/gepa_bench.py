"""GEPA's side of the workloads (gepa 0.1.4). Runs inside the GEPA virtual environment
(benchmarks/.cache/venvs/gepa), never in the project's: `python gepa_bench.py WORKLOAD CONFIG.json` prints
`BENCH_RESULT {json}`.

GEPA reaches the server through LiteLLM, as its default adapter does: model "openai/<model>" with
api_base/api_key passed as LiteLLM completion arguments.
- throughput: `DefaultAdapter(model, evaluator, max_litellm_workers=c).evaluate(batch, candidate)`, the call
  GEPA makes for every minibatch and validation pass.
- quality: `gepa.optimize(...)` with the default adapter. The trainable text is the same instruction
  template every framework optimizes; the adapter's task model is a small callable that renders the
  template around the input in the user turn (GEPA's DefaultAdapter accepts any chat callable as model)
  and calls LiteLLM. The evaluator is the shared label metric, with its feedback sentence.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any


def _evaluator(labels: list[str]) -> Any:
    from _labels import score
    from gepa.adapters.default_adapter.default_adapter import EvaluationResult

    def evaluate(data: dict[str, Any], response: str) -> Any:
        value, why = score(response or "", data["answer"], labels)
        return EvaluationResult(score=value, feedback=why, objective_scores=None)

    return evaluate


def throughput(cfg: dict[str, Any]) -> dict[str, Any]:
    from gepa.adapters.default_adapter.default_adapter import DefaultAdapter

    runs = []
    for run in [{"concurrency": 1, "base_url": cfg["warmup_url"], "warmup": True, "label": "warm-up"}] + cfg["runs"]:  # untimed warm-up first
        c = run["concurrency"]
        adapter = DefaultAdapter(
            model="openai/" + cfg["model"], evaluator=_evaluator(cfg["labels"]), max_litellm_workers=c,
            litellm_batch_completion_kwargs={"api_base": run["base_url"], "api_key": "bench",
                                             "max_tokens": cfg.get("max_tokens"), "temperature": 0.0},
        )
        batch = [{"input": f"(level {run.get('label', c)}) {e['question']}", "additional_context": {}, "answer": e["answer"]} for e in (cfg["examples"][:1] if run.get("warmup") else cfg["examples"])]
        t0 = time.perf_counter()
        out = adapter.evaluate(batch, {"instruction": cfg["template"]}, capture_traces=False)
        if not run.get("warmup"):
            runs.append({"concurrency": c, "seconds": time.perf_counter() - t0, "scored": len(out.scores), "errors": 0})
    return {"available": True, "how": "DefaultAdapter(max_litellm_workers=c).evaluate(batch, candidate)", "runs": runs}


def quality(cfg: dict[str, Any]) -> dict[str, Any]:
    """gepa.optimize with the default adapter; the candidate is the instruction template. The adapter's model is
    a chat callable: it gets (system = candidate text, user = input) from the adapter, renders the template
    around the input in the user turn, and calls LiteLLM on the task route. Reflection: gepa.lm.LM on the
    optimizer route. Budget: max_metric_calls (GEPA counts every task-model evaluation against it)."""
    import gepa
    import litellm
    from _labels import render
    from gepa.adapters.default_adapter.default_adapter import DefaultAdapter
    from gepa.lm import LM

    calls = [0]

    def task_model(messages: list[dict[str, str]]) -> str:
        calls[0] += 1
        template = next((m["content"] for m in messages if m["role"] == "system"), "")
        text = messages[-1]["content"]
        resp = litellm.completion(model="openai/" + cfg["model"], messages=[{"role": "user", "content": render(template, text)}],
                                  api_base=cfg["task_url"], api_key="bench", max_tokens=cfg["max_tokens"], temperature=0.0)
        return resp.choices[0].message.content or ""

    def inst(e: dict[str, str]) -> dict[str, Any]:
        return {"input": e["question"], "additional_context": {}, "answer": e["answer"]}

    adapter = DefaultAdapter(model=task_model, evaluator=_evaluator(cfg["labels"]))
    # The reflection model: a separate one when the harness gave it (--reflect-gguf), else the task model.
    reflection = LM("openai/" + cfg.get("opt_model", cfg["model"]), api_base=cfg["opt_url"], api_key="bench",
                    max_tokens=cfg["opt_max_tokens"])
    result = gepa.optimize(
        seed_candidate={"instruction_template": cfg["seed_prompt"]},
        trainset=[inst(e) for e in cfg["train"]], valset=[inst(e) for e in cfg["val"]],
        adapter=adapter, reflection_lm=reflection, max_metric_calls=cfg["budget"],
        reflection_minibatch_size=cfg["batch"], seed=cfg["seed"], display_progress_bar=False, raise_on_exception=False,
    )
    best = result.best_candidate
    final = best["instruction_template"] if isinstance(best, dict) else str(best)
    return {"available": True, "final_prompt": final, "task_calls": calls[0], "candidates": len(result.candidates),
            "val_best": result.val_aggregate_scores[result.best_idx], "metric_calls": result.total_metric_calls,
            "how": "gepa.optimize(DefaultAdapter(model=<user-turn template callable>), reflection_lm=LM)"}


WORKLOADS = {"throughput": throughput, "quality": quality}


def main() -> None:
    workload, path = sys.argv[1], sys.argv[2]
    if workload not in WORKLOADS:
        print("BENCH_RESULT " + json.dumps({"available": False, "reason": f"GEPA is benchmarked on {', '.join(WORKLOADS)} only"}))
        return
    with open(path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    print("BENCH_RESULT " + json.dumps(WORKLOADS[workload](cfg)), flush=True)


if __name__ == "__main__":
    main()
