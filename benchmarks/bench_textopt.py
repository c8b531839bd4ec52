"""textopt's side of every workload (run by benchmarks/run.py in a fresh process with the project's Python).

    python benchmarks/bench_textopt.py WORKLOAD CONFIG.json

prints one line `BENCH_RESULT {json}`. The engine is always textopt's normal OpenAI-compatible path,
`get_engine("openai:<model>", base_url=...)`, pointed at the server the harness started. The peers'
scripts (benchmarks/peers/) build the same graphs with their own APIs.
"""
from __future__ import annotations

import asyncio
import functools
import json
import sys
import time
from typing import Any

import textopt as to
from textopt.ops.instruction import InstructionCall

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


def task_and_optimizer_engines(cfg: dict[str, Any]) -> tuple[to.Engine, to.Engine]:
    """(task engine, optimizer engine) of a (d)/(e) run: one engine for both, unless the harness gave a
    separate reflection model (task_url + opt_url/opt_model, --reflect-gguf)."""
    if "task_url" not in cfg:
        eng = engine(cfg)
        return eng, eng
    return (engine({**cfg, "base_url": cfg["task_url"]}),
            engine({**cfg, "base_url": cfg.get("opt_url", cfg["base_url"]), "model": cfg.get("opt_model", cfg["model"])}))


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
    total = to.aggregate(losses)
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
    opt.zero_grad()
    opt.backward(v, "The final text should start with 'The'.")  # records only; OptoPrime's backward makes no call
    before = len(eng.history)
    await opt.astep()
    chars = [sum(len(m["content"]) for m in req.messages) for req, _ in list(eng.history)[before:]]
    return {"available": True, "update_calls": len(chars), "client_prompt_chars": chars, "updated": x.value != "the quick brown fox jumps over the lazy dog"}


# -- (d) valid updates and (e) end to end, on the real model --------------------------------------------


async def optimize(cfg: dict[str, Any]) -> dict[str, Any]:
    """Steps of (forward, loss, backward, update) on training examples; held-out replies before and after.

    Returns raw replies: the harness scores them, the same way for every framework. `eng` is the optimizer's
    engine (losses, gradients, updates, proposals); the system prompt's answers come from the task engine."""
    task_eng, eng = task_and_optimizer_engines(cfg)
    prompt = to.Variable(INITIAL_PROMPT, role=PROMPT_ROLE, requires_grad=True, name="system_prompt")
    llm = to.LLM(task_eng, system_prompt=prompt)
    kind = cfg.get("optimizer", "tgd")
    if kind == "search":
        return await _search_proposals(cfg, eng, prompt, llm)
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
        n_calls = eng.usage.calls + eng.usage.cached_calls
        opt.zero_grad()
        outs = await asyncio.gather(*(llm.acall(to.Variable(e["question"], role="question")) for e in batch))
        error = ""
        try:
            if kind == "tgd":
                losses = await asyncio.gather(
                    *(to.TextLoss(eval_instruction(e["question"], e["answer"]), engine=eng).acall(o) for e, o in zip(batch, outs))
                )
                await to.aggregate(losses).abackward(eng)
            else:
                for e, o in zip(batch, outs):  # Trace-style: raw feedback from the metric, no backward calls
                    opt.backward(o, _metric_feedback(o.text, e["answer"]))
            await opt.astep()
        except Exception as exc:  # a crash is an invalid step, recorded, not a crashed benchmark
            error = f"{type(exc).__name__}: {exc}"[:300]
        if not error and len(opt.failures) > n_fail:
            error = opt.failures[-1].error[:300]
        new = prompt.value
        steps.append({"valid": not error and bool(new.strip()) and new != old, "changed": new != old, "error": error,
                      "replies": _replies(eng, n_calls)})
    after = await answers(cfg["eval"]) if cfg["eval"] else []
    return {"available": True, "before": before, "after": after, "steps": steps, "final_prompt": prompt.value}


