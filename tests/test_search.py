"""Search: Pareto front and parent sampling on hand-made tables, merges, reflective mutation on a scripted
task whose best prompt needs two keywords combined, budgets and stop rules, checkpoints, SIGKILL + resume,
and the text report."""
from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import textopt as to
from textopt.search import Search, SearchResult, search_report
from textopt.search.pool import (
    Candidate, best_id, leads, lineage, merge_options, merged_values, pareto_front, sample_parent,
)

HERE = Path(__file__).resolve().parent


# -- the scripted task ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Q:
    question: str
    answer: str
    needs: str  # "" | "a" | "ab" | "b": which keywords the pipeline needs; "c": both keywords or neither


KEYS = {"instruction": "ALPHA", "format": "BETA"}
WHERE = {"ALPHA": "instruction", "BETA": "format"}


def dataset(n: int, offset: int = 0, kinds=("", "a", "b", "ab")) -> list[Q]:
    return [Q(f"question {offset + i}", f"answer {offset + i}", kinds[i % len(kinds)]) for i in range(n)]


TRAIN, VAL = dataset(12), dataset(8, offset=100)
# a keyword alone costs half a point on "c" examples, so the start leads those and both single-keyword candidates
# stay on the Pareto front next to it
TRADE_TRAIN, TRADE_VAL = dataset(12, kinds=("a", "b", "c")), dataset(9, offset=100, kinds=("a", "b", "c"))


def make_params() -> list[to.Variable]:
    return [to.Variable("Answer the question.", role="instruction", requires_grad=True, name="instruction"),
            to.Variable("Reply briefly.", role="format rules", requires_grad=True, name="format")]


def make_forward(params, delay: float = 0.0, fail_on: tuple[str, ...] = ()):
    inst, fmt = params

    async def forward(ex: Q) -> to.Variable:
        if delay:
            await asyncio.sleep(delay)
        if ex.question in fail_on:
            raise RuntimeError("the tool crashed")
        alpha, beta = "ALPHA" in inst.value, "BETA" in fmt.value
        if ex.needs == "c":  # half right when only one keyword is there
            return to.Variable(ex.answer if alpha == beta else "nearly " + ex.answer, role="answer", parents=[inst, fmt])
        ok = ("a" not in ex.needs or alpha) and ("b" not in ex.needs or beta)
        return to.Variable(ex.answer if ok else "no idea", role="answer", parents=[inst, fmt])

    return forward


def metric(ex: Q, out: to.Variable) -> to.Score:
    if out.text == ex.answer:
        return to.Score(1.0, "correct")
    if out.text == "nearly " + ex.answer:
        return to.Score(0.5, "nearly: the instruction and the format rules disagree")
    missing = [k for k, need in (("ALPHA", "a"), ("BETA", "b")) if need in ex.needs]
    return to.Score(0.0, "wrong: " + " and ".join(f"the {WHERE[k]} must mention {k}" for k in missing))


@dataclass
class Report:  # the shape of interface C's StepReport
    changed: dict = field(default_factory=dict)
    reasoning: dict = field(default_factory=dict)
    failures: list = field(default_factory=list)


