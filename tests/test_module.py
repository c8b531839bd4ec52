"""to.Module: parameters found and named through sub-modules, ops and containers; state saved to JSON and loaded
into a fresh instance; strict errors; the async call; and a two-step pipeline optimized by TGD, OptoPrime,
Trainer and Search on scripted engines (the prompts change, the best is chosen and loads into a fresh copy)."""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass

import pytest

import textopt as to
from textopt._sync import run_sync
from textopt.module import LoadResult, parameter_list


# -- a two-step pipeline: draft, then refine, each step a Module with its own trainable prompt --------------
class Step(to.Module):
    """One LLM call with a trainable system prompt."""

    def __init__(self, engine, text: str, *, name: str, role: str) -> None:
        self.prompt = to.Variable(text, role=role, requires_grad=True, name=name)
        self.llm = to.LLM(engine, system_prompt=self.prompt)  # holds the same prompt: found once

    async def forward(self, x):
        return await self.llm.acall(x)


class DraftRefine(to.Module):
    def __init__(self, engine) -> None:
        self.draft = Step(engine, "Write a first answer.", name="draft_prompt", role="system prompt of the drafting step")
        self.refine = Step(engine, "Polish the answer.", name="refine_prompt", role="system prompt of the refining step")

    async def forward(self, question):
        q = question if isinstance(question, to.Variable) else to.Variable(getattr(question, "question", question), role="question")
        return await self.refine(await self.draft(q))


