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


def task_and_optimizer_engines(cfg: dict[str, Any]) -> tuple[Any, Any]:
    """(task engine, optimizer engine) of a (d)/(e) run: one engine for both, unless the harness gave a
    separate reflection model (task_url + opt_url/opt_model, --reflect-gguf)."""
    if "task_url" not in cfg:
        eng = engine(cfg)
        return eng, eng
    return (engine({**cfg, "base_url": cfg["task_url"]}),
            engine({**cfg, "base_url": cfg.get("opt_url", cfg["base_url"]), "model": cfg.get("opt_model", cfg["model"])}))


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

    task_eng, eng = task_and_optimizer_engines(cfg)  # eng: the optimizer's (loss, backward, TGD)
    tg.set_backward_engine(eng, override=True)
    prompt = tg.Variable(INITIAL_PROMPT, role_description=PROMPT_ROLE, requires_grad=True)
    llm = tg.BlackboxLLM(task_eng, system_prompt=prompt)
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


def throughput(cfg: dict[str, Any]) -> dict[str, Any]:
    """TextGrad's documented way to evaluate a set: a thread pool over model(x) (and the metric)."""
    import concurrent.futures

    import textgrad as tg
    from _labels import render, score

    labels = cfg["labels"]
    runs = []
    for run in [{"concurrency": 1, "base_url": cfg["warmup_url"], "warmup": True, "label": "warm-up"}] + cfg["runs"]:  # untimed warm-up first
        c = run["concurrency"]
        eng = engine({**cfg, "base_url": run["base_url"]})
        model = tg.BlackboxLLM(eng)

        def one(ex: dict[str, str]) -> float:
            x = tg.Variable(render(cfg["template"], f"(level {run.get('label', c)}) {ex['question']}"), role_description="input", requires_grad=False)
            return score(model(x).value, ex["answer"], labels)[0]

        t0 = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(max_workers=c) as pool:
            scores = list(pool.map(one, cfg["examples"][:1] if run.get("warmup") else cfg["examples"]))
        if not run.get("warmup"):
            runs.append({"concurrency": c, "seconds": time.perf_counter() - t0, "scored": len(scores), "errors": 0})
    return {"available": True, "how": "concurrent.futures.ThreadPoolExecutor(max_workers=c) over BlackboxLLM(x)", "runs": runs}


TEMPLATE_ROLE = ("instruction template for a small classifier model; the text to classify goes where {input} "
                 "stands, and the reply must name exactly one label")


def quality(cfg: dict[str, Any]) -> dict[str, Any]:
    """TGD on the instruction template: the template is rendered around the input by a StringBasedFunction
    (so gradients reach it), then BlackboxLLM; the TextLoss judge gets the metric's feedback, as textopt's does.
    The step schedule is the shared one (benchmarks/peers/_labels.py)."""
    import textgrad as tg
    from _labels import render, run_schedule, score
    from textgrad.autograd.string_based_ops import StringBasedFunction

    labels = cfg["labels"]
    task_eng = engine({**cfg, "base_url": cfg["task_url"], "max_tokens": cfg["max_tokens"]})
    # The optimizer's model: a separate reflection model when the harness gave one (--reflect-gguf).
    opt_eng = engine({**cfg, "base_url": cfg["opt_url"], "model": cfg.get("opt_model", cfg["model"]),
                      "max_tokens": cfg["opt_max_tokens"]})
    tg.set_backward_engine(opt_eng, override=True)
    template = tg.Variable(cfg["seed_prompt"], role_description=TEMPLATE_ROLE, requires_grad=True)
    fill = StringBasedFunction(lambda template, text: render(template.value, text.value),
                               "puts the text into the instruction template's {input} slot (after it when there is no slot)")
    model = tg.BlackboxLLM(task_eng)
    calls = [0]

    def forward(ex: dict[str, str]) -> Any:
        calls[0] += 1
        x = tg.Variable(ex["question"], role_description="text to classify", requires_grad=False)
        return model(fill(inputs={"template": template, "text": x}))

    opt = tg.TGD([template], engine=opt_eng)

    def step(batch: list[dict[str, str]]) -> None:
        opt.zero_grad()
        outs = [forward(ex) for ex in batch]
        losses = []
        for ex, o in zip(batch, outs):
            why = score(o.value, ex["answer"], labels)[1]
            losses.append(tg.TextLoss(f"Text: {ex['question']}\nExpected label: {ex['answer']}\nCheck of the response: {why}\n"
                                      "Say in one or two sentences what the response should have said instead.", engine=opt_eng)(o))
        tg.sum(losses).backward()
        opt.step()

    def evaluate(val: list[dict[str, str]]) -> float:
        return sum(score(forward(ex).value, ex["answer"], labels)[0] for ex in val) / max(1, len(val))

    out = run_schedule(get=lambda: template.value, set_=template.set_value, step=step, evaluate=evaluate, train=cfg["train"],
                       val=cfg["val"], batch=cfg["batch"], budget=cfg["budget"], seed=cfg["seed"])
    out["task_calls"] = calls[0]
    return {"available": True, "final_prompt": template.value, **out, "how": "tg.TGD, shared schedule"}


WORKLOADS = {"timing": timing, "optimize": optimize, "prompt_size": prompt_size, "throughput": throughput, "quality": quality}


def main() -> None:
    workload, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    result = WORKLOADS[workload](cfg)
    print("BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