class ScriptedProposer:
    """Interface C by duck typing. astep adds the parameter's keyword when the feedback asks for it.
    one_shot: only from the starting values (a candidate with any keyword gets no proposal), so only a
    merge can combine the two keywords. first_sample_useless: astep only adds a useless word; the keyword
    comes from `propose` (the second sample)."""

    def __init__(self, params, *, one_shot: bool = False, first_sample_useless: bool = False) -> None:
        self.parameters = list(params)
        self.temperatures = (0.0, 0.7)
        self.one_shot, self.useless = one_shot, first_sample_useless
        self.feedback: list[str] = []
        self.seen: list[str] = []
        self.rejected: list[dict] = []
        self.steps = 0

    def zero_grad(self) -> None:
        self.feedback = []

    async def abackward(self, output: to.Variable, feedback: str | None = None) -> None:
        text = feedback if feedback is not None else output.text
        self.feedback.append(text)
        self.seen.append(text)

    def _new(self, p: to.Variable) -> str | None:
        key = KEYS[p.name]
        if self.one_shot and any(k in q.value for q in self.parameters for k in KEYS.values()):
            return None
        if key in p.value or not any(key in f for f in self.feedback):
            return None
        return p.value + " " + key

    async def astep(self, params=None) -> Report:
        self.steps += 1
        (p,) = params
        new = p.value + " please" if self.useless else self._new(p)
        if new is None:
            return Report(failures=[f"{p.name}: no change"])
        old = p.value
        p.set_value(new)
        return Report({p.name: (old, new)}, {p.name: f"the feedback asks for {KEYS[p.name]}"})

    async def propose(self, params, *, temperature, rejected):
        (p,) = params
        self.rejected.append({k: list(v) for k, v in rejected.items()})
        new = self._new(p)
        return {} if new is None else {p: type("Proposal", (), {"value": new, "reasoning": "second sample"})()}

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]


def run_task(run_dir=None, *, resume=False, delay=0.0, budget=150, seed=0, trade=False, **kw) -> SearchResult:
    params = make_params()
    proposer = ScriptedProposer(params, one_shot=kw.pop("one_shot", False))
    train, val = (TRADE_TRAIN, TRADE_VAL) if trade else (TRAIN, VAL)
    search = Search(params, forward=make_forward(params, delay), train=train, val=val, metric=metric, proposer=proposer,
                    budget=budget, run_dir=run_dir, resume=resume, seed=seed, **kw)
    return search.fit()


# -- Pareto front and sampling on hand-made tables -------------------------------------------------------
def test_leads_and_front_drop_dominated_candidates():
    table = {0: [1, 0, 0], 1: [0, 1, 0], 2: [0, 0, 1], 3: [1, 1, 0]}
    assert leads(table) == {0: {0}, 1: {1}, 2: {2}, 3: {0, 1}}
    assert pareto_front(table) == {2: 1, 3: 2}  # 0 and 1 lead nothing 3 does not lead too


def test_front_ties_none_scores_and_equal_lead_sets():
    assert pareto_front({0: [1, 1], 1: [1, 1]}) == {0: 2}  # identical: the older stays
    assert pareto_front({0: [1, 0.5, 0], 1: [1, 0.5, 0.2]}) == {1: 3}  # ties lead together, 1 leads more
    assert pareto_front({0: [None, 1], 1: [0.5, 0]}) == {0: 1, 1: 1}  # unscored examples are not led
    # 0 and 1 lead the same example; 1 has the better mean, so it stays
    assert pareto_front({0: [1, 0, 0], 1: [1, 0.5, 0], 2: [0, 1, 1]}) == {1: 1, 2: 2}
    assert pareto_front({}) == {} and pareto_front({0: [None]}) == {}


def test_parent_sampling_is_proportional_to_examples_led_and_seeded():
    front = {1: 1, 2: 3}
    rng = random.Random(0)
    draws = [sample_parent(front, rng) for _ in range(4000)]
    assert 0.72 < draws.count(2) / len(draws) < 0.78
    assert [sample_parent(front, random.Random(5)) for _ in range(3)] == [sample_parent(front, random.Random(5)) for _ in range(3)]
    with pytest.raises(ValueError, match="front is empty"):
        sample_parent({}, rng)


def cand(cid, parents, values, scores=(0.0,)):
    return Candidate(cid, list(parents), [], dict(values), list(scores))


