"""The optimizer contract (interface C): one feedback hook, subclasses only propose, the base applies,
re-asks once at a higher temperature when nothing changed, and reports reasoning and diffs."""
from __future__ import annotations

import json

import pytest

import textopt as to
from textopt.datasets import Example
from textopt.optim.base import Proposal


def tgd_reply(value, reasoning="r"):
    return json.dumps({"reasoning": reasoning, "new_value": value})


def op_reply(reasoning="r", **suggestion):
    return json.dumps({"suggestion": suggestion, "reasoning": reasoning})


@to.trace
def build(instruction: str, question: str) -> str:
    """Puts the instruction in front of the question."""
    return f"{instruction}\n{question}"


# -- Trainer + OptoPrime -----------------------------------------------------------------------------
def test_trainer_with_optoprime_updates_the_parameter(tmp_path):
    def reply(messages):
        system = messages[0]["content"]
        if '"suggestion"' in system:
            return op_reply(instruction="Answer with the number only.", reasoning="the answers ramble")
        if "Is the answer" in system:
            return "wrong: the answer must be a number"
        return "I think it is probably some number"

    engine = to.ScriptedEngine(reply)
    instruction = to.Variable("Answer.", role="instruction", requires_grad=True, name="instruction")
    opt = to.OptoPrime([instruction], engine=engine)
    data = [Example(f"What is {i} + 1?", str(i + 1)) for i in range(4)]

    async def forward(ex):
        return await to.LLMCall(engine).acall(build(instruction, ex.question))

    async def loss(ex, out):
        return await to.TextLoss(f"Is the answer {ex.answer}?", engine=engine).acall(out)

    to.Trainer(forward, loss, opt, train=data, batch_size=2, steps=1, run_dir=tmp_path / "run").fit()
    assert opt.steps > 0 and instruction.value == "Answer with the number only."
    assert opt.last.changed["instruction"] == ("Answer.", "Answer with the number only.")
    assert opt.last.reasoning["instruction"] == "the answers ramble"
    step_prompt = next(c for c in engine.calls if '"suggestion"' in c[0]["content"])[-1]["content"]
    assert "wrong: the answer must be a number" in step_prompt  # the losses reached it through abackward
    assert instruction.gradients == []  # no stale gradients pile up


# -- one hook, the same in a hand loop ----------------------------------------------------------------
def test_feedback_reaches_tgd_and_optoprime_through_the_same_hook():
    for make, reply in ((to.TGD, tgd_reply("new")), (to.OptoPrime, op_reply(p="new"))):
        p = to.Variable("old", role="prompt", requires_grad=True, name="p")
        out = build(p, "q")
        engine = to.ScriptedEngine(lambda m, r=reply: r if ("new_value" in m[0]["content"] or '"suggestion"' in m[0]["content"]) else "be newer")
        opt = make([p], engine=engine)
        opt.zero_grad()
        opt.backward(out, "should say new")
        report = opt.step()
        assert p.value == "new" and report.changed == {"p": ("old", "new")}, make
        assert "should say new" in "".join(c[-1]["content"] for c in engine.calls)


def test_zero_grad_clears_what_each_optimizer_reads():
    p = to.Variable("old", role="prompt", requires_grad=True, name="p")
    out = build(p, "q")
    tgd = to.TGD([p], engine=to.ScriptedEngine("be newer"))
    tgd.backward(out, "bad")
    assert p.gradients
    tgd.zero_grad()
    assert p.gradients == []
    engine = to.ScriptedEngine(op_reply(p="new"))
    opt = to.OptoPrime([p], engine=engine)
    opt.backward(out, "bad")
    opt.zero_grad()
    report = opt.step()
    assert engine.calls == [] and report.changed == {} and p.value == "old"


class Shout(to.Optimizer):
    """A whole optimizer: it only proposes."""

    async def propose(self, params, *, temperature, rejected):
        return {p: Proposal(p.text.upper() + "!", reasoning="louder") for p in params if p.gradients}


def test_a_subclass_only_proposes_and_the_base_does_the_rest():
    p = to.Variable("hi", role="greeting", requires_grad=True, name="g")
    opt = Shout([p], memory=1)
    opt.backward(p, "too quiet")  # feedback straight onto a parameter works too
    report = opt.step()
    assert p.value == "HI!" and report.reasoning == {"g": "louder"} and "-hi" in report.diff() and "+HI!" in report.diff()
    state = json.loads(json.dumps(opt.state_dict()))
    fresh = Shout([p], memory=1)
    fresh.load_state_dict(state)
    assert fresh.steps == 1 and fresh.last.changed == {"g": ("hi", "HI!")} and fresh.window("g") == [("hi", "")]


