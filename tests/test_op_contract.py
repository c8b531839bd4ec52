"""The op contract (interface B): a typed OpContext, the objective flag, `describe`, one recording path.

`FillTemplate` below is a complete new op, written the way README_add_op describes: one class in one
place, with its own textual backward. It must show up well in OptoPrime's prompt and get gradients in
TGD's backward without the framework knowing anything about it.
"""
from __future__ import annotations

import dataclasses
import inspect
import json

import pytest

import textopt as to
import textopt.trace
from textopt.function import OpContext, OpDescription


# -- the example op: everything it needs is in this class -------------------------------------------
class FillTemplate(to.Function):
    """Puts an input into an instruction template (at {input}): the prompt a model then answers."""

    role = "prompt filled in from the template"

    async def forward(self, ctx: OpContext, template: to.Variable, x: to.Variable) -> str:
        ctx.args = [("template", template), ("input", x)]  # named, for describe()
        ctx.saved["had_slot"] = "{input}" in template.text
        return template.text.replace("{input}", x.text) if ctx.saved["had_slot"] else f"{template.text}\n{x.text}"

    async def backward(self, ctx, output, feedback, engine):
        template, x = output.parents
        if not template.requires_grad:
            return {}
        about = "It is the objective: fix what it criticises." if feedback.is_objective else f"Feedback: {feedback.text}"
        messages = [
            {"role": "system", "content": "You criticise instruction templates. Reply with a short list of changes."},
            {"role": "user", "content": f"Template: {template.text}\nFilled in: {output.text}\n{about}"},
        ]
        return {template: (await engine.acomplete(messages)).text.strip()}

    def describe(self, ctx, output):
        slot = "" if ctx.saved["had_slot"] else "template has no {input} slot: input appended"
        return OpDescription(name="fill_template", args=list(ctx.args), note=slot,
                             doc="Fills the instruction template with the input at {input}.")


def fill(template: to.Variable, x: to.Variable | str) -> to.Variable:
    return FillTemplate()(template, x)


# -- tests -------------------------------------------------------------------------------------------
def test_new_op_appears_in_optoprime_prompt_by_its_own_description():
    tmpl = to.Variable("Classify: {input}", role="instruction template", requires_grad=True, name="tmpl")
    engine = to.ScriptedEngine(json.dumps({"suggestion": {"tmpl": "Label the sentiment of: {input}"}, "reasoning": "r"}))
    prompt = fill(tmpl, to.Variable("great movie", role="review", name="review"))
    answer = to.LLMCall(to.ScriptedEngine("positive!!"))(prompt)
    opt = to.OptoPrime([tmpl], engine=engine)
    opt.backward(answer, "answer with one word")
    user = opt.messages()[-1]["content"]
    assert f"{prompt.name} = fill_template(template=tmpl, input=review)" in user
    assert "Fills the instruction template" in user  # its doc, once
    assert f"{answer.name} = LLMCall(input={prompt.name})" in user  # built-in ops describe themselves too
    opt.step()
    assert tmpl.value == "Label the sentiment of: {input}"


def test_new_op_note_shows_in_the_trace_line():
    tmpl = to.Variable("Classify.", role="instruction template", requires_grad=True, name="tmpl")
    out = fill(tmpl, "great movie")
    opt = to.OptoPrime([tmpl], engine=to.ScriptedEngine(""))
    opt.backward(out, "bad")
    assert "# template has no {input} slot" in opt.messages()[-1]["content"]


def test_new_op_gets_gradients_in_tgd_backward():
    def critic(messages):
        if "instruction templates" in messages[0]["content"]:
            return "ask for one word"
        return "negative" if "critic" not in messages[0]["content"] else "the label is wrong"

    eng = to.ScriptedEngine(critic)
    tmpl = to.Variable("Classify: {input}", role="instruction template", requires_grad=True, name="tmpl")
    answer = to.LLMCall(eng)(fill(tmpl, "great movie"))
    loss = to.TextLoss("Is the label right? The review is positive.", engine=eng)(answer)
    loss.backward(eng)
    assert [g.text for g in tmpl.gradients] == ["ask for one word"]
    # the op saw the LLMCall's feedback (not the objective itself)
    op_prompt = next(c[-1]["content"] for c in eng.calls if "instruction templates" in c[0]["content"])
    assert "Feedback: the label is wrong" in op_prompt