def test_merge_options_need_common_ancestor_and_disjoint_changes():
    pool = {0: cand(0, [], {"A": "a0", "B": "b0"}), 1: cand(1, [0], {"A": "a1", "B": "b0"}),
            2: cand(2, [0], {"A": "a0", "B": "b2"}), 3: cand(3, [1], {"A": "a3", "B": "b0"}),
            4: cand(4, [0], {"A": "a4", "B": "b0"})}
    assert merge_options(pool, [1, 2], set()) == [(1, 2, 0)]
    assert merged_values(pool, 1, 2, 0) == {"A": "a1", "B": "b2"}
    assert merge_options(pool, [1, 3], set()) == []  # 3 descends from 1
    assert merge_options(pool, [2, 3], set()) == [(2, 3, 0)]
    assert merged_values(pool, 2, 3, 0) == {"A": "a3", "B": "b2"}
    assert merge_options(pool, [1, 4], set()) == []  # both changed A
    assert merge_options(pool, [1, 2], {(1, 2, 0)}) == []  # tried already
    pool[5] = cand(5, [1, 2], {"A": "a1", "B": "b2"})
    assert merge_options(pool, [1, 2], set()) == []  # the merge is already in the pool
    assert [c.id for c in lineage(pool, 5)] == [0, 1, 2, 5] and [c.id for c in lineage(pool, 3)] == [0, 1, 3]
    pool = {0: cand(0, [], {"A": "x"}, [0.5, 0.5]), 1: cand(1, [0], {"A": "y"}, [1.0, 0.0]), 2: cand(2, [0], {"A": "z"}, [0.0, 1.0])}
    assert best_id(pool) == 0  # a tie on the mean goes to the older candidate


# -- the search on the scripted task ----------------------------------------------------------------------
def test_search_finds_the_prompt_that_needs_both_keywords_within_budget():
    params = make_params()
    proposer = ScriptedProposer(params)
    result = Search(params, forward=make_forward(params), train=TRAIN, val=VAL, metric=metric, proposer=proposer,
                    budget=150, seed=0).fit()
    assert result.best_val == 1.0
    assert "ALPHA" in result.best["instruction"] and "BETA" in result.best["format"]
    assert [p.value for p in params] == [result.best["instruction"], result.best["format"]]  # parameters hold the best
    assert result.candidates[0].kind == "seed" and result.candidates[0].val == pytest.approx(0.25)
    assert result.metric_calls <= 150 + 3 + 3 + len(VAL)  # an iteration in flight finishes
    assert result.stopped == "budget_metric_calls"
    for c in result.candidates:  # every pool entry was scored on every validation example
        assert len(c.val_scores) == len(VAL)
        if c.kind == "mutation":
            assert len(c.changed) == 1 and sum(c.minibatch["child"]) > sum(c.minibatch["parent"])
            assert c.reasoning.startswith("the feedback asks for")
    assert result.pareto == [result.best_id] or result.best_id in result.pareto
    assert "wrong: the instruction must mention ALPHA" in proposer.seen  # the metric's feedback reached the proposer
    # round-robin over parameters
    muts = [r for r in result.rows if r["kind"] == "mutation"]
    assert [r["param"] for r in muts[:4]] == ["instruction", "format", "instruction", "format"]


def test_merge_combines_candidates_that_changed_different_parameters():
    with_merge = run_task(one_shot=True, trade=True, budget=120)
    best = with_merge.pool[with_merge.best_id]
    assert with_merge.best_val == 1.0 and best.kind == "merge"
    a, b = (with_merge.pool[p] for p in best.parents)
    assert {tuple(a.changed), tuple(b.changed)} == {("instruction",), ("format",)}
    assert best.values == {"instruction": a.values["instruction"] if a.changed == ["instruction"] else b.values["instruction"],
                           "format": a.values["format"] if a.changed == ["format"] else b.values["format"]}
    assert [c.id for c in with_merge.lineage(best.id)] == sorted({0, a.id, b.id, best.id})
    without = run_task(one_shot=True, trade=True, budget=120, merge=False)
    assert without.best_val < 1.0 and all(c.kind != "merge" for c in without.candidates)