def model(messages):
    """The pipeline's model. Draft: 'draft N', checked when its prompt says ALPHA. Refine: the answer when the draft
    was checked and its prompt says BETA, 'nearly' with one of the two, else 'no idea'."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    user = messages[-1]["content"]
    if "first answer" in system:
        return user.replace("question", "draft") + (" [checked]" if "ALPHA" in system else "")
    number = user.split()[1]
    hits = ("[checked]" in user) + ("BETA" in system)
    return {2: f"answer {number}", 1: f"nearly answer {number}"}.get(hits, "no idea")


def optimizer_model(messages):
    """The optimizer's model: a critic's request gets a criticism; a TGD update adds the keyword for that step."""
    system, user = messages[0]["content"], messages[-1]["content"]
    if '"new_value"' in system:
        current = user.split("<value>\n", 1)[1].split("\n</value>", 1)[0]
        key = "ALPHA" if "drafting" in user.split("Current value", 1)[0] else "BETA"
        return json.dumps({"reasoning": f"the feedback asks for {key}", "new_value": current + " " + key})
    return "This prompt must name its keyword."


@dataclass(frozen=True)
class Q:
    question: str
    answer: str


def data(n: int, offset: int = 0) -> list[Q]:
    return [Q(f"question {offset + i}", f"answer {offset + i}") for i in range(n)]


def exact(ex: Q, out: to.Variable) -> to.Score:
    if out.text == ex.answer:
        return to.Score(1.0, "correct")
    if out.text == "nearly " + ex.answer:
        return to.Score(0.5, "nearly: one of the two steps is missing its keyword")
    return to.Score(0.0, "wrong: both steps are missing their keyword")


# -- discovery ---------------------------------------------------------------------------------------------
def test_parameters_are_found_through_submodules_named_by_path_in_order_and_once():
    pipe = DraftRefine(to.ScriptedEngine(model))
    names = [n for n, _ in pipe.named_parameters()]
    assert names == ["draft.prompt", "refine.prompt"]
    assert pipe.parameters() == [pipe.draft.prompt, pipe.refine.prompt]
    assert [p.name for p in pipe.parameters()] == ["draft_prompt", "refine_prompt"]
    assert pipe.draft.named_parameters() == [("prompt", pipe.draft.prompt)]  # a sub-module is a Module too
    assert "draft.prompt" in repr(pipe)


def test_shared_variables_appear_once_and_containers_ops_and_cycles_are_walked():
    engine = to.ScriptedEngine("ok")
    shared = to.Variable("Be brief.", role="shared style rules", requires_grad=True, name="style")

    @to.trace(trainable=True)
    def tidy(text: str) -> str:
        """Strip the text."""
        return text.strip()

    class Holder(to.Module):
        def __init__(self, prompt):
            self.prompt = prompt

    class Pipe(to.Module):
        def __init__(self):
            self.first = Holder(shared)
            self.second = Holder(shared)  # the same Variable again: one parameter, named by the first path
            self.steps = [to.LLM(engine, system_prompt=to.Variable(f"step {i}", role="step prompt", requires_grad=True,
                                                                   name=f"step{i}")) for i in range(2)]
            self.judges = {"strict": to.FormattedLLMCall("Q: {{ q }}", {"q": "question"}, engine, trainable=True)}
            self.pair = (to.Variable("fixed", role="constant text"),  # not trainable: no parameter
                         to.Variable("tuned", role="tuned text", requires_grad=True, name="tuned"))
            self.tidy = tidy
            self.frozen = to.LLM(engine, system_prompt="a plain prompt")  # a str prompt: constant
            self.me = self  # a cycle is walked once
            self.label = "not a parameter"

    pipe = Pipe()
    names = [n for n, _ in pipe.named_parameters()]
    assert names == ["first.prompt", "steps.0.system_prompt", "steps.1.system_prompt", "judges.strict.template",
                     "pair.1", "tidy.code"]
    assert [p.name for p in pipe.parameters()].count("style") == 1
    assert pipe.parameters()[-1] is tidy.code
    assert parameter_list(pipe) == pipe.parameters() and parameter_list((shared,)) == [shared]


def test_a_module_without_parameters_or_forward_says_so():
    class Empty(to.Module):
        pass

    assert Empty().parameters() == [] and Empty().state_dict() == {}
    with pytest.raises(NotImplementedError, match="Empty needs a forward"):
        Empty()("x")
    with pytest.raises(ValueError, match="no parameters"):
        to.TGD(Empty())


# -- saving and loading ------------------------------------------------------------------------------------
def test_state_dict_to_json_file_and_back_into_a_fresh_instance(tmp_path):
    engine = to.ScriptedEngine(model)
    pipe = DraftRefine(engine)
    pipe.draft.prompt.set_value("Write a first answer. ALPHA")
    pipe.refine.prompt.set_value("Polish the answer. BETA ✓")
    path = tmp_path / "pipe.json"
    path.write_text(json.dumps(pipe.state_dict(), ensure_ascii=False), encoding="utf-8")

    fresh = DraftRefine(engine)
    assert fresh.state_dict() != pipe.state_dict()
    result = fresh.load_state_dict(json.loads(path.read_text(encoding="utf-8")))
    assert result == LoadResult([], [])
    assert fresh.state_dict() == pipe.state_dict() == {"draft.prompt": "Write a first answer. ALPHA",
                                                       "refine.prompt": "Polish the answer. BETA ✓"}
    assert fresh.draft.llm.system_prompt.value.endswith("ALPHA")  # the op holds the same Variable
    # keyed by the Variables' own names (SearchResult.best, History.final, parameters.json) loads too
    other = DraftRefine(engine)
    other.load_state_dict({"draft_prompt": "d", "refine_prompt": "r"})
    assert other.state_dict() == {"draft.prompt": "d", "refine.prompt": "r"}


def test_strict_load_names_missing_and_unexpected_keys_and_changes_nothing():
    pipe = DraftRefine(to.ScriptedEngine(model))
    before = pipe.state_dict()
    with pytest.raises(ValueError) as err:
        pipe.load_state_dict({"draft.prompt": "new", "refine.promt": "typo"})
    msg = str(err.value)
    assert "\n" not in msg
    assert "missing keys ['refine.prompt']" in msg and "unexpected keys ['refine.promt']" in msg
    assert "strict=False" in msg and "DraftRefine" in msg
    assert pipe.state_dict() == before  # nothing was loaded

    result = pipe.load_state_dict({"draft.prompt": "new", "refine.promt": "typo"}, strict=False)
    assert result == LoadResult(missing=["refine.prompt"], unexpected=["refine.promt"])
    assert pipe.state_dict() == {**before, "draft.prompt": "new"}

    with pytest.raises(ValueError, match="'draft.prompt' and 'draft_prompt' both set"):
        pipe.load_state_dict({"draft.prompt": "a", "draft_prompt": "b", "refine.prompt": "c"})
    with pytest.raises(TypeError, match="'refine.prompt' is a int"):
        pipe.load_state_dict({"draft.prompt": "a", "refine.prompt": 3})
    assert pipe.state_dict() == {**before, "draft.prompt": "new"}


def test_a_value_a_variable_refuses_rolls_the_whole_load_back():
    class Picky(to.Variable):
        def set_value(self, value):
            if "bad" in value:
                raise ValueError("does not parse")
            super().set_value(value)

    class Pipe(to.Module):
        def __init__(self):
            self.a = Picky("a0", role="first text", requires_grad=True, name="a")
            self.b = Picky("b0", role="second text", requires_grad=True, name="b")

    pipe = Pipe()
    with pytest.raises(ValueError, match="'b' was refused: does not parse"):
        pipe.load_state_dict({"a": "a1", "b": "bad"})
    assert (pipe.a.value, pipe.b.value) == ("a0", "b0")


# -- calling -----------------------------------------------------------------------------------------------
def test_async_forward_returns_a_coroutine_and_callers_see_an_async_function():
    pipe = DraftRefine(to.ScriptedEngine(model))
    assert inspect.iscoroutinefunction(pipe.__call__)

    async def run():
        return await pipe(to.Variable("question 7", role="question")), await pipe.acall(Q("question 8", "answer 8"))

    out, out2 = run_sync(run())
    assert out.text == "no idea" and out2.text == "no idea"
    assert pipe.draft.prompt in _ancestors(out)  # the graph reaches both prompts
    assert pipe.refine.prompt in _ancestors(out)


def test_sync_forward_is_called_as_is_and_acall_runs_it_in_a_thread():
    class Upper(to.Module):
        def __init__(self):
            self.llm = to.LLM(to.ScriptedEngine(lambda m: m[-1]["content"].upper()),
                              system_prompt=to.Variable("Shout.", role="system prompt", requires_grad=True, name="shout"))

        def forward(self, x):
            return self.llm(x)

    up = Upper()
    assert not inspect.iscoroutinefunction(up.__call__)
    assert up("hi").text == "HI"
    assert run_sync(up.acall("ho")).text == "HO"

    class AsyncUpper(Upper):  # a subclass may change the kind of forward; a __call__ of your own is kept
        async def forward(self, x):
            return await self.llm.acall(x)

    class Custom(AsyncUpper):
        def __call__(self, x):
            return "custom"

    assert inspect.iscoroutinefunction(AsyncUpper().__call__) and run_sync(AsyncUpper()("hey")).text == "HEY"
    assert Custom()("x") == "custom"


def _ancestors(v):
    seen, stack = [], [v]
    while stack:
        x = stack.pop()
        if all(x is not s for s in seen):
            seen.append(x)
            stack.extend(x.parents)
    return seen


# -- optimizers, Trainer and Search take a Module --------------------------------------------------------
def test_tgd_updates_every_prompt_of_the_module():
    pipe = DraftRefine(to.ScriptedEngine(model))
    opt_engine = to.ScriptedEngine(optimizer_model)
    opt = to.TGD(pipe, engine=opt_engine)
    assert opt.parameters == pipe.parameters()
    answer = run_sync(pipe(to.Variable("question 1", role="question")))
    opt.zero_grad()
    opt.backward(answer, "wrong: should be 'answer 1'")
    assert pipe.draft.prompt.gradients and pipe.refine.prompt.gradients
    report = opt.step()
    assert set(report.changed) == {"draft_prompt", "refine_prompt"}
    assert pipe.state_dict() == {"draft.prompt": "Write a first answer. ALPHA", "refine.prompt": "Polish the answer. BETA"}
    assert run_sync(pipe(to.Variable("question 1", role="question"))).text == "answer 1"


def test_step_on_a_submodule_updates_only_its_prompts():
    pipe = DraftRefine(to.ScriptedEngine(model))
    opt = to.TGD(pipe, engine=to.ScriptedEngine(optimizer_model))
    answer = run_sync(pipe(to.Variable("question 1", role="question")))
    opt.backward(answer, "wrong")
    report = opt.step(pipe.refine)
    assert set(report.changed) == {"refine_prompt"} and pipe.draft.prompt.value == "Write a first answer."
    with pytest.raises(ValueError, match="not a parameter of this optimizer"):
        to.TGD(pipe.draft, engine=opt.engine).step(pipe.refine)


def test_optoprime_updates_every_prompt_of_the_module():
    pipe = DraftRefine(to.ScriptedEngine(model))
    suggestion = {"draft_prompt": "Write a first answer. ALPHA", "refine_prompt": "Polish the answer. BETA"}
    opt_engine = to.ScriptedEngine(json.dumps({"reasoning": "both steps need their keyword", "suggestion": suggestion}))
    opt = to.OptoPrime(pipe, engine=opt_engine)
    answer = run_sync(pipe(to.Variable("question 2", role="question")))
    opt.backward(answer, "wrong: should be 'answer 2'")
    opt.step()
    assert len(opt_engine.calls) == 1
    trace = opt_engine.calls[0][-1]["content"]
    assert "draft_prompt" in trace and "refine_prompt" in trace  # both calls are in the one trace
    assert pipe.state_dict() == {"draft.prompt": suggestion["draft_prompt"], "refine.prompt": suggestion["refine_prompt"]}


def test_trainer_takes_the_module_as_forward_and_its_optimizer(tmp_path):
    engine = to.ScriptedEngine(model)
    pipe = DraftRefine(engine)
    judge = to.ScriptedEngine("The answer is wrong.")

    async def loss(ex, out):
        return await to.TextLoss(f"The answer is {ex.answer}.", engine=judge).acall(out)

    trainer = to.Trainer(pipe, loss, to.TGD(pipe, engine=to.ScriptedEngine(optimizer_model)), train=data(4), val=data(3, 50),
                         batch_size=2, steps=1, metric=lambda ex, out: exact(ex, out).value, run_dir=tmp_path / "run")
    history = trainer.fit()
    assert [r["val"] for r in history.rows] == [0.0, 1.0]
    assert pipe.state_dict() == {"draft.prompt": "Write a first answer. ALPHA", "refine.prompt": "Polish the answer. BETA"}
    fresh = DraftRefine(engine)
    fresh.load_state_dict(to.load(tmp_path / "run" / "parameters.json"))  # saved by Variable name: loads too
    assert fresh.state_dict() == pipe.state_dict()


def test_search_over_a_module_finds_both_keywords_and_the_best_loads_into_a_fresh_copy(tmp_path):
    engine = to.ScriptedEngine(model)
    pipe = DraftRefine(engine)
    opt_engine = to.ScriptedEngine(optimizer_model)
    search = to.Search(pipe, forward=pipe, train=data(6), val=data(4, 50), metric=exact, proposer="tgd", engine=opt_engine,
                       minibatch=2, budget=60)
    result = search.fit()
    assert result.best_val == 1.0
    assert result.best == {"draft_prompt": "Write a first answer. ALPHA", "refine_prompt": "Polish the answer. BETA"}
    assert pipe.state_dict() == {"draft.prompt": result.best["draft_prompt"], "refine.prompt": result.best["refine_prompt"]}
    assert {c.kind for c in result.candidates} >= {"seed", "mutation"}

    path = tmp_path / "best.json"
    path.write_text(json.dumps(pipe.state_dict()), encoding="utf-8")
    fresh = DraftRefine(engine)
    fresh.load_state_dict(json.loads(path.read_text(encoding="utf-8")))
    assert to.evaluate(fresh, data(3, 90), exact).mean == 1.0
    again = DraftRefine(engine)
    again.load_state_dict(result.best)  # the pool's own keys (Variable names) load as well
    assert again.state_dict() == fresh.state_dict()