def _replies(eng: Any, since: int, limit: int = 3000) -> list[str]:
    """The optimizer model's replies since its call number `since` (losses, gradients, updates, re-asks),
    kept in the results so that a step's failure can be read, not guessed. (`history` is bounded: the
    count comes from the usage counters, cache hits included, and only the replies it still holds are returned.)"""
    new = eng.usage.calls + eng.usage.cached_calls - since
    return [completion.text[:limit] for _, completion in list(eng.history)[-new:]] if new > 0 else []


async def _search_proposals(cfg: dict[str, Any], eng: Any, prompt: Any, llm: Any) -> dict[str, Any]:
    """(d) for Search: one mutation per step (minibatch = batch, validation on 2 examples), each step valid
    when the proposer gave a usable new value; steps skipped because the parent was already perfect on the
    minibatch are not proposal attempts and are counted apart."""
    from textopt.datasets import exact_match
    from textopt.evaluate import Score

    def metric(ex: dict[str, str], out: Any) -> Any:
        ok = exact_match(out.text, ex["answer"])
        return Score(1.0 if ok else 0.0, _metric_feedback(out.text, ex["answer"]))

    async def forward(ex: dict[str, str]) -> Any:
        return await llm.acall(to.Variable(ex["question"], role="question"))

    b, val = cfg.get("batch", 1), cfg["train"][:2]
    search = to.Search([prompt], forward=forward, train=cfg["train"], val=val, metric=metric, engine=eng, minibatch=b,
                       iterations=cfg["steps"], merge=False, perfect=None, seed=0, progress=False)
    res = await search.afit()
    replies = _replies(eng, 0)
    steps: list[dict[str, Any]] = []
    skipped = 0
    for row in res.rows:
        if row.get("kind") != "mutation":
            continue
        if row.get("skipped"):
            skipped += 1
            continue
        usable = [p for p in row.get("proposals") or [] if str(p.get("value", "")).strip()]
        err = "" if usable else f"no usable proposal ({row.get('failures', 0)} failed)"
        steps.append({"valid": bool(usable), "changed": bool(usable), "error": err})
    return {"available": True, "before": [], "after": [], "steps": steps[: cfg["steps"]], "skipped_perfect": skipped,
            "final_prompt": prompt.value, "replies": replies}


def _metric_feedback(reply: str, answer: str) -> str:
    from textopt.datasets import exact_match

    ok = exact_match(reply, answer)
    return f"The correct answer is {answer}. The response is {'correct' if ok else 'wrong'}."


# -- (h) evaluation throughput -----------------------------------------------------------------------


async def throughput(cfg: dict[str, Any]) -> dict[str, Any]:
    """Evaluate the same examples at each concurrency with `to.evaluate` (one engine per level, allowing
    that many requests in flight); the questions carry the level so no level is served by a cache."""
    from textopt import datasets

    try:
        from textopt.evaluate import aevaluate
        how = "textopt.evaluate.aevaluate"
    except ImportError:  # the evaluation layer is not in this checkout yet: the same fan-out by hand
        aevaluate, how = None, "asyncio.gather + semaphore (textopt.evaluate not in this checkout)"
    labels = tuple(cfg["labels"])
    metric = datasets.label_metric(labels)
    runs = []
    # untimed warm-up on its own route: imports and the first client are not part of any level's time
    for run in [{"concurrency": 1, "base_url": cfg["warmup_url"], "warmup": True, "label": "warm-up"}] + cfg["runs"]:
        c = run["concurrency"]
        eng = to.get_engine("openai:" + cfg["model"], base_url=run["base_url"], max_tokens=cfg.get("max_tokens"),
                            timeout=120.0, max_concurrency=c)
        llm = to.LLM(eng)
        examples = [{"question": f"(level {run.get('label', c)}) {e['question']}", "answer": e["answer"]} for e in cfg["examples"]]
        if run.get("warmup"):
            examples = examples[:1]

        async def forward(ex: dict[str, str]) -> to.Variable:
            return await llm.acall(to.Variable(datasets.render(cfg["template"], ex["question"]), role="input"))

        t0 = time.perf_counter()
        if aevaluate is not None:
            report = await aevaluate(forward, examples, metric, concurrency=c)
            scores = [row.score for row in report.rows if row.score is not None]
            errors = sum(1 for row in report.rows if row.error)
            first_error = next((row.error for row in report.rows if row.error), None)
        else:
            sem = asyncio.Semaphore(c)

            async def one(ex: dict[str, str]) -> float:
                async with sem:
                    s = metric(ex, await forward(ex))
                    return float(getattr(s, "value", s[0] if isinstance(s, tuple) else s))

            scores, errors, first_error = list(await asyncio.gather(*(one(ex) for ex in examples))), 0, None
        if not run.get("warmup"):
            runs.append({"concurrency": c, "seconds": time.perf_counter() - t0, "scored": len(scores), "errors": errors,
                         **({"first_error": first_error[:300]} if first_error else {})})
    transport = getattr(eng, "transport", None)  # the openai engine's HTTP stack (aiohttp when installed)
    return {"available": True, "how": how + (f", openai engine on {transport}" if transport else ""), "runs": runs}