def test_same_seed_same_search_and_seed_matters_for_sampling():
    one, two = run_task(budget=80), run_task(budget=80)
    assert [c.to_dict() for c in one.candidates] == [c.to_dict() for c in two.candidates]
    assert [r["batch"] for r in one.rows if "batch" in r] == [r["batch"] for r in two.rows if "batch" in r]
    other = run_task(budget=80, seed=3)
    assert [r["batch"] for r in other.rows if "batch" in r] != [r["batch"] for r in one.rows if "batch" in r]


def test_stop_rules_target_patience_and_tokens():
    hit = run_task(budget=500, target=1.0)
    assert hit.stopped == "target" and hit.best_val == 1.0 and hit.metric_calls < 500

    params = make_params()

    class Stuck(ScriptedProposer):
        async def astep(self, params=None):
            return Report(failures=["no change"])

    stuck = Search(params, forward=make_forward(params), train=TRAIN, val=VAL, metric=metric, proposer=Stuck(params),
                   patience=3, perfect=None).fit()
    assert stuck.stopped == "patience" and len(stuck.candidates) == 1
    assert sum(1 for r in stuck.rows if r["kind"] == "mutation") == 3
    with pytest.raises(ValueError, match="stopping rule"):
        Search(params, forward=make_forward(params), train=TRAIN, val=VAL, proposer=Stuck(params))


def test_iterations_bounds_the_optimizer_steps_whatever_they_cost():
    params = make_params()
    result = Search(params, forward=make_forward(params), train=TRAIN, val=VAL, metric=metric,
                    proposer=ScriptedProposer(params), iterations=4, perfect=None).fit()
    assert result.stopped == "iterations" and result.iterations == 4
    assert len([r for r in result.rows if r["kind"] in ("mutation", "merge")]) == 4
    for bad in (-1, 2.5):
        with pytest.raises(ValueError, match="iterations must be an integer"):
            Search(params, forward=make_forward(params), train=TRAIN, val=VAL, metric=metric,
                   proposer=ScriptedProposer(params), iterations=bad)


def test_every_metric_call_counts_minibatch_and_val():
    result = run_task(budget=40)
    seed_calls = len(VAL)
    expected = seed_calls
    for r in result.rows:
        if r["kind"] == "mutation":
            expected += 3 + 3 * len(r.get("proposals", [])) + (len(VAL) if r.get("added") is not None else 0)
        elif r["kind"] == "merge":
            expected += len(VAL)
    assert result.metric_calls == expected and result.metric_calls >= 40


def test_second_sample_at_higher_temperature_names_rejected_values():
    params = make_params()
    proposer = ScriptedProposer(params, first_sample_useless=True)
    one = Search(params, forward=make_forward(params), train=TRAIN, val=VAL, metric=metric, proposer=proposer,
                 budget=60).fit()
    assert one.best_val == 0.25  # "please" never helps
    params = make_params()
    proposer = ScriptedProposer(params, first_sample_useless=True)
    two = Search(params, forward=make_forward(params), train=TRAIN, val=VAL, metric=metric, proposer=proposer,
                 budget=150, proposals=2).fit()
    assert two.best_val == 1.0
    first = proposer.rejected[0]
    (name, values), = first.items()
    assert len(values) == 2 and values[1] == values[0] + " please"  # the parent's value and the first sample


def test_feedback_from_loss_or_from_the_score():
    params = make_params()
    proposer = ScriptedProposer(params)

    def loss(ex, out):  # an evaluation Variable (what a TextLoss returns)
        return to.Variable(f"EVAL: {'mention ALPHA' if 'a' in ex.needs else 'fine'}", role="evaluation", parents=[out])

    plain = lambda ex, out: float(out.text == ex.answer)  # noqa: E731
    Search(params, forward=make_forward(params), train=TRAIN, val=VAL, metric=plain, loss=loss, proposer=proposer,
           budget=60).fit()
    assert proposer.seen and all(s.startswith("EVAL: ") for s in proposer.seen)
    params = make_params()
    proposer = ScriptedProposer(params)
    Search(params, forward=make_forward(params), train=TRAIN, val=VAL, metric=plain, proposer=proposer, budget=30).fit()
    assert any("expected answer is: answer" in s for s in proposer.seen)
    assert any("best score" in s for s in proposer.seen)