def test_op_context_is_typed_and_filled_by_the_framework():
    eng = to.ScriptedEngine("reply")
    sys_prompt = to.Variable("Be brief.", role="system prompt", requires_grad=True, name="sp")
    out = to.LLM(eng, system_prompt=sys_prompt)(to.Variable("q?", role="question", name="q"))
    assert dataclasses.is_dataclass(out.ctx) and isinstance(out.ctx, OpContext)
    assert out.ctx.engine is eng and out.ctx.error is None
    assert [(k, v.name) for k, v in out.ctx.args] == [("system", "sp"), ("input", "q")]
    s = to.aggregate([out, out])
    assert [k for k, _ in s.ctx.args] == ["", ""]  # positional by default
    assert not hasattr(OpContext(), "get")  # no dict-style access left


def test_objective_flag_is_carried_by_the_graph_not_guessed_from_texts():
    eng = to.ScriptedEngine(lambda m: "ok" if "critic" not in m[0]["content"] else "tighten it")
    p = to.Variable("P", role="system prompt", requires_grad=True)
    out = to.LLM(eng, system_prompt=p)(to.Variable("q", role="question"))
    loss = to.TextLoss("good?", engine=eng)(out)
    assert loss.is_loss and not out.is_loss
    assert to.aggregate([loss, loss]).is_loss and not to.aggregate([out, loss]).is_loss
    assert not hasattr(loss, "is_objective")  # the objective marker is on Feedback only

    class Echo(to.Function):
        """Sends its input's own text back as feedback (the old text comparison took that for an objective)."""

        async def forward(self, ctx, x):
            return x.text

        async def backward(self, ctx, output, feedback, engine):
            return {output.parents[0]: output.parents[0].text}

    echoed = Echo()(out)
    eng.calls.clear()
    echoed.backward(eng)
    user = eng.calls[-1][-1]["content"]
    assert "Feedback on that output" in user and "This output is the objective" not in user


def test_sum_hands_objective_to_each_input():
    eng = to.ScriptedEngine(lambda m: "ok" if "critic" not in m[0]["content"] else "tighten it")
    p = to.Variable("P", role="system prompt", requires_grad=True)
    llm = to.LLM(eng, system_prompt=p)
    outs = [llm(to.Variable(f"q{i}", role="question")) for i in range(2)]
    eng.calls.clear()
    to.aggregate(outs).backward(eng)  # no losses: the sum itself is the objective, so each output is one
    assert len(eng.calls) == 2 and all("This output is the objective" in c[-1]["content"] for c in eng.calls)
    assert len(p.gradients) == 2
    # the objective was a message of that pass, not a mark on the graph: from a consumer, an output is criticised
    assert not any(o.is_loss for o in outs)
    eng.calls.clear()
    to.LLMCall(eng)(outs[0]).backward(eng)
    assert "Feedback on that output" in eng.calls[-1][-1]["content"]


def _backward_prompts_about(eng, output_text):
    """The user messages of the gradient calls whose <output> block is `output_text`."""
    return [c[-1]["content"] for c in eng.calls if f"<output>\n{output_text}\n</output>" in c[-1]["content"]]