# -- (g) quality at equal budget ----------------------------------------------------------------------

TEMPLATE_ROLE = ("instruction template for a small classifier model; the text to classify goes where {input} "
                 "stands, and the reply must name exactly one label")


def _value(score: Any) -> float:
    """A metric result (Score, (value, feedback) tuple or number) as a float."""
    if isinstance(score, tuple):
        return float(score[0])
    return float(getattr(score, "value", score))


def _feedback(score: Any) -> str:
    return score[1] if isinstance(score, tuple) else getattr(score, "feedback", "")


class LabelProgram:
    """The program every optimizer trains: a trainable instruction template, rendered around the input in
    the user turn, one call to the task model. textopt writes it as its own label-task op does
    (`textopt.ops.instruction.InstructionCall`, as `textopt optimize` does): the template and the text are the
    op's inputs, and its backward hands the template what happened on this input (text, reply, verdict), as
    GEPA's reflective dataset does, with no LLM call. (Until 2026-12-07 it was `to.LLM` over a traced
    `fill(template, text)`: the LLM op's backward asked the optimizer model to critique the filled-in text,
    and a small model critiqued the sentence's content instead of the template.)"""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from textopt import datasets

        self.cfg = cfg
        self.task_engine = to.get_engine("openai:" + cfg["model"], base_url=cfg["task_url"], max_tokens=cfg["max_tokens"], timeout=900.0)
        # The optimizer's model: a separate reflection model when the harness gave one (--reflect-gguf).
        self.opt_engine = to.get_engine("openai:" + cfg.get("opt_model", cfg["model"]), base_url=cfg["opt_url"],
                                        max_tokens=cfg["opt_max_tokens"], timeout=900.0)
        # The guard `textopt optimize` puts on a label template (datasets.template_problem): {input} kept, no
        # stray slot, none of our tags, all labels or none. Without it, seed 1 of (g) on 2026-12-07 "gained"
        # with a template that pasted its feedback ("Expected label: positive") and one that echoed a label.
        check = getattr(datasets, "template_problem", None)  # older checkouts run without it
        self.template = to.Variable(cfg["seed_prompt"], role=TEMPLATE_ROLE, requires_grad=True, name="instruction_template",
                                    **({"validate": functools.partial(check, labels=tuple(cfg["labels"]))} if check else {}))
        self.metric = datasets.label_metric(tuple(cfg["labels"]))
        self.call = InstructionCall(self.task_engine)
        self.calls = 0

    async def forward(self, ex: Any) -> to.Variable:
        self.calls += 1
        q = ex["question"] if isinstance(ex, dict) else ex.question
        return await self.call.acall(self.template, to.Variable(q, role="text to classify"))

    def float_metric(self, ex: Any, out: to.Variable) -> float:
        return _value(self.metric(ex, out))

    async def loss(self, ex: Any, out: to.Variable) -> to.Variable:
        """TGD's loss: an LLM judge told the expected label and what the metric found (as TextGrad's is)."""
        why = _feedback(self.metric(ex, out))
        return await to.TextLoss(
            f"Text: {ex['question']}\nExpected label: {ex['answer']}\nCheck of the response: {why}\n"
            "Say in one or two sentences what the response should have said instead.",
            engine=self.opt_engine, max_tokens=120,
        ).acall(out)

    async def val_score(self, examples: list[dict[str, str]]) -> float:
        outs = await asyncio.gather(*(self.forward(ex) for ex in examples))
        return sum(self.float_metric(ex, o) for ex, o in zip(examples, outs)) / max(1, len(examples))