def test_forward_errors_are_scored_zero_and_the_search_goes_on():
    params = make_params()
    bad = (VAL[0].question, TRAIN[0].question)
    result = Search(params, forward=make_forward(params, fail_on=bad), train=TRAIN, val=VAL, metric=metric,
                    proposer=ScriptedProposer(params), budget=150).fit()
    assert result.best_val == pytest.approx(7 / 8)  # the crashing example scores 0 for every candidate
    assert all(c.val_scores[0] == 0.0 for c in result.candidates)


def test_callbacks_checkpoint_and_eval_reports(tmp_path):
    events = []
    result = run_task(tmp_path / "run", budget=60, callbacks=[events.append])
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and "step" in kinds
    assert [e["id"] for e in events if e["event"] == "candidate"] == [c.id for c in result.candidates]
    state = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert state["kind"] == "search" and [c["id"] for c in state["pool"]] == [c.id for c in result.candidates]
    assert state["metric_calls"] == result.metric_calls
    evals = sorted(p.name for p in (tmp_path / "run" / "evals").iterdir())
    assert evals == sorted(f"candidate_{c.id}.jsonl" for c in result.candidates)
    back = to.EvalReport.load(tmp_path / "run" / "evals" / "candidate_0.jsonl")
    assert [r.score for r in back.rows] == result.candidates[0].val_scores
    with pytest.raises(FileExistsError):
        run_task(tmp_path / "run", budget=60)  # an existing run is not silently overwritten


def test_resume_a_finished_search_with_a_larger_budget_goes_on(tmp_path):
    first = run_task(tmp_path / "r", budget=30)
    more = run_task(tmp_path / "r", budget=150, resume=True)
    assert more.metric_calls > first.metric_calls
    assert [c.to_dict() for c in more.candidates[: len(first.candidates)]] == [c.to_dict() for c in first.candidates]
    assert more.best_val == 1.0


def test_resume_after_sigkill_gives_the_same_result(tmp_path):
    reference = run_task(tmp_path / "ref", budget=90)
    run_dir = tmp_path / "killed"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import test_search as t; "
            "t.run_task(sys.argv[2], budget=90, delay=0.03)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(HERE), str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    killed_at = None
    try:
        while time.time() < deadline and proc.poll() is None:
            ck = run_dir / "checkpoint.json"
            if ck.exists():
                try:
                    state = json.loads(ck.read_text())
                except ValueError:
                    state = {}
                if state.get("iteration", 0) >= 3 and state.get("stopped") is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_at = state["iteration"]
                    break
            time.sleep(0.01)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait()
    assert killed_at is not None, proc.stderr.read().decode()[-2000:]
    resumed = run_task(run_dir, budget=90, resume=True)
    assert resumed.best == reference.best and resumed.best_val == reference.best_val
    assert [c.id for c in resumed.candidates] == [c.id for c in reference.candidates]
    assert [c.to_dict() for c in resumed.candidates] == [c.to_dict() for c in reference.candidates]
    assert resumed.metric_calls == reference.metric_calls and resumed.stopped == reference.stopped
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [e.get("resumed") for e in log if e["event"] == "start"] == [False, True]


class Stop(BaseException):
    """Stands for an interrupt in the middle of an iteration."""