def test_aggregate_of_two_losses_sends_each_loss_its_own_text_as_the_objective():
    def reply(messages):
        system, user = messages[0]["content"], messages[-1]["content"]
        if "critic" in system:
            return "tighten it"
        if system == "good?":  # the judge
            return "verdict A: too long" if user == "answer 0" else "verdict B: off topic"
        return f"answer {user[-1]}"

    eng = to.ScriptedEngine(reply)
    p = to.Variable("P", role="system prompt", requires_grad=True)
    llm = to.LLM(eng, system_prompt=p)
    outs = [llm(to.Variable(f"q{i}", role="question")) for i in range(2)]
    losses = [to.TextLoss("good?", engine=eng)(o) for o in outs]
    assert [l.text for l in losses] == ["verdict A: too long", "verdict B: off topic"]
    eng.calls.clear()
    to.aggregate(losses).backward(eng)
    for loss in losses:  # each loss's backward saw that loss's own text as the objective, not the joined sum
        (prompt,) = _backward_prompts_about(eng, loss.text)
        assert "This output is the objective" in prompt and "<feedback>" not in prompt
    assert not _backward_prompts_about(eng, "verdict A: too long\n\nverdict B: off topic")
    assert len(p.gradients) == 2 and all(g.text == "tighten it" for g in p.gradients)


def test_a_loss_no_consumer_criticised_is_still_the_objective():
    class Quiet(to.Function):
        """Consumes a value and sends nothing back (a custom op may do so)."""

        async def forward(self, ctx, x):
            return x.text

        async def backward(self, ctx, output, feedback, engine):
            return {}

    eng = to.ScriptedEngine(lambda m: "tighten it" if "critic" in m[0]["content"] else
                            "verdict: wrong" if m[0]["content"] == "good?" else "an answer")
    p = to.Variable("P", role="system prompt", requires_grad=True)
    loss = to.TextLoss("good?", engine=eng)(to.LLM(eng, system_prompt=p)(to.Variable("q", role="question")))
    eng.calls.clear()
    Quiet()(loss).backward(eng)
    (prompt,) = _backward_prompts_about(eng, "verdict: wrong")
    assert "This output is the objective" in prompt
    assert [g.text for g in p.gradients] == ["tighten it"]


def test_error_node_from_any_op_goes_through_the_one_recording_path():
    class Parse(to.Function):
        """Reads an integer."""

        async def forward(self, ctx, x):
            try:
                return int(x.text)
            except ValueError as exc:
                ctx.error = exc
                return f"could not read an integer from {x.text!r}"

    x = to.Variable("seven", role="answer", requires_grad=True, name="x")
    with pytest.raises(to.OpError) as info:
        Parse()(x)
    err = info.value.variable
    assert err.parents == (x,) and err.role == "error raised by Parse" and isinstance(info.value.__cause__, ValueError)
    assert to.graph(err).nodes[err.name]["kind"] == "error"


def test_traced_calls_are_recorded_by_the_op_not_by_hand():
    @to.trace
    def double(s: str) -> str:
        """Doubles the text."""
        return s * 2

    x = to.Variable("ab", role="text", requires_grad=True, name="x")
    out = double(x)
    assert out.grad_fn is double.op and isinstance(out.ctx, OpContext)
    assert out.ctx.args == [("s", x)] and "call" not in out.ctx.saved  # call-time plain values aren't kept
    desc = out.grad_fn.describe(out.ctx, out)
    assert desc.name == "double" and "Doubles the text." in desc.doc and "def double" in desc.doc
    src = inspect.getsource(textopt.trace)
    assert ".grad_fn =" not in src and ".ctx =" not in src
    assert asyncio_run(double.op.apply([x], OpContext(args=[("s", x)], saved={"source": None, "code": None, "call": (("cd",), {})}))).value == "cdcd"


def asyncio_run(coro):
    import asyncio

    return asyncio.run(coro)


def _cycle():
    a = to.Variable("a", role="first", requires_grad=True, name="A")
    b = to.Variable("b", role="second", requires_grad=True, parents=[a], name="B")
    a.parents = (b,)  # re-pointing parents by hand makes a cycle
    return a, b


def test_every_graph_walk_reports_a_cycle_the_same_way():
    a, b = _cycle()
    with pytest.raises(to.GraphError, match="cycle through variable"):
        to.graph(b)
    with pytest.raises(to.GraphError, match="cycle through variable"):
        to.OptoPrime([a], engine=to.ScriptedEngine("")).backward(b, "bad")
    b.grad_fn, b.ctx = to.ops.Sum(), OpContext()
    with pytest.raises(to.GraphError, match="cycle through variable"):
        b.backward(to.ScriptedEngine(""))
