"""Every engine against something real: the embedded model through llama.cpp, and llama.cpp's
OpenAI-compatible server on 127.0.0.1 reached through the openai SDK and through litellm."""
from __future__ import annotations

import pytest

import textopt as to
from textopt.optim.parse import parse_reply

pytestmark = pytest.mark.local

MSG = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


#: The engines' schema enforcement, with strings bounded so that the reply always closes within max_tokens
#: (an unbounded "reasoning" lets SmolLM2 ramble until the cap and cut the JSON short).
BOUNDED = {
    "type": "object",
    "properties": {"reasoning": {"type": "string", "maxLength": 80}, "new_value": {"type": "string", "maxLength": 80}},
    "required": ["reasoning", "new_value"],
    "additionalProperties": False,
}


def assert_updated_or_recorded(opt, var, old: str) -> None:
    """What must hold on every run, whatever the 135M model says: the step either gave the variable a new,
    non-empty value with no failure, or kept the old value and recorded why, naming the variable."""
    if var.value != old:
        assert var.value.strip() and opt.failures == []
    else:
        assert opt.failures and all(f.variable == var.name and f.error for f in opt.failures)


def test_local_engine_answers_and_counts_tokens(local_engine):
    c = local_engine.complete(MSG, max_tokens=16)
    assert c.text.strip() != ""
    assert c.prompt_tokens > 5 and 0 < c.completion_tokens <= 16
    again = local_engine.complete(MSG, max_tokens=16)
    assert again.cached and again.text == c.text


def test_local_engine_enforces_json_schema(local_engine):
    msgs = [
        {"role": "system", "content": "Rewrite the prompt. Reply in JSON with reasoning and new_value."},
        {"role": "user", "content": "Prompt: 'answr the questin'"},
    ]
    c = local_engine.complete(msgs, json_schema=BOUNDED, max_tokens=256)
    # the grammar guarantees the shape; strings may hold raw newlines, which our parser keeps (issue 14)
    obj = parse_reply(c.text, ["reasoning", "new_value"])
    assert set(obj) == {"reasoning", "new_value"} and isinstance(obj["new_value"], str)


def test_tgd_step_on_the_real_model(local_engine):
    prompt = to.Variable("Answr questions.", role="system prompt of a question-answering assistant", requires_grad=True)
    out = to.LLM(local_engine, system_prompt=prompt, max_tokens=48)(to.Variable("How many legs does a cat have?", role="question"))
    loss = to.TextLoss("The correct answer is 4. Say briefly whether the response is correct.", engine=local_engine, max_tokens=64)(out)
    with to.track_usage() as usage:
        loss.backward(local_engine)
        opt = to.TGD([prompt], engine=local_engine)
        opt.step()
    assert prompt.gradients and prompt.gradients[0].text.strip()
    assert_updated_or_recorded(opt, prompt, "Answr questions.")
    assert usage.calls >= 3 and usage.total_tokens > 0


@pytest.mark.server
def test_openai_engine_against_llama_cpp_server(llama_server):
    eng = to.get_engine("openai:smollm2", base_url=llama_server, cache=False, max_tokens=16)
    c = eng.complete(MSG)
    assert c.text.strip() and c.prompt_tokens > 5 and c.completion_tokens > 0
    js = eng.complete(
        [{"role": "user", "content": "Improve the prompt 'hi'. JSON with reasoning and new_value."}],
        json_schema=BOUNDED,
        max_tokens=256,
    )
    obj = parse_reply(js.text, ["reasoning", "new_value"])
    assert set(obj) == {"reasoning", "new_value"} and isinstance(obj["new_value"], str)


@pytest.mark.server
def test_litellm_engine_against_llama_cpp_server(llama_server):
    eng = to.get_engine("litellm:openai/smollm2", api_base=llama_server, api_key="none", cache=False, max_tokens=16)
    c = eng.complete(MSG)
    assert c.text.strip() and c.prompt_tokens > 5


@pytest.mark.server
def test_full_backward_and_step_through_the_server(llama_server):
    eng = to.get_engine("openai:smollm2", base_url=llama_server, max_concurrency=4)
    prompt = to.Variable("Reply.", role="system prompt of an assistant that counts objects", requires_grad=True)
    llm = to.LLM(eng, system_prompt=prompt, max_tokens=96)
    outs = [llm(to.Variable("I have two apples and a pear. How many fruits?", role="question"))]
    total = to.aggregate(to.TextLoss("Is the count right? Be brief.", engine=eng, max_tokens=96)(o) for o in outs)
    total.backward(eng)
    assert len(prompt.gradients) == 1 and prompt.gradients[0].text.strip()
    opt = to.TGD([prompt], engine=eng)
    opt.step()
    assert_updated_or_recorded(opt, prompt, "Reply.")


def test_the_local_model_samples_differ_for_identical_requests_at_temperature(local_engine):
    """Draw n of an identical sampled request gets seed + n in llama.cpp (and its own cache entry): five
    samples of one prompt at temperature 1.0 are not five copies."""
    msgs = [{"role": "user", "content": "Name one fruit and say why you like it."}]
    replies = [local_engine.complete(msgs, max_tokens=12, temperature=1.0).text for _ in range(5)]
    assert len(set(replies)) >= 3, replies