def test_interrupted_search_keeps_the_best_values_and_resumes_to_the_same_result(tmp_path):
    reference = run_task(tmp_path / "ref", budget=90)
    params = make_params()
    inner, calls = make_forward(params), []

    async def forward(ex):
        calls.append(ex)
        if len(calls) == 45:
            raise Stop()
        return await inner(ex)

    with pytest.raises(Stop):
        Search(params, forward=forward, train=TRAIN, val=VAL, metric=metric, proposer=ScriptedProposer(params), budget=90,
               run_dir=tmp_path / "run").fit()
    state = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    pool = {c["id"]: c for c in state["pool"]}
    best = max(pool.values(), key=lambda c: (sum(c["val_scores"]), -c["id"]))
    assert {p.name: p.value for p in params} == best["values"]  # not whatever was being tried when it stopped
    resumed = run_task(tmp_path / "run", budget=90, resume=True)
    assert [c.to_dict() for c in resumed.candidates] == [c.to_dict() for c in reference.candidates]
    assert resumed.metric_calls == reference.metric_calls


def test_report_shows_pool_front_and_lineage(tmp_path):
    result = run_task(tmp_path / "run", one_shot=True, trade=True, budget=120)
    text = search_report(tmp_path / "run")
    assert "pool: " in text and "Pareto front" in text and f"lineage of #{result.best_id}" in text
    assert "merge of #" in text and "+Answer the question. ALPHA" in text and "+Reply briefly. BETA" in text
    for c in result.candidates:
        assert f"\n{c.id:>4}  {c.kind}" in text
    assert result.summary().splitlines()[1:] == text.splitlines()[1:]  # same report from the result in memory
    with pytest.raises(ValueError, match="no search checkpoint"):
        search_report(tmp_path / "nothing")


def test_argument_errors():
    params = make_params()
    common = dict(forward=make_forward(params), train=TRAIN, val=VAL, budget=10)
    with pytest.raises(ValueError, match="proposer must be"):
        Search(params, proposer="adam", **common)
    with pytest.raises(TypeError, match="has no abackward"):
        Search(params, proposer=object(), **common)
    with pytest.raises(ValueError, match="does not optimize format"):
        Search(params, proposer=ScriptedProposer(params[:1]), **common)
    with pytest.raises(ValueError, match="non-empty train"):
        Search(params, proposer=ScriptedProposer(params), **{**common, "val": []})
    with pytest.raises(TypeError, match="trainable Variables"):
        Search([to.Variable("x", role="constant")], proposer="tgd", **common)
    assert to.Search is Search


# -- real optimizers through the contract (scripted engines) ----------------------------------------------
def _scripted_task():
    """One trainable system prompt; the model answers right only when the prompt says 'ALPHA'."""
    prompt = to.Variable("Answer.", role="system prompt of the answering model", requires_grad=True, name="prompt")

    def model(messages):
        system = messages[0]["content"] if messages[0]["role"] == "system" else ""
        question = messages[-1]["content"]
        return question.replace("question", "answer") if "ALPHA" in system else "no idea"

    llm = to.LLM(to.ScriptedEngine(model), system_prompt=prompt)

    async def forward(ex):
        return await llm.acall(to.Variable(ex.question, role="question"))

    def updates(messages):
        system, user = messages[0]["content"], messages[-1]["content"]
        if "new_value" in system:  # an update request: add the keyword to the value shown
            current = user.split("<value>\n", 1)[1].split("\n</value>", 1)[0]
            return json.dumps({"reasoning": "the feedback asks for ALPHA", "new_value": current + " ALPHA"})
        return "The system prompt must mention ALPHA."  # a gradient request

    return prompt, forward, to.ScriptedEngine(updates)


class KeywordOptimizer(to.Optimizer):
    """A real Optimizer subclass: keeps the feedback it is given (no LLM, like OptoPrime) and proposes the
    keyword the feedback asks for, else the value unchanged (which the base records and re-asks)."""

    def __init__(self, params) -> None:
        super().__init__(params)
        self.notes_: list[str] = []

    async def abackward(self, output, feedback=None, *, engine=None) -> None:
        self.notes_.append(feedback if feedback is not None else output.text)

    def zero_grad(self) -> None:
        super().zero_grad()
        self.notes_ = []

    async def propose(self, params, *, temperature, rejected):
        said = " ".join(self.notes_)
        return {p: to.Proposal(p.value + " " + KEYS[p.name], reasoning=f"asked for {KEYS[p.name]}")
                if KEYS[p.name] in said and KEYS[p.name] not in p.value else to.Proposal(p.value) for p in params}


