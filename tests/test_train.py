"""Trainer logic on the scripted engine: minibatches, concurrency, revert-if-worse, early stop, budgets,
checkpoints, and resume of a Python-made run."""
from __future__ import annotations

import asyncio
import json

import pytest

import textopt as to
from textopt.datasets import Example
from textopt.engines.fake import FakeEngine

DATA = [Example(f"What is {i} + 1?", str(i + 1)) for i in range(12)]


def make(reply, *, latency=0.0, name="prompt", value="Answer.", **kw):
    engine = to.ScriptedEngine(reply, latency=latency)
    prompt = to.Variable(value, role="system prompt", requires_grad=True, name=name)
    llm = to.LLM(engine, system_prompt=prompt)
    opt = to.TGD([prompt], engine=engine)

    async def forward(ex):
        return await llm.acall(to.Variable(ex.question, role="question"))

    async def loss(ex, out):
        return await to.TextLoss(f"The answer is {ex.answer}.", engine=engine).acall(out)

    return engine, prompt, opt, forward, loss


def update_reply(new_value):
    return json.dumps({"reasoning": "r", "new_value": new_value})


def good_then_bad(messages):
    """Forward answers right while the prompt says GOOD and not BAD; the 1st update says GOOD, the 2nd BAD."""
    system = messages[0]["content"]
    last = messages[-1]["content"]
    if '"new_value"' in system:
        return update_reply("GOOD BAD prompt" if "GOOD" in last else "GOOD prompt")
    if "The answer is" in system or "<output>" in last or "evaluation" in last.lower():
        return "wrong, fix it"
    number = int(last.split("is ")[1].split(" ")[0]) + 1
    if "GOOD" in system and "BAD" not in system:
        return f"It is {number}."
    return "It is 0."


def test_revert_if_worse_keeps_the_better_value_and_records_the_rejection(tmp_path):
    engine, prompt, opt, forward, loss = make(good_then_bad)
    trainer = to.Trainer(forward, loss, opt, train=DATA[:4], val=DATA[4:8], batch_size=2, steps=2, run_dir=tmp_path / "run")
    history = trainer.fit()
    assert [r["val"] for r in history.rows] == [0.0, 1.0, 0.0]
    assert [r["accepted"] for r in history.rows] == [True, True, False]
    assert history.rejected == [2]
    assert prompt.value == "GOOD prompt"  # the worse update was reverted
    assert history.final == {"prompt": "GOOD prompt"}
    assert to.load(tmp_path / "run" / "parameters.json") == {"prompt": "GOOD prompt"}
    assert history.best_val == 1.0

    engine, prompt, opt, forward, loss = make(good_then_bad)
    h = to.Trainer(forward, loss, opt, train=DATA[:4], val=DATA[4:8], batch_size=2, steps=2, keep_best=False).fit()
    assert prompt.value == "GOOD BAD prompt" and h.rejected == []


def test_early_stop_after_patience_steps_without_gain():
    reply = lambda m: update_reply("same") if '"new_value"' in m[0]["content"] else "It is 0."  # noqa: E731
    _, _, opt, forward, loss = make(reply)
    h = to.Trainer(forward, loss, opt, train=DATA, val=DATA[:2], batch_size=2, steps=10, patience=2).fit()
    assert h.stopped == "early_stop"
    assert [r["step"] for r in h.rows] == [0, 1, 2]


def test_batch_forwards_run_concurrently_under_the_limit_and_one_update_per_step():
    reply = lambda m: update_reply("p2") if '"new_value"' in m[0]["content"] else "It is 1."  # noqa: E731
    for concurrency, expected in ((8, 6), (2, 2)):
        engine, _, opt, forward, loss = make(reply, latency=0.05)
        live = {"now": 0, "max": 0}

        async def counted(ex):
            live["now"] += 1
            live["max"] = max(live["max"], live["now"])
            try:
                return await forward(ex)
            finally:
                live["now"] -= 1

        trainer = to.Trainer(counted, loss, opt, train=DATA[:6], batch_size=6, steps=1, concurrency=concurrency)
        h = trainer.fit()
        assert live["max"] == expected
        updates = [c for c in engine.calls if '"new_value"' in c[0]["content"]]
        assert len(updates) == 1 and opt.steps == 1  # one backward over the summed losses, one update
        assert h.rows[-1]["calls"] == len(engine.calls)


