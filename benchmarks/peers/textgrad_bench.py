"""TextGrad's side of the workloads. Runs inside the TextGrad virtual environment (benchmarks/.cache/venvs/),
never in the project's: `python textgrad_bench.py WORKLOAD CONFIG.json` prints `BENCH_RESULT {json}`.

TextGrad reaches the server through its documented path for OpenAI-compatible servers:
`ChatExternalClient(client=openai.OpenAI(base_url=...), model_string=...)`. The only change is a cap on
completion tokens (the same cap every framework gets), since TextGrad's default is 2,000.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Any

INITIAL_PROMPT = "You are a helpful assistant. Answer the question."
PROMPT_ROLE = "system prompt of an assistant that answers counting questions"


def eval_instruction(question: str, answer: str) -> str:
    return (
        f"Question: {question}\nThe correct answer is {answer}. Say whether the response gives exactly this "
        "answer and, if not, what went wrong in its reasoning. Be brief."
    )


def engine(cfg: dict[str, Any]) -> Any:
    from openai import OpenAI
    from textgrad.engine.local_model_openai_api import ChatExternalClient

    cap = cfg.get("max_tokens")

    class Capped(ChatExternalClient):
        def generate(self, content: Any, system_prompt: str | None = None, **kwargs: Any) -> Any:
            if cap:
                kwargs.setdefault("max_tokens", cap)
            return super().generate(content, system_prompt=system_prompt, **kwargs)

    client = OpenAI(base_url=cfg["base_url"], api_key="bench", max_retries=0, timeout=900)
    return Capped(client=client, model_string=cfg["model"])


def fanin(cfg: dict[str, Any], rep: int) -> dict[str, Any]:
    import textgrad as tg

    eng = engine(cfg)
    tg.set_backward_engine(eng, override=True)
    start = f"{INITIAL_PROMPT} (run {rep})"
    prompt = tg.Variable(start, role_description=PROMPT_ROLE, requires_grad=True)
    llm = tg.BlackboxLLM(eng, system_prompt=prompt)
    n = cfg.get("width", 8)
    qs = [
        tg.Variable(f"Run {rep}, question {i}: I have {i + 1} apples. How many fruits do I have?", role_description="question", requires_grad=False)
        for i in range(n)
    ]
    outs = [llm(q) for q in qs]
    losses = [tg.TextLoss(eval_instruction(q.value, str(i + 1)), engine=eng)(o) for i, (q, o) in enumerate(zip(qs, outs))]
    total = tg.sum(losses)
    opt = tg.TGD([prompt], engine=eng)
    t0 = time.perf_counter()
    total.backward()
    opt.step()
    dt = time.perf_counter() - t0
    return {"seconds": dt, "updated": prompt.value != start}


def chain(cfg: dict[str, Any], rep: int) -> dict[str, Any]:
    import textgrad as tg

    eng = engine(cfg)
    tg.set_backward_engine(eng, override=True)
    start = f"Run {rep}: a draft answer about counting apples."
    x = tg.Variable(start, role_description="draft text to improve", requires_grad=True)
    v = x
    for i in range(cfg.get("depth", 10)):
        v = tg.BlackboxLLM(eng, system_prompt=f"Step {i}: rewrite the text more clearly.")(v)
    loss = tg.TextLoss("Say briefly how the text could be clearer.", engine=eng)(v)
    opt = tg.TGD([x], engine=eng)
    t0 = time.perf_counter()
    loss.backward()
    opt.step()
    dt = time.perf_counter() - t0
    return {"seconds": dt, "updated": x.value != start}


def timing(cfg: dict[str, Any]) -> dict[str, Any]:
    fn = {"fanin": fanin, "chain": chain}[cfg["graph"]]
    runs = [fn(cfg, rep) for rep in range(cfg["reps"])]
    return {"seconds": [r["seconds"] for r in runs], "updated": [r["updated"] for r in runs]}


def optimize(cfg: dict[str, Any]) -> dict[str, Any]:
    import textgrad as tg

    eng = engine(cfg)
    tg.set_backward_engine(eng, override=True)
    prompt = tg.Variable(INITIAL_PROMPT, role_description=PROMPT_ROLE, requires_grad=True)
    llm = tg.BlackboxLLM(eng, system_prompt=prompt)
    opt = tg.TGD([prompt], engine=eng)

    def answers(examples: list[dict[str, str]]) -> list[str]:
        return [llm(tg.Variable(e["question"], role_description="question", requires_grad=False)).value for e in examples]

    before = answers(cfg["eval"]) if cfg["eval"] else []
    steps = []
    train, b = cfg["train"], cfg.get("batch", 1)
    for s in range(cfg["steps"]):
        batch = [train[(s * b + j) % len(train)] for j in range(b)]
        old = prompt.value
        opt.zero_grad()
        error = ""
        try:
            outs = [llm(tg.Variable(e["question"], role_description="question", requires_grad=False)) for e in batch]
            losses = [tg.TextLoss(eval_instruction(e["question"], e["answer"]), engine=eng)(o) for e, o in zip(batch, outs)]
            tg.sum(losses).backward()
            opt.step()
        except Exception as exc:  # TextGrad raises IndexError when the reply lacks its tags
            error = f"{type(exc).__name__}: {exc}"[:300]
        new = prompt.value
        steps.append({"valid": not error and bool(new.strip()) and new != old, "changed": new != old, "error": error})
    after = answers(cfg["eval"]) if cfg["eval"] else []
    return {"available": True, "before": before, "after": after, "steps": steps, "final_prompt": prompt.value}


def prompt_size(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"available": False, "reason": "not part of this workload (OptoPrime vs Trace only)"}


WORKLOADS = {"timing": timing, "optimize": optimize, "prompt_size": prompt_size}


def main() -> None:
    workload, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    result = WORKLOADS[workload](cfg)
    print("BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
