"""Every engine against something real: the embedded model through llama.cpp, and llama.cpp's
OpenAI-compatible server on 127.0.0.1 reached through the openai SDK and through litellm."""
from __future__ import annotations

import json

import pytest

import textopt as to
from textopt.optim.tgd import UPDATE_SCHEMA

pytestmark = pytest.mark.local

MSG = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


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
    c = local_engine.complete(msgs, json_schema=UPDATE_SCHEMA, max_tokens=200)
    obj = json.loads(c.text)
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
    # the grammar makes the reply parseable: the value changed and nothing failed
    assert opt.failures == []
    assert prompt.value != "Answr questions." and prompt.value.strip()
    assert usage.calls >= 3 and usage.total_tokens > 0


@pytest.mark.server
def test_openai_engine_against_llama_cpp_server(llama_server):
    eng = to.get_engine("openai:smollm2", base_url=llama_server, cache=False, max_tokens=16)
    c = eng.complete(MSG)
    assert c.text.strip() and c.prompt_tokens > 5 and c.completion_tokens > 0
    js = eng.complete(
        [{"role": "user", "content": "Improve the prompt 'hi'. JSON with reasoning and new_value."}],
        json_schema=UPDATE_SCHEMA,
        max_tokens=200,
    )
    assert set(json.loads(js.text)) == {"reasoning", "new_value"}


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
    total = to.sum(to.TextLoss("Is the count right? Be brief.", engine=eng, max_tokens=96)(o) for o in outs)
    total.backward(eng)
    assert len(prompt.gradients) == 1 and prompt.gradients[0].text.strip()
    opt = to.TGD([prompt], engine=eng)
    opt.step()
    assert opt.failures == [] and prompt.value != "Reply."