def quality(cfg: dict[str, Any]) -> dict[str, Any]:
    """One optimizer run at a budget of task-model calls; returns the final template, and with cfg["score"]
    its test score by the shared scorer (`score`, run here to save a process)."""
    out = _quality(cfg)
    if out.get("available") and cfg.get("score"):
        out["after_score"] = score({**cfg["score"], "prompts": [out["final_prompt"]]})["scores"][0]
    return out


def _quality(cfg: dict[str, Any]) -> dict[str, Any]:
    import os

    from textopt._sync import run_sync

    os.environ.setdefault("TQDM_DISABLE", "1")
    prog = LabelProgram(cfg)
    kind = cfg["optimizer"]
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent / "peers"))
    from _labels import run_schedule, schedule_steps

    if kind == "search":
        search = getattr(to, "Search", None)
        if search is None:
            return {"available": False, "reason": "to.Search is not in this checkout yet"}
        return _search(cfg, prog, search)
    if kind == "tgd":
        opt = to.TGD([prog.template], engine=prog.opt_engine)
        steps = schedule_steps(cfg["budget"], len(cfg["val"]), cfg["batch"])
        trainer = to.Trainer(prog.forward, prog.loss, opt, train=cfg["train"], val=cfg["val"], batch_size=cfg["batch"],
                             steps=steps, keep_best=True, metric=prog.float_metric, seed=cfg["seed"], progress=False,
                             backward_engine=prog.opt_engine, concurrency=4)
        hist = trainer.fit()
        rows = [{"step": r.get("step"), "val": r.get("val"), "accepted": r.get("accepted"), "failures": r.get("failures", 0)}
                for r in getattr(hist, "rows", []) if (r.get("step") or 0) > 0]
        return {"available": True, "final_prompt": prog.template.value, "task_calls": prog.calls, "steps": rows,
                "val_best": getattr(hist, "best_val", None), "failures": [f.error[:200] for f in opt.failures][:5], "how": "to.Trainer(TGD)"}
    opt = to.OptoPrime([prog.template], engine=prog.opt_engine, max_tokens=cfg["opt_max_tokens"])
    if hasattr(opt, "abackward"):
        # The optimizer contract's feedback hook: Trainer hands the summed loss to optimizer.abackward, and
        # OptoPrime reads its text as the feedback. The loss is the metric's verdict as a traced node (no LLM call).
        from textopt import datasets

        labels = tuple(cfg["labels"])

        @to.trace
        def verdict(reply: str, expected: str) -> str:
            """The label metric's verdict on the reply: correct, or which labels it named instead of the expected one."""
            return datasets.label_feedback(reply, expected, labels)[1]

        async def loss(ex: Any, out: to.Variable) -> to.Variable:
            return verdict(out, ex["answer"])

        steps = schedule_steps(cfg["budget"], len(cfg["val"]), cfg["batch"])
        trainer = to.Trainer(prog.forward, loss, opt, train=cfg["train"], val=cfg["val"], batch_size=cfg["batch"],
                             steps=steps, keep_best=True, metric=prog.float_metric, seed=cfg["seed"], progress=False,
                             concurrency=4)
        hist = trainer.fit()
        rows = [{"step": r.get("step"), "val": r.get("val"), "accepted": r.get("accepted"), "failures": r.get("failures", 0)}
                for r in getattr(hist, "rows", []) if (r.get("step") or 0) > 0]
        return {"available": True, "final_prompt": prog.template.value, "task_calls": prog.calls, "steps": rows,
                "val_best": getattr(hist, "best_val", None), "failures": [f.error[:200] for f in opt.failures][:5],
                "how": "to.Trainer(OptoPrime), loss = traced metric verdict"}
    # Older optimizer base without the feedback hook: the same schedule by hand (benchmarks/peers/_labels.py).

    async def astep(batch: list[dict[str, str]]) -> None:
        outs = await asyncio.gather(*(prog.forward(ex) for ex in batch))
        opt.zero_grad()
        for ex, o in zip(batch, outs):
            fb = _feedback(prog.metric(ex, o)) or "no feedback"
            if hasattr(opt, "abackward"):  # the optimizer contract's feedback hook
                await opt.abackward(o, fb)
            else:
                opt.backward(o, fb)
        await opt.astep()

    out = run_schedule(get=lambda: prog.template.value, set_=prog.template.set_value, step=lambda b: run_sync(astep(b)),
                       evaluate=lambda v: run_sync(prog.val_score(v)), train=cfg["train"], val=cfg["val"],
                       batch=cfg["batch"], budget=cfg["budget"], seed=cfg["seed"])
    out["task_calls"] = prog.calls
    return {"available": True, "final_prompt": prog.template.value, **out,
            "failures": [f.error[:200] for f in opt.failures][:5], "how": "OptoPrime, Trainer schedule by hand"}


