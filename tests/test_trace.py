"""@trace: recording, plain values in, Variables out, methods, async, errors as nodes, trainable code, time limits, memory."""
from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import tracemalloc
import weakref

import pytest

import textopt as to
from textopt.trace import CodeVariable, Traced, find_source


@to.trace
def parse_count(text: str) -> int:
    """Read the number at the end of the model's answer."""
    return int(text.strip().split()[-1])


@to.trace(name="joiner", description="joins two parts with a separator")
def join(a: str, b: str, sep: str = " ") -> str:
    return a + sep + b


def test_body_gets_plain_values_and_result_is_variable_with_variable_parents():
    x = to.Variable("the answer is 12", role="answer", requires_grad=True)
    out = parse_count(x)
    assert isinstance(out, to.Variable) and out.value == 12
    assert out.parents == (x,) and out.requires_grad
    assert out.grad_fn is not None and out.grad_fn.op_name == "parse_count"
    assert parse_count.description.startswith("Read the number")
    assert "def parse_count" in parse_count.source and "@to.trace" not in parse_count.source


def test_mixed_plain_and_variable_arguments_name_and_description():
    a = to.Variable("left", role="part")
    out = join(a, "right", sep="|")
    assert out.value == "left|right"
    assert out.parents == (a,) and not out.requires_grad
    assert join.name == "joiner" and join.description == "joins two parts with a separator"
    assert [k for k, _ in out.ctx.args] == ["a", "b", "sep"]
    with pytest.raises(TypeError, match="joiner"):
        join(a)


def test_methods_and_async_functions():
    class Counter:
        def __init__(self, k: int) -> None:
            self.k = k

        @to.trace
        def times(self, text: str) -> str:
            return text * self.k

    @to.trace
    async def shout(text: str) -> str:
        await asyncio.sleep(0)
        return text.upper() + "!"

    x = to.Variable("ab", role="text", requires_grad=True)
    y = Counter(2).times(x)
    assert y.value == "abab" and y.parents == (x,)
    z = asyncio.run(shout(y))
    assert z.value == "ABAB!" and z.parents == (y,)
    assert shout.is_async


def test_error_becomes_node_with_failing_line_marked_and_can_backward():
    x = to.Variable("no number here", role="answer", requires_grad=True)
    with pytest.raises(to.TraceError) as info:
        parse_count(x)
    err = info.value.variable
    assert isinstance(info.value.__cause__, ValueError)
    assert err.parents == (x,) and err.requires_grad and err.ctx.error is not None
    marked = [line for line in err.value.splitlines() if line.startswith(">>")]
    assert len(marked) == 1 and "int(text.strip().split()[-1])" in marked[0]
    assert "ValueError" in err.value
    engine = to.ScriptedEngine("make the answer end with a number")
    err.backward(engine)
    assert [g.text for g in x.gradients] == ["make the answer end with a number"]
    prompt = engine.calls[0][-1]["content"]
    assert "raised an error" in prompt and ">>" in prompt and "parse_count" in prompt


def test_tgd_backward_through_traced_function_uses_description_code_and_io():
    prompt = to.Variable("Answer with a number.", role="system prompt", requires_grad=True)
    other = to.Variable("ignored", role="constant")
    out = join(prompt, other)
    engine = to.ScriptedEngine(lambda m: "be shorter")
    loss = to.TextLoss("is it short?", engine=engine)(out)
    loss.backward(engine)
    assert [g.text for g in prompt.gradients] == ["be shorter"] and other.gradients == []
    traced_prompts = [m[-1]["content"] for m in engine.calls if "The function joiner was called" in m[-1]["content"]]
    assert len(traced_prompts) == 1  # one call per input that requires grad
    p = traced_prompts[0]
    assert "joins two parts" in p and "def join" in p and "Answer with a number. ignored" in p


def test_trainable_code_is_a_parameter_and_runs_the_current_version():
    @to.trace(trainable=True)
    def strategy(question: str) -> str:
        return "I don't know"

    [code] = strategy.parameters()
    assert isinstance(code, CodeVariable) and code.requires_grad and code.value.startswith("def strategy")
    out = strategy("2+2?")
    assert out.value == "I don't know" and code in out.parents and out.requires_grad
    code.set_value("```python\ndef strategy(question: str) -> str:\n    return question.upper()\n```")
    assert strategy("abc").value == "ABC"
    assert not to.trace(lambda s: s).parameters()


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("def strategy(question, extra):\n    return question", "signature"),
        ("def other(question):\n    return question", "no top-level function named 'strategy'"),
        ("def strategy(question):\n    return (", "does not parse"),
        ("print('side effect')\ndef strategy(question):\n    return question", "top-level Expr"),
        ("async def strategy(question):\n    return question", "must stay def"),
    ],
)
def test_bad_code_is_rejected_before_it_runs(bad, reason):
    ran = []

    @to.trace(trainable=True)
    def strategy(question):
        ran.append(1)
        return question

    with pytest.raises(ValueError, match="rejected"):
        strategy.code.set_value(bad)
    assert strategy.code.check(bad) is not None and reason in strategy.code.check(bad)
    assert "ran.append" in strategy.code.value and ran == []  # old code kept, new code never executed


