"""textopt's side of every workload (run by benchmarks/run.py in a fresh process with the project's Python).

    python benchmarks/bench_textopt.py WORKLOAD CONFIG.json

prints one line `BENCH_RESULT {json}`. The engine is always textopt's normal OpenAI-compatible path,
`get_engine("openai:<model>", base_url=...)`, pointed at the server the harness started. The peers'
scripts (benchmarks/peers/) build the same graphs with their own APIs.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import textopt as to

# Shared wording, so every framework sees the same task (the peers' scripts repeat these strings).
INITIAL_PROMPT = "You are a helpful assistant. Answer the question."
PROMPT_ROLE = "system prompt of an assistant that answers counting questions"


def eval_instruction(question: str, answer: str) -> str:
    return (
        f"Question: {question}\nThe correct answer is {answer}. Say whether the response gives exactly this "
        "answer and, if not, what went wrong in its reasoning. Be brief."
    )


def engine(cfg: dict[str, Any], **kw: Any) -> to.Engine:
    # The peers' clients wait up to 10-15 minutes for a reply; so does ours (a loaded llama.cpp server queues requests).
    return to.get_engine("openai:" + cfg["model"], base_url=cfg["base_url"], max_tokens=cfg.get("max_tokens"), timeout=900.0, **kw)


# -- (a) backward + step wall time -------------------------------------------------------------------


async def fanin(cfg: dict[str, Any], rep: int) -> dict[str, Any]:
    eng = engine(cfg)
    prompt = to.Variable(f"{INITIAL_PROMPT} (run {rep})", role=PROMPT_ROLE, requires_grad=True)
    llm = to.LLM(eng, system_prompt=prompt)
    n = cfg.get("width", 8)
    qs = [to.Variable(f"Run {rep}, question {i}: I have {i + 1} apples. How many fruits do I have?", role="question") for i in range(n)]
    outs = await asyncio.gather(*(llm.acall(q) for q in qs))
    losses = await asyncio.gather(
        *(to.TextLoss(eval_instruction(q.text, str(i + 1)), engine=eng).acall(o) for i, (q, o) in enumerate(zip(qs, outs)))
    )
    total = to.sum(losses)
    opt = to.TGD([prompt], engine=eng)
    t0 = time.perf_counter()
    await total.abackward(eng)
    await opt.astep()
    dt = time.perf_counter() - t0
    return {"seconds": dt, "updated": prompt.value != f"{INITIAL_PROMPT} (run {rep})" and not opt.failures}


async def chain(cfg: dict[str, Any], rep: int) -> dict[str, Any]:
    eng = engine(cfg)
    start = f"Run {rep}: a draft answer about counting apples."
    x = to.Variable(start, role="draft text to improve", requires_grad=True)
    v = x
    for i in range(cfg.get("depth", 10)):
        v = await to.LLM(eng, system_prompt=f"Step {i}: rewrite the text more clearly.").acall(v)
    loss = await to.TextLoss("Say briefly how the text could be clearer.", engine=eng).acall(v)
    opt = to.TGD([x], engine=eng)
    t0 = time.perf_counter()
    await loss.abackward(eng)
    await opt.astep()
    dt = time.perf_counter() - t0
    return {"seconds": dt, "updated": x.value != start and not opt.failures}


async def timing(cfg: dict[str, Any]) -> dict[str, Any]:
    fn = {"fanin": fanin, "chain": chain}[cfg["graph"]]
    runs = [await fn(cfg, rep) for rep in range(cfg["reps"])]
    return {"seconds": [r["seconds"] for r in runs], "updated": [r["updated"] for r in runs]}


# -- (b) OptoPrime step prompt on a traced chain --------------------------------------------------------


async def prompt_size(cfg: dict[str, Any]) -> dict[str, Any]:
    eng = engine(cfg, cache=False)

    @to.trace
    def rotate(s: str) -> str:
        """Rotate the text by one character."""
        return s[1:] + s[:1]

    x = to.Variable("the quick brown fox jumps over the lazy dog", role="text to transform", requires_grad=True, name="text")
    v = x
    for _ in range(cfg["nodes"]):
        v = rotate(v)
    opt = to.OptoPrime([x], engine=eng)
    opt.zero_feedback()
    opt.backward(v, "The final text should start with 'The'.")  # records only; OptoPrime's backward makes no call
    before = len(eng.history)
    await opt.astep()
    chars = [sum(len(m["content"]) for m in req.messages) for req, _ in list(eng.history)[before:]]
    return {"available": True, "update_calls": len(chars), "client_prompt_chars": chars, "updated": x.value != "the quick brown fox jumps over the lazy dog"}


# -- (d) valid updates and (e) end to end, on the real model --------------------------------------------


async def optimize(cfg: dict[str, Any]) -> dict[str, Any]:
    """Steps of (forward, loss, backward, update) on training examples; held-out replies before and after.

    Returns raw replies: the harness scores them, the same way for every framework."""
    eng = engine(cfg)
    prompt = to.Variable(INITIAL_PROMPT, role=PROMPT_ROLE, requires_grad=True, name="system_prompt")
    llm = to.LLM(eng, system_prompt=prompt)
    kind = cfg.get("optimizer", "tgd")
    if kind != "tgd":
        opt: Any = to.OptoPrime([prompt], engine=eng)
    else:
        opt = to.TGD([prompt], engine=eng)

    async def answers(examples: list[dict[str, str]]) -> list[str]:
        outs = await asyncio.gather(*(llm.acall(to.Variable(e["question"], role="question")) for e in examples))
        return [o.text for o in outs]

    before = await answers(cfg["eval"]) if cfg["eval"] else []
    steps = []
    train = cfg["train"]
    b = cfg.get("batch", 1)
    for s in range(cfg["steps"]):
        batch = [train[(s * b + j) % len(train)] for j in range(b)]
        old = prompt.value
        n_fail = len(opt.failures)
        opt.zero_grad()
        outs = await asyncio.gather(*(llm.acall(to.Variable(e["question"], role="question")) for e in batch))
        error = ""
        try:
            if kind == "tgd":
                losses = await asyncio.gather(
                    *(to.TextLoss(eval_instruction(e["question"], e["answer"]), engine=eng).acall(o) for e, o in zip(batch, outs))
                )
                await to.sum(losses).abackward(eng)
            else:
                for e, o in zip(batch, outs):  # Trace-style: raw feedback from the metric, no backward calls
                    opt.backward(o, _metric_feedback(o.text, e["answer"]))
            await opt.astep()
        except Exception as exc:  # a crash is an invalid step, recorded, not a crashed benchmark
            error = f"{type(exc).__name__}: {exc}"[:300]
        if not error and len(opt.failures) > n_fail:
            error = opt.failures[-1].error[:300]
        new = prompt.value
        steps.append({"valid": not error and bool(new.strip()) and new != old, "changed": new != old, "error": error})
    after = await answers(cfg["eval"]) if cfg["eval"] else []
    return {"available": True, "before": before, "after": after, "steps": steps, "final_prompt": prompt.value}


def _metric_feedback(reply: str, answer: str) -> str:
    from textopt.datasets import exact_match

    ok = exact_match(reply, answer)
    return f"The correct answer is {answer}. The response is {'correct' if ok else 'wrong'}."


WORKLOADS = {"timing": timing, "prompt_size": prompt_size, "optimize": optimize}


def main() -> None:
    workload, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    result = asyncio.run(WORKLOADS[workload](cfg))
    print("BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