def test_an_optimizer_subclass_is_a_proposer():
    params = make_params()
    opt = KeywordOptimizer(params)
    result = Search(params, forward=make_forward(params), train=TRAIN, val=VAL, metric=metric, proposer=opt, budget=150).fit()
    assert result.best_val == 1.0 and opt.steps == sum(1 for r in result.rows if "proposals" in r)
    assert opt.notes_ == []  # feedback is cleared after every mutation
    # nothing in this training set asks for BETA: mutating `format` proposes no change, which the base records
    params = make_params()
    opt = KeywordOptimizer(params)
    only_a = [q for q in TRAIN if q.needs == "a"]
    result = Search(params, forward=make_forward(params), train=only_a, val=VAL, metric=metric, proposer=opt, budget=40,
                    perfect=None).fit()
    assert "ALPHA" in result.best["instruction"] and result.best["format"] == "Reply briefly."
    assert any(f.kind == "no change" and f.variable == "format" for f in opt.failures)
    assert all(r["failures"] >= 1 and r["proposals"] == [] for r in result.rows if r.get("param") == "format")


@pytest.mark.parametrize("proposer", ["tgd", "optoprime"])
def test_named_proposers_work_through_the_optimizer_contract(proposer):
    prompt, forward, engine = _scripted_task()
    exact = lambda ex, out: to.Score(float(out.text == ex.answer), "correct" if out.text == ex.answer else "wrong")  # noqa: E731
    train, val = dataset(6), dataset(4, offset=50)
    if proposer == "optoprime":
        def updates(messages):  # OptoPrime asks for a suggestion per parameter name
            return json.dumps({"reasoning": "the feedback asks for ALPHA", "suggestion": {"prompt": "Answer. ALPHA"}})
        engine = to.ScriptedEngine(updates)
    result = Search([prompt], forward=forward, train=train, val=val, metric=exact, proposer=proposer, engine=engine,
                    budget=40).fit()
    assert result.best_val == 1.0 and "ALPHA" in result.best["prompt"] and prompt.value == result.best["prompt"]
    added = [c for c in result.candidates if c.kind == "mutation"]
    assert added and added[0].reasoning == "the feedback asks for ALPHA"
    assert engine.calls  # the proposer's engine did the reflection


@pytest.mark.local
def test_search_on_the_local_model_runs_and_records(local_engine, tmp_path):
    """Tiny: 2 validation examples, ~10 metric calls, short replies. Asserts what holds on every run."""
    from textopt.datasets import label_metric, sentiment

    prompt = to.Variable("Is this review positive or negative? Answer with one word.", role="instruction before the review",
                         requires_grad=True, name="instruction")

    llm = to.LLM(local_engine, system_prompt=prompt, max_tokens=16)

    async def forward(ex):
        return await llm.acall(to.Variable(ex.question, role="review"))

    data = sentiment(6, seed=1)
    opt = to.OptoPrime([prompt], engine=local_engine, max_tokens=32, temperatures=(None,))  # one short ask per step
    result = Search([prompt], forward=forward, train=data[:4], val=data[4:], metric=label_metric("sentiment"), proposer=opt,
                    minibatch=2, budget=10, run_dir=tmp_path / "run").fit()
    assert result.stopped in ("budget_metric_calls", "budget_engine")
    assert result.candidates[0].kind == "seed" and all(len(c.val_scores) == 2 for c in result.candidates)
    assert result.metric_calls >= 10 and prompt.value == result.best["instruction"]
    muts = [r for r in result.rows if r["kind"] == "mutation"]
    assert muts and all(r.get("skipped") or r.get("proposals") or r.get("failures") for r in muts)  # a value or a reason
    assert "lineage of #" in search_report(tmp_path / "run")