def _search(cfg: dict[str, Any], prog: LabelProgram, search: Any) -> dict[str, Any]:
    """to.Search with its defaults (TGD proposer, merges on), the metric's feedback, the same budget."""
    s = search([prog.template], forward=prog.forward, train=cfg["train"], val=cfg["val"], metric=prog.metric,
               engine=prog.opt_engine, minibatch=cfg["batch"], budget=cfg["budget"], seed=cfg["seed"], progress=False)
    res = s.fit()
    best = res.best
    final = best.get(prog.template.name, prog.template.value) if isinstance(best, dict) else prog.template.value
    return {"available": True, "final_prompt": final, "task_calls": prog.calls, "val_best": res.best_val,
            "candidates": len(res.pool), "stopped": getattr(s, "stopped", None), "how": "to.Search (proposer tgd, merge on)"}


def score(cfg: dict[str, Any]) -> dict[str, Any]:
    """The shared scorer: each prompt rendered in the user turn around every test input, greedy, label metric."""
    from textopt import datasets

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    from prompt_spread import wilson

    eng = to.get_engine("openai:" + cfg["model"], base_url=cfg["base_url"], max_tokens=cfg["max_tokens"], timeout=900.0)
    metric = datasets.label_metric(tuple(cfg["labels"]))

    async def one(prompt: str) -> dict[str, Any]:
        replies = await asyncio.gather(*(eng.acomplete([{"role": "user", "content": datasets.render(prompt, ex["question"])}])
                                         for ex in cfg["test"]))
        k = int(sum(_value(metric(ex, r.text)) for ex, r in zip(cfg["test"], replies)))
        n = len(cfg["test"])
        lo, hi = wilson(k, n)
        return {"prompt": prompt, "correct": k, "n": n, "accuracy": k / n, "ci95": [lo, hi], "sample": [r.text for r in replies[:3]]}

    async def all_prompts() -> list[dict[str, Any]]:
        return [await one(p) for p in cfg["prompts"]]

    from textopt._sync import run_sync

    return {"available": True, "scores": run_sync(all_prompts())}


WORKLOADS = {"timing": timing, "prompt_size": prompt_size, "optimize": optimize, "throughput": throughput,
             "quality": quality, "score": score}


def main() -> None:
    workload, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    fn = WORKLOADS[workload]
    result = asyncio.run(fn(cfg)) if asyncio.iscoroutinefunction(fn) else fn(cfg)
    print("BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
