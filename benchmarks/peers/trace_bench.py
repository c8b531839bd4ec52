"""Trace's side of the workloads (package trace-opt). Runs inside the Trace virtual environment
(benchmarks/.cache/venvs/), never in the project's: `python trace_bench.py WORKLOAD CONFIG.json` prints
`BENCH_RESULT {json}`.

Trace reaches the server through its documented backend for OpenAI-compatible servers, CustomLLM
(TRACE_DEFAULT_LLM_BACKEND=CustomLLM, TRACE_CUSTOMLLM_URL/_MODEL/_API_KEY, set by the harness to the
optimizer's route and model: a separate reflection model with --reflect-gguf). The task model's calls in
(g), and in (d) with a reflection model, go through an OpenAI client on the task route (cfg task_url).
"""
from __future__ import annotations

import json
import re
import sys
from typing import Any

INITIAL_PROMPT = "You are a helpful assistant. Answer the question."
PROMPT_ROLE = "system prompt of an assistant that answers counting questions"


def last_number(text: str) -> str | None:
    words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    for tok in reversed(re.findall(r"-?\d+(?:\.\d+)?|[a-zA-Z]+", text)):
        if re.fullmatch(r"-?\d+(?:\.\d+)?", tok):
            return tok[:-2] if tok.endswith(".0") else tok
        if tok.lower() in words:
            return str(words.index(tok.lower()))
    return None


def prompt_size(cfg: dict[str, Any]) -> dict[str, Any]:
    from opto import trace
    from opto.optimizers import OptoPrime
    from opto.utils.llm import LLM

    @trace.bundle()
    def rotate(s):
        """Rotate the text by one character."""
        return s[1:] + s[:1]

    x = trace.node("the quick brown fox jumps over the lazy dog", trainable=True, name="text", description="text to transform")
    v = x
    for _ in range(cfg["nodes"]):
        v = rotate(v)
    opt = OptoPrime([x], llm=LLM(), max_tokens=cfg.get("max_tokens") or 4096)
    opt.zero_feedback()
    opt.backward(v, "The final text should start with 'The'.")
    opt.step()
    return {"available": True}


def optimize(cfg: dict[str, Any]) -> dict[str, Any]:
    from opto import trace
    from opto.optimizers import OptoPrime
    from opto.utils.llm import LLM

    llm = LLM()  # the optimizer's (CustomLLM: the harness's optimizer route and model)
    cap = cfg.get("max_tokens")
    task_llm: Any = llm
    if "task_url" in cfg:  # a separate reflection model: the answers come from the task model, on its own route
        import functools

        import openai

        client = openai.OpenAI(base_url=cfg["task_url"], api_key="bench", max_retries=0, timeout=900)
        task_llm = functools.partial(client.chat.completions.create, model=cfg["model"])

    @trace.bundle()
    def answer(system_prompt, question):
        """Ask the language model the question, with the system prompt."""
        resp = task_llm(
            messages=[{"role": "system", "content": system_prompt}, {"role": "user", "content": question}],
            max_tokens=cap,
            temperature=0,
        )
        return resp.choices[0].message.content or ""

    prompt = trace.node(INITIAL_PROMPT, trainable=True, name="system_prompt", description=PROMPT_ROLE)
    opt = OptoPrime([prompt], llm=llm, max_tokens=cap or 4096)

    def answers(examples: list[dict[str, str]]) -> list[str]:
        return [answer(prompt, e["question"]).data for e in examples]

    before = answers(cfg["eval"]) if cfg["eval"] else []
    steps = []
    train, b = cfg["train"], cfg.get("batch", 1)
    for s in range(cfg["steps"]):
        batch = [train[(s * b + j) % len(train)] for j in range(b)]
        old = prompt.data
        error = ""
        try:
            opt.zero_feedback()
            for e in batch:
                out = answer(prompt, e["question"])
                ok = last_number(out.data) == e["answer"]
                opt.backward(out, f"The correct answer is {e['answer']}. The response is {'correct' if ok else 'wrong'}.")
            opt.step()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        new = prompt.data
        if not error and new == old:
            error = "no usable suggestion for system_prompt (Trace kept the old value)"
        steps.append({"valid": not error and isinstance(new, str) and bool(new.strip()), "changed": new != old, "error": error})
    after = answers(cfg["eval"]) if cfg["eval"] else []
    return {"available": True, "before": before, "after": after, "steps": steps, "final_prompt": str(prompt.data)}


def timing(cfg: dict[str, Any]) -> dict[str, Any]:
    return {"available": False, "reason": "not part of this workload (textopt vs TextGrad only)"}


TEMPLATE_ROLE = ("instruction template for a small classifier model; the text to classify goes where {input} "
                 "stands, and the reply must name exactly one label")


def quality(cfg: dict[str, Any]) -> dict[str, Any]:
    """OptoPrime on the instruction template: a bundled function renders it around the input in the user turn
    and calls the task model (an OpenAI client on the task route); the metric's feedback sentence goes to
    `opt.backward` for each output. Trace's own LLM (CustomLLM, the optimizer route) makes the update.
    The step schedule is the shared one (benchmarks/peers/_labels.py)."""
    import openai
    from _labels import render, run_schedule, score
    from opto import trace
    from opto.optimizers import OptoPrime
    from opto.utils.llm import LLM

    labels = cfg["labels"]
    client = openai.OpenAI(base_url=cfg["task_url"], api_key="bench", max_retries=0, timeout=900)
    calls = [0]

    @trace.bundle()
    def classify(template, text):
        """Put the text into the instruction template's {input} slot and ask the language model; return its reply."""
        calls[0] += 1
        resp = client.chat.completions.create(model=cfg["model"], messages=[{"role": "user", "content": render(template, text)}],
                                              max_tokens=cfg["max_tokens"], temperature=0)
        return resp.choices[0].message.content or ""

    template = trace.node(cfg["seed_prompt"], trainable=True, name="instruction_template", description=TEMPLATE_ROLE)
    opt = OptoPrime([template], llm=LLM(), max_tokens=cfg["opt_max_tokens"])

    @trace.bundle()
    def numbered(*replies):
        """Number the replies of one minibatch, one per line."""
        return "\n".join(f"[{i}] {r}" for i, r in enumerate(replies, 1))

    def step(batch: list[dict[str, str]]) -> None:
        # Trace's batch recipe: one output node joining the minibatch's outputs, one feedback text joining
        # their feedback (a backward per output would carry different feedback into the shared template node).
        opt.zero_feedback()
        outs = [classify(template, ex["question"]) for ex in batch]
        feedback = "\n".join(f"[{i}] {score(o.data, ex['answer'], labels)[1]}" for i, (o, ex) in enumerate(zip(outs, batch), 1))
        opt.backward(numbered(*outs), feedback)
        opt.step()

    def evaluate(val: list[dict[str, str]]) -> float:
        return sum(score(classify(template, ex["question"]).data, ex["answer"], labels)[0] for ex in val) / max(1, len(val))

    out = run_schedule(get=lambda: str(template.data), set_=template._set, step=step, evaluate=evaluate, train=cfg["train"],
                       val=cfg["val"], batch=cfg["batch"], budget=cfg["budget"], seed=cfg["seed"])
    out["task_calls"] = calls[0]
    return {"available": True, "final_prompt": str(template.data), **out, "how": "opto OptoPrime, shared schedule"}


WORKLOADS = {"prompt_size": prompt_size, "optimize": optimize, "timing": timing, "quality": quality}


def main() -> None:
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 20000))
    workload, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    result = WORKLOADS[workload](cfg)
    print("BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