# -- no change: recorded, asked again hotter, told what was rejected ------------------------------------
def test_tgd_no_change_is_recorded_and_re_asked_at_a_higher_temperature_naming_the_value():
    p = to.Variable("Answer.", role="system prompt", requires_grad=True, name="sys")
    p.add_gradient("be precise")
    engine = to.ScriptedEngine([tgd_reply("Answer."), tgd_reply("Answer precisely.")])
    opt = to.TGD([p], engine=engine, temperatures=(0.0, 0.9))
    report = opt.step()
    assert p.value == "Answer precisely."
    [failure] = report.failures
    assert failure.kind == "no change" and failure.variable == "sys" and opt.failures == [failure]
    assert [r.options["temperature"] for r in engine.requests] == [0.0, 0.9]
    retry = engine.calls[1][-1]["content"]
    assert "rejected" in retry and "<rejected>\nAnswer.\n</rejected>" in retry


def test_optoprime_no_change_is_re_asked_and_schedule_is_configurable():
    p = to.Variable("Answer.", role="instruction", requires_grad=True, name="instruction")
    out = build(p, "q")
    engine = to.ScriptedEngine([op_reply(instruction="Answer."), op_reply(instruction="Answer."), op_reply(instruction="Answer.")])
    opt = to.OptoPrime([p], engine=engine, temperatures=(None, 0.5, 1.0))
    opt.backward(out, "too vague")
    report = opt.step()
    assert p.value == "Answer." and [f.kind for f in report.failures] == ["no change"] * 3
    assert len(engine.calls) == 3 and [r.options.get("temperature") for r in engine.requests] == [0.0, 0.5, 1.0]
    assert "instruction: <rejected>\nAnswer.\n</rejected>" in engine.calls[1][-1]["content"]


def test_optoprime_value_repeated_beside_a_change_means_leave_it():
    a = to.Variable("a", role="first", requires_grad=True, name="first")
    b = to.Variable("b", role="second", requires_grad=True, name="second")
    out = to.Variable("o", role="out", parents=[a, b], requires_grad=True)
    opt = to.OptoPrime([a, b], engine=to.ScriptedEngine(op_reply(first="A", second="b")))
    opt.backward(out, "bad")
    report = opt.step()
    assert report.changed == {"first": ("a", "A")} and report.failures == []


def test_one_repair_helper_for_every_optimizer():
    import textopt.optim.optoprime as optoprime
    import textopt.optim.tgd as tgd

    for mod in (tgd, optoprime):
        src = open(mod.__file__).read()
        assert "repair.j2" not in src and "def _ask" not in src  # both use Optimizer.ask_json

    class Asker(to.Optimizer):
        async def propose(self, params, *, temperature, rejected):
            obj, _ = await self.ask_json([{"role": "user", "content": "go"}], {"properties": {"v": {}}}, ["v"],
                                         engine=self.engine, temperature=temperature)
            return {params[0]: Proposal(obj["v"])}

    p = to.Variable("x", role="r", requires_grad=True, name="x")
    engine = to.ScriptedEngine(["no json", '{"v": "y"}'])
    assert Asker([p], engine=engine).step().changed == {"x": ("x", "y")}
    assert "could not be used" in engine.calls[1][-1]["content"]
    bad = Asker([p], engine=to.ScriptedEngine("never json"))
    bad.step()
    assert bad.failures[0].kind == "reply" and "repair" in bad.failures[0].error


def test_strict_raises_after_recording():
    p = to.Variable("Answer.", role="system prompt", requires_grad=True, name="sys")
    p.add_gradient("be precise")
    opt = to.TGD([p], engine=to.ScriptedEngine(tgd_reply("Answer.")), strict=True, temperatures=(None,))
    with pytest.raises(to.UpdateError, match="unchanged"):
        opt.step()
    assert opt.failures[0].kind == "no change"


def test_memory_window_is_shared_and_bounded():
    p = to.Variable("v0", role="prompt", requires_grad=True, name="p")
    replies = iter(tgd_reply(f"v{i}") for i in range(1, 10))
    opt = to.TGD([p], engine=to.ScriptedEngine(lambda m: next(replies)), memory=2)
    for i in range(4):
        p.zero_grad()
        p.add_gradient(f"feedback {i}")
        opt.step()
    assert [s.values["p"] for s in opt.past] == ["v2", "v3"] and opt.window("p") == [("v2", "feedback 2"), ("v3", "feedback 3")]
    with pytest.raises(ValueError, match="memory"):
        to.TGD([p], memory=-1)


# -- on the real model: properties that hold on every run ---------------------------------------------
@pytest.mark.local
def test_tgd_step_on_the_local_model_changes_the_value_or_records_why_not(local_engine):
    p = to.Variable("Answer.", role="system prompt of a math assistant", requires_grad=True, name="sys")
    opt = to.TGD([p], engine=local_engine, max_tokens=120)
    opt.backward(p, "The answers must end with the final number alone on the last line.")
    before = len(local_engine.history)
    report = opt.step()
    assert len(local_engine.history) - before <= 4  # ask (+ repair), and at most one re-ask (+ repair)
    assert report.changed or report.failures
    if report.changed:
        assert p.value != "Answer." and p.value.strip() and p.value.encode("utf-8")
    else:
        assert p.value == "Answer." and all(f.kind and f.error for f in report.failures)