def test_sync_forward_and_loss_work_too():
    reply = lambda m: update_reply("p2") if '"new_value"' in m[0]["content"] else "It is 1."  # noqa: E731
    engine = to.ScriptedEngine(reply, latency=0.02)
    prompt = to.Variable("p", role="system prompt", requires_grad=True, name="p")
    llm = to.LLM(engine, system_prompt=prompt)
    forward = lambda ex: llm(to.Variable(ex.question, role="question"))  # noqa: E731  (sync: runs in a thread)
    loss = lambda ex, out: to.TextLoss("judge", engine=engine)(out)  # noqa: E731
    h = to.Trainer(forward, loss, to.TGD([prompt], engine=engine), train=DATA[:4], val=DATA[:2], batch_size=4, steps=1).fit()
    assert prompt.value == "p2" and h.rows[-1]["val"] == 0.5 and engine.max_in_flight >= 2


def test_epochs_cover_every_example_once_per_epoch():
    reply = lambda m: update_reply("p2") if '"new_value"' in m[0]["content"] else "It is 1."  # noqa: E731
    _, _, opt, forward, loss = make(reply)
    seen = []

    async def recording(ex):
        seen.append(ex.question)
        return await forward(ex)

    trainer = to.Trainer(recording, loss, opt, train=DATA[:5], batch_size=2, epochs=2)
    assert trainer.total_steps == 6
    h = trainer.fit()
    assert opt.steps == 6 and h.stopped == "completed" and [r["epoch"] for r in h.rows] == [0, 1, 1, 1, 2, 2, 2]
    assert sorted(seen[:5]) == sorted(e.question for e in DATA[:5]) and sorted(seen[5:]) == sorted(seen[:5])


def test_token_and_call_budgets_stop_cleanly_with_everything_saved(tmp_path):
    reply = lambda m: update_reply("p+") if '"new_value"' in m[0]["content"] else "It is 1."  # noqa: E731
    _, prompt, opt, forward, loss = make(reply)
    h = to.Trainer(forward, loss, opt, train=DATA, batch_size=2, steps=10, budget_tokens=1,
                   run_dir=tmp_path / "tok").fit()
    assert h.stopped == "budget_tokens" and h.rows[-1]["step"] == 1
    saved = json.loads((tmp_path / "tok" / "checkpoint.json").read_text())
    assert saved["stopped"] == "budget_tokens" and saved["step"] == 1 and saved["parameters"] == {"prompt": prompt.value}

    _, _, opt, forward, loss = make(reply)
    h = to.Trainer(forward, loss, opt, train=DATA, batch_size=2, steps=10, budget_calls=9).fit()
    assert h.stopped == "budget_calls" and sum(r["calls"] for r in h.rows) >= 9 and len(h.rows) - 1 < 10


def test_engine_budget_mid_step_rolls_back_to_the_last_completed_step(tmp_path):
    reply = lambda m: update_reply(m[-1]["content"][-3:] + "+") if '"new_value"' in m[0]["content"] else "It is 1."  # noqa: E731
    engine, prompt, opt, forward, loss = make(reply)
    engine.budget_tokens = 400
    trainer = to.Trainer(forward, loss, opt, train=DATA, batch_size=2, steps=20, run_dir=tmp_path / "run")
    h = trainer.fit()
    assert h.stopped == "budget_engine"
    saved = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert saved["step"] == len(h.rows) - 1 and saved["parameters"]["prompt"] == prompt.value
    assert saved["cursor"] == trainer.state.cursor


def test_checkpoint_after_every_step_holds_the_whole_state(tmp_path):
    reply = lambda m: update_reply("next") if '"new_value"' in m[0]["content"] else "It is 1."  # noqa: E731
    _, prompt, opt, forward, loss = make(reply)
    seen = []

    def log(event):
        if event["event"] == "step":
            seen.append(json.loads((tmp_path / "run" / "checkpoint.json").read_text()))

    to.Trainer(forward, loss, opt, train=DATA[:4], val=DATA[:2], batch_size=2, steps=2, run_dir=tmp_path / "run",
               callbacks=[log]).fit()
    assert [s["step"] for s in seen] == [0, 1, 2]
    last = seen[-1]
    assert set(last) >= {"parameters", "optimizer", "history", "rng", "order", "usage", "best_val"}
    assert last["optimizer"]["steps"] == 2 and len(last["history"]["rows"]) == 3
    spec = json.loads((tmp_path / "run" / "spec.json").read_text())
    assert spec["kind"] == "trainer" and spec["recipe"] is None and spec["options"]["steps"] == 2
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(FileExistsError, match="resume"):
        to.Trainer(forward, loss, opt, train=DATA[:4], steps=1, run_dir=tmp_path / "run").fit()


