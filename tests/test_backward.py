"""The textual backward pass: who gets feedback, accumulation, concurrency, bounded condensation."""
from __future__ import annotations

import asyncio
import time

import pytest

import textopt as to
from textopt.backward import GRADIENT_CHARS, GROUP_SIZE, feedback_text


def critic(messages):
    system = messages[0]["content"]
    if "merge several pieces of feedback" in system:
        return "MERGED: " + str(messages[-1]["content"].count("<feedback>")) + " items"
    if "critic" in system:
        return "make it shorter"
    return "some answer"


def test_feedback_reaches_trainable_inputs_only():
    eng = to.ScriptedEngine(critic)
    prompt = to.Variable("Be helpful.", role="system prompt", requires_grad=True)
    q = to.Variable("2+2?", role="question")
    loss = to.TextLoss("Is the answer 4?", engine=eng)(to.LLM(eng, system_prompt=prompt)(q))
    loss.backward(eng)
    assert [g.text for g in prompt.gradients] == ["make it shorter"]
    assert q.gradients == []
    # 2 forward calls + loss->response + response->prompt
    assert len(eng.calls) == 4


def test_feedback_from_several_consumers_accumulates():
    eng = to.ScriptedEngine(critic)
    prompt = to.Variable("Be helpful.", role="system prompt", requires_grad=True)
    llm = to.LLM(eng, system_prompt=prompt)
    losses = [to.TextLoss("ok?", engine=eng)(llm(to.Variable(f"q{i}", role="question"))) for i in range(3)]
    to.aggregate(losses).backward(eng)
    assert len(prompt.gradients) == 3
    assert {g.source_role for g in prompt.gradients} == {"response from the language model"}


def test_objective_prompt_shows_output_not_feedback():
    eng = to.ScriptedEngine(critic)
    prompt = to.Variable("P", role="system prompt", requires_grad=True)
    out = to.LLM(eng, system_prompt=prompt)(to.Variable("q", role="question"))
    out.backward(eng)
    user = eng.calls[-1][-1]["content"]
    assert "This output is the objective" in user and "<feedback>" not in user


def _fan_in(eng, width):
    prompt = to.Variable("P", role="system prompt", requires_grad=True)
    llm = to.LLM(eng, system_prompt=prompt)
    outs = [llm(to.Variable(f"q{i}", role="question")) for i in range(width)]
    return prompt, to.aggregate([to.TextLoss("ok?", engine=eng)(o) for o in outs])


def test_independent_gradient_calls_run_concurrently():
    latency = 0.1
    eng = to.ScriptedEngine(critic, latency=latency, max_concurrency=16)
    prompt, total = _fan_in(eng, 8)
    eng.calls.clear()
    start = time.perf_counter()
    total.backward(eng)
    elapsed = time.perf_counter() - start
    assert len(eng.calls) == 16  # 8 loss backwards + 8 response backwards
    # critical path is two calls deep; sequential would be 16 x 0.1 s
    assert eng.max_in_flight == 8
    assert elapsed < 16 * latency / 2, elapsed


def test_concurrency_limit_is_respected():
    eng = to.ScriptedEngine(critic, latency=0.02, max_concurrency=3)
    _, total = _fan_in(eng, 8)
    eng.max_in_flight = 0
    total.backward(eng)
    assert eng.max_in_flight == 3


def test_chain_runs_in_dependency_order():
    eng = to.ScriptedEngine(critic)
    x = to.Variable("start", role="draft", requires_grad=True)
    v = x
    for _ in range(5):
        v = to.LLM(eng)(v)
    v.backward(eng)
    assert len(x.gradients) == 1
    # every backward prompt after the first carries the feedback of its consumer
    backward_prompts = [c[-1]["content"] for c in eng.calls[5:]]
    assert "This output is the objective" in backward_prompts[0]
    assert all("make it shorter" in p for p in backward_prompts[1:])


@pytest.mark.parametrize("n", [8, 64])
def test_many_gradients_are_condensed_into_a_bounded_text(n):
    eng = to.ScriptedEngine(critic)
    v = to.Variable("P", role="system prompt", requires_grad=True)
    for i in range(n):
        v.add_gradient(f"point {i}: " + "x" * 500)
    text = asyncio.run(feedback_text(v, eng))
    assert text.startswith("MERGED")
    assert len(text) <= GRADIENT_CHARS
    # hierarchical: ceil(n/4) + ceil(n/16) + ... calls, each prompt holds at most GROUP_SIZE items
    assert all(c[-1]["content"].count("<feedback>") <= GROUP_SIZE for c in eng.calls)
    expected_calls = {8: 2 + 1, 64: 16 + 4 + 1}[n]
    assert len(eng.calls) == expected_calls
    longest = max(len(c[-1]["content"]) for c in eng.calls)
    assert longest < GROUP_SIZE * (GRADIENT_CHARS + 200)
    # cached: asking again costs nothing
    asyncio.run(feedback_text(v, eng))
    assert len(eng.calls) == expected_calls


def test_update_prompt_size_does_not_grow_with_fan_out():
    sizes = {}
    for width in (1, 8, 64):
        eng = to.ScriptedEngine(lambda m: critic(m) if "JSON object" not in m[0]["content"] else '{"reasoning":"","new_value":"P2"}')
        prompt = to.Variable("P", role="system prompt", requires_grad=True)
        for i in range(width):
            prompt.add_gradient(f"feedback number {i} " + "y" * 300)
        to.TGD([prompt], engine=eng).step()
        sizes[width] = len(eng.calls[-1][-1]["content"])
    assert sizes[64] < 2 * sizes[8]
    assert sizes[64] < 3 * GRADIENT_CHARS


def test_backward_inside_running_event_loop():
    """What a notebook does: sync backward() while a loop is already running."""
    eng = to.ScriptedEngine(critic)

    async def main():
        prompt = to.Variable("P", role="system prompt", requires_grad=True)
        out = await to.LLM(eng, system_prompt=prompt).acall(to.Variable("q", role="question"))
        out.backward(eng)  # sync call from inside the loop
        return prompt

    prompt = asyncio.run(main())
    assert len(prompt.gradients) == 1


def test_engine_failure_names_the_variable_and_keeps_gradients_so_far():
    calls = {"n": 0}

    def flaky(messages):
        if "critic" in messages[0]["content"]:
            calls["n"] += 1
            if calls["n"] == 2:
                return ValueError("bad request")
        return "fine"

    eng = to.ScriptedEngine(flaky, retries=0)
    prompt = to.Variable("P", role="system prompt", requires_grad=True)
    loss = to.TextLoss("ok?", engine=eng)(to.LLM(eng, system_prompt=prompt)(to.Variable("q", role="question")))
    with pytest.raises(to.EngineError) as info:
        loss.backward(eng)
    assert "while sending feedback back through" in "".join(getattr(info.value, "__notes__", []))
    assert prompt.value == "P"