def test_trainable_code_keeps_globals_and_closure_values():
    factor = 3

    @to.trace(trainable=True)
    def scale(x: int) -> int:
        return x * factor

    scale.code.set_value("def scale(x: int) -> int:\n    return x * factor + len(json.dumps([]))")
    assert scale(2).value == 8  # factor from the closure, json from this module's globals


@pytest.mark.parametrize("isolation", ["thread", "none", "process"])
def test_new_code_sees_its_own_top_level_imports_and_helpers(isolation):
    @to.trace(trainable=True, isolation=isolation)
    def words(text: str) -> str:
        return text

    words.code.set_value(
        "import re\n\nSEP = ' | '\n\ndef _split(t):\n    return re.findall(r'[a-z]+', t)\n\n"
        "def words(text: str) -> str:\n    return SEP.join(_split(text))"
    )
    assert words("ab, cd!").value == "ab | cd"


def test_endless_loop_in_trainable_code_times_out_as_error_node_and_thread_stops():
    @to.trace(trainable=True, timeout=0.3, isolation="thread")
    def strategy(question: str) -> str:
        return question

    strategy.code.set_value("def strategy(question: str) -> str:\n    while True:\n        pass")
    before = threading.active_count()
    t0 = time.monotonic()
    with pytest.raises(to.TraceError) as info:
        strategy("q")
    assert time.monotonic() - t0 < 2.0
    err = info.value.variable
    assert "TimeoutError" in err.value and "0.3 s" in err.value and strategy.code in err.parents
    deadline = time.monotonic() + 2
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert threading.active_count() <= before  # the looping thread was stopped, not leaked

    async def run() -> None:
        with pytest.raises(to.TraceError, match="TimeoutError"):
            await strategy.acall("q")

    asyncio.run(run())


def test_loop_that_swallows_exceptions_is_still_stopped():
    @to.trace(trainable=True, timeout=0.2, isolation="thread")
    def strategy(question: str) -> str:
        return question

    strategy.code.set_value(
        "def strategy(question: str) -> str:\n    while True:\n        try:\n            pass\n        except Exception:\n            pass"
    )
    with pytest.raises(to.TraceError, match="TimeoutError"):
        strategy("q")


def test_untrainable_function_is_never_replaced_by_exec():
    calls = []

    @to.trace
    def plain(x: str) -> str:
        calls.append(x)
        return x

    assert plain.code is None and plain.timeout is None
    plain("a")
    assert calls == ["a"] and plain._body() is plain.fn


def test_source_of_function_without_file_fails_clearly_when_trainable():
    ns: dict = {}
    exec("def typed_in_repl(x):\n    return x", ns)
    fn = ns["typed_in_repl"]
    assert find_source(fn) is None
    traced = to.trace(fn)  # still traceable: the signature stands in for the source
    assert traced("v").value == "v" and "typed_in_repl(x)" in traced.signature_text
    with pytest.raises(to.TraceError, match="can't read the source code of 'typed_in_repl'"):
        to.trace(fn, trainable=True)


def test_source_found_in_ipython_history(monkeypatch):
    import sys
    import types

    cell = "import textopt as to\n\ndef from_cell(x):\n    '''doc'''\n    return x + 1\n"
    ns: dict = {}
    exec(compile(cell, "<cell-not-in-linecache>", "exec"), ns)
    shell = types.SimpleNamespace(user_ns={"In": ["", cell]})
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: shell
    monkeypatch.setitem(sys.modules, "IPython", fake)
    src = find_source(ns["from_cell"])
    assert src is not None and src[0].startswith("def from_cell(x):") and "return x + 1" in src[0]
    assert isinstance(to.trace(ns["from_cell"], trainable=True), Traced)


def test_ten_thousand_forward_passes_leave_memory_flat():
    @to.trace
    def step(text: str) -> str:
        return text[::-1]

    def run(n: int) -> None:
        for _ in range(n):
            x = to.Variable("hello world", role="text", requires_grad=True)
            step(step(x))

    run(200)  # warm up caches
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    run(10_000)
    gc.collect()
    grown = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert grown < 200_000, f"memory grew by {grown} bytes over 10,000 passes"

    x = to.Variable("a", role="text", requires_grad=True)
    ref = weakref.ref(step(x))
    gc.collect()
    assert ref() is None  # nothing holds the output once the caller drops it


def test_trace_argument_errors():
    with pytest.raises(TypeError, match="decorates a function"):
        to.trace(42)
    with pytest.raises(ValueError, match="timeout"):
        to.trace(lambda: 1, timeout=0)