def test_python_run_interrupted_then_resumed_ends_like_an_uninterrupted_run(tmp_path):
    cache = tmp_path / "cache"

    class Flaky(FakeEngine):
        def __init__(self, fail_after=None, **kw):
            super().__init__(**kw)
            self.n, self.fail_after = 0, fail_after

        async def _acomplete(self, request):
            self.n += 1
            if self.fail_after is not None and self.n > self.fail_after:
                raise ConnectionResetError("provider went away")
            return await super()._acomplete(request)

    def build(fail_after=None):
        engine = Flaky(fail_after, cache=str(cache), retries=0)
        prompt = to.Variable("Answer.", role="system prompt", requires_grad=True, name="prompt")
        llm = to.LLM(engine, system_prompt=prompt)

        async def forward(ex):
            return await llm.acall(to.Variable(ex.question, role="question"))

        async def loss(ex, out):
            return await to.TextLoss(f"The answer is {ex.answer}.", engine=engine).acall(out)

        return dict(forward=forward, loss=loss, optimizer=to.TGD([prompt], engine=engine, memory=2)), engine

    kw = dict(train=DATA[:8], val=DATA[8:12], batch_size=2, steps=4, seed=3)
    parts, _ = build(fail_after=40)
    with pytest.raises(to.EngineError):
        to.Trainer(**parts, **kw, run_dir=tmp_path / "a").fit()
    done = json.loads((tmp_path / "a" / "checkpoint.json").read_text())["step"]
    assert 0 < done < 4

    with pytest.raises(TypeError, match="forward"):
        to.resume(tmp_path / "a")
    parts, _ = build()
    with pytest.raises(ValueError, match="train data differs"):
        to.resume(tmp_path / "a", **parts, train=DATA[1:9], val=DATA[8:12])
    parts, engine = build()
    resumed = to.resume(tmp_path / "a", **parts, train=DATA[:8], val=DATA[8:12])
    assert resumed.global_step == done
    h1 = resumed.fit()

    parts, engine2 = build()
    h2 = to.Trainer(**parts, **kw, run_dir=tmp_path / "b").fit()
    assert engine2.usage.calls == 0  # every request of the run was already paid for and cached
    assert h1.final == h2.final
    strip = lambda h: [(r["step"], r["train"], r["val"], r["accepted"]) for r in h.rows]  # noqa: E731
    assert strip(h1) == strip(h2)


def test_history_summary_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    engine, prompt, opt, forward, loss = make(good_then_bad)
    h = to.Trainer(forward, loss, opt, train=DATA[:4], val=DATA[4:8], batch_size=2, steps=2, run_dir=tmp_path / "r").fit()
    text = h.summary()
    assert "-Answer." in text and "+GOOD prompt" in text and "rejected steps: [2]" in text
    fig = h.plot(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == 3
    assert to.History.load(tmp_path / "r").rows == h.rows


def test_bad_arguments_get_clear_errors():
    _, _, opt, forward, loss = make("x")
    with pytest.raises(ValueError, match="train is empty"):
        to.Trainer(forward, loss, opt, train=[])
    with pytest.raises(ValueError, match="batch_size"):
        to.Trainer(forward, loss, opt, train=DATA, batch_size=0)
    with pytest.raises(TypeError, match="Optimizer"):
        to.Trainer(forward, loss, object(), train=DATA)

    async def not_a_variable(ex):
        return "text"

    with pytest.raises(TypeError, match="must return a textopt Variable"):
        to.Trainer(not_a_variable, loss, opt, train=DATA, steps=1).fit()


def test_progress_bar_only_when_asked_or_on_a_terminal(capsys):
    reply = lambda m: update_reply("p2") if '"new_value"' in m[0]["content"] else "It is 1."  # noqa: E731
    _, _, opt, forward, loss = make(reply)
    to.Trainer(forward, loss, opt, train=DATA[:4], batch_size=2, steps=2).fit()  # stderr is not a terminal here
    assert capsys.readouterr().err == ""
    _, _, opt, forward, loss = make(reply)
    to.Trainer(forward, loss, opt, train=DATA[:4], batch_size=2, steps=2, progress=True).fit()
    err = capsys.readouterr().err
    assert "2/2" in err and "tokens=" in err


def test_a_sync_metric_that_calls_an_llm_works_under_the_trainer():
    """Sync user code (forward, loss, metric) may make sync LLM calls: the Trainer must not run it on the
    textopt loop, where a sync call could only raise or deadlock."""
    judge = to.ScriptedEngine("yes")
    engine, prompt, opt, forward, loss = make(lambda m: update_reply("Answer with a number.") if '"new_value"' in m[0]["content"] else "2")

    def llm_metric(example, output):
        verdict = judge.complete([{"role": "user", "content": f"Is {output.text!r} equal to {example.answer}?"}])
        return 1.0 if verdict.text == "yes" else 0.0

    history = to.Trainer(forward, loss, opt, train=DATA[:2], val=DATA[2:3], batch_size=2, steps=1, metric=llm_metric).fit()
    assert history.rows[-1]["train"] == 1.0 and len(judge.calls) == 2 + 2  # two train examples, val before and after
