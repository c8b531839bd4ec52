"""evaluate: per-example rows, a seeded bootstrap interval, errors as rows, JSONL round trip, concurrency."""
from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass

import pytest

import textopt as to
from textopt.evaluate import EvalReport, EvalRow, Score, aevaluate, bootstrap_ci, evaluate


@dataclass(frozen=True)
class Ex:
    question: str
    answer: str


def echo_engine(**kw) -> to.ScriptedEngine:
    """Answers the number in the question, except questions containing 'odd' get a wrong answer."""

    def reply(messages):
        q = messages[-1]["content"]
        n = q.split()[-1]
        return "wrong" if "odd" in q else n

    return to.ScriptedEngine(reply, **kw)


def make_forward(engine):
    llm = to.LLM(engine)

    async def forward(ex: Ex) -> to.Variable:
        return await llm.acall(to.Variable(ex.question, role="question"))

    return forward


def examples(n: int, odd_every: int = 3) -> list[Ex]:
    return [Ex(f"{'odd ' if i % odd_every == 0 else ''}say {i}", str(i)) for i in range(n)]


def test_rows_per_example_in_order_with_outputs_and_scores():
    exs = examples(9)
    report = evaluate(make_forward(echo_engine(latency=0.002)), exs, concurrency=4)
    assert [r.example for r in report.rows] == exs
    for ex, row in zip(exs, report.rows):
        expected_ok = not ex.question.startswith("odd")
        assert row.output == (ex.answer if expected_ok else "wrong")
        assert row.score == (1.0 if expected_ok else 0.0)
        assert row.error is None
    assert report.mean == pytest.approx(6 / 9)
    low, high = report.ci95
    assert low <= report.mean <= high and low < high


def test_metric_kinds_number_bool_none_and_score_feedback():
    exs = [Ex(f"say {i}", str(i)) for i in range(4)]
    returns = {0: 0.25, 1: True, 2: None, 3: Score(0.5, feedback="half right: missing the unit")}
    report = evaluate(make_forward(echo_engine()), exs, metric=lambda ex, out: returns[int(ex.answer)])
    assert [r.score for r in report.rows] == [0.25, 1.0, None, 0.5]
    assert report.rows[3].feedback == "half right: missing the unit"
    assert report.mean == pytest.approx((0.25 + 1.0 + 0.5) / 3)  # None is not scored, not a zero
    with pytest.raises(TypeError, match="metric must return"):
        evaluate(make_forward(echo_engine()), exs[:1], metric=lambda ex, out: "good")
    with pytest.raises(ValueError):
        Score(float("nan"))


def test_async_metric_and_sync_forward_on_threads():
    engine = echo_engine(latency=0.02, max_concurrency=16)
    llm = to.LLM(engine)
    threads = set()

    def forward(ex):  # sync: runs on a worker thread, several at once
        threads.add(threading.get_ident())
        return llm(to.Variable(ex.question, role="question"))

    async def metric(ex, out):
        await asyncio.sleep(0)
        return Score(float(out.text == ex.answer), "ok" if out.text == ex.answer else f"expected {ex.answer}")

    exs = examples(16)
    start = time.perf_counter()
    report = evaluate(forward, exs, metric, concurrency=8)
    elapsed = time.perf_counter() - start
    assert threading.get_ident() not in threads and len(threads) > 1
    assert report.rows[0].feedback == "expected 0" and report.rows[1].feedback == "ok"
    assert elapsed < 16 * 0.02  # concurrent, not one after the other


def test_a_nonblocking_metric_runs_on_the_loop_and_a_plain_sync_one_on_a_worker_thread():
    """`to.nonblocking` saves the thread hop for quick metrics (textopt's own label and exact-match metrics
    are marked); an unmarked sync metric may block (run code, call a model), so it stays off the loop."""
    engine = echo_engine()
    llm = to.LLM(engine)
    seen: dict[str, set[int]] = {"marked": set(), "plain": set(), "label": set(), "loop": set()}

    async def forward(ex):
        seen["loop"].add(threading.get_ident())
        return await llm.acall(to.Variable(ex.question, role="question"))

    @to.nonblocking
    def marked(ex, out):
        seen["marked"].add(threading.get_ident())
        return out.text == ex.answer

    def plain(ex, out):
        seen["plain"].add(threading.get_ident())
        return out.text == ex.answer

    label = to.datasets.label_metric(("yes", "no"))

    def label_spy(ex, out):  # same mark as the built-in, so the spy is called where the built-in would be
        seen["label"].add(threading.get_ident())
        return label(ex, out)

    label_spy.__textopt_nonblocking__ = label.__textopt_nonblocking__
    exs = examples(6)
    reports = [asyncio.run(aevaluate(forward, exs, m, concurrency=3)) for m in (marked, plain)]
    asyncio.run(aevaluate(forward, [Ex("say yes", "yes")], label_spy))
    assert len(seen["loop"]) == 1
    assert seen["marked"] == seen["loop"] and seen["label"] == seen["loop"]
    assert seen["plain"] and not seen["plain"] & seen["loop"]
    expected = [0.0 if "odd" in ex.question else 1.0 for ex in exs]  # the echo engine gets 'odd' questions wrong
    assert [r.score for r in reports[0].rows] == [r.score for r in reports[1].rows] == expected
    assert to.nonblocking(plain) is plain  # the decorator returns the function itself


def test_forward_errors_are_rows_scored_zero_and_counted():
    engine = echo_engine()
    llm = to.LLM(engine)

    async def forward(ex):
        if ex.answer in ("2", "5"):
            raise RuntimeError(f"tool crashed on {ex.answer}")
        return await llm.acall(to.Variable(ex.question, role="question"))

    exs = [Ex(f"say {i}", str(i)) for i in range(6)]
    report = evaluate(forward, exs)
    assert report.errors == 2
    bad = [r for r in report.rows if r.error]
    assert [r.example.answer for r in bad] == ["2", "5"]
    assert all(r.score == 0.0 and r.output == "" and "tool crashed" in r.error for r in bad)
    assert "tool crashed" in bad[0].feedback  # the reflection can read why
    assert report.mean == pytest.approx(4 / 6)
    assert report.worst(2) == bad
    assert "2 errors" in report.summary()


def test_budget_exceeded_is_not_swallowed():
    async def forward(ex):
        raise to.BudgetExceeded("spent")

    with pytest.raises(to.BudgetExceeded):
        evaluate(forward, examples(3))


def test_a_stop_signal_cancels_the_calls_in_flight_and_starts_no_more():
    started, finished = [], []

    async def forward(ex):
        started.append(ex.question)
        if ex.question == "q3":
            raise to.BudgetExceeded("spent")
        await asyncio.sleep(0.5)
        finished.append(ex.question)
        return to.Variable(ex.answer)

    with pytest.raises(to.BudgetExceeded, match="spent"):  # the error itself, not an exception group
        evaluate(forward, [Ex(f"q{i}", "a") for i in range(100)], concurrency=4)
    assert started == ["q0", "q1", "q2", "q3"]  # in order, at most 4 at once, none after the stop
    assert finished == []  # the three in flight were cancelled, not left running


def test_metric_error_is_raised_naming_the_example():
    with pytest.raises(ZeroDivisionError) as info:
        evaluate(make_forward(echo_engine()), examples(3), metric=lambda ex, out: 1 / 0)
    assert any("metric failed on example" in note for note in info.value.__notes__)


def test_forward_must_return_variable_or_text():
    report = evaluate(lambda ex: ex.answer, examples(3, odd_every=100))  # plain text is fine
    assert report.mean == 1.0
    with pytest.raises(TypeError, match="must return a textopt Variable"):
        evaluate(lambda ex: 42, examples(1))


def test_interval_contains_mean_narrows_with_n_and_is_seeded():
    small = [float(i % 2) for i in range(20)]
    large = [float(i % 2) for i in range(800)]
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s < 0.5 < hi_s and lo_l < 0.5 < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 3  # ~ 1/sqrt(n): sqrt(40) ~ 6.3x narrower
    assert bootstrap_ci(small, seed=0) == bootstrap_ci(small, seed=0)
    assert bootstrap_ci(small, seed=1) != bootstrap_ci(small, seed=0)
    assert bootstrap_ci([]) is None and bootstrap_ci([0.7]) == (0.7, 0.7) and bootstrap_ci([1.0] * 5) == (1.0, 1.0)
    # the same through reports: interval contains the mean and narrows with n
    r20 = EvalReport([EvalRow(i, "", s) for i, s in enumerate(small)])
    r800 = EvalReport([EvalRow(i, "", s) for i, s in enumerate(large)])
    assert r20.ci95[0] <= r20.mean <= r20.ci95[1]
    assert (r800.ci95[1] - r800.ci95[0]) < (r20.ci95[1] - r20.ci95[0])


def test_empty_and_unscored_reports():
    assert evaluate(lambda ex: "x", []).mean is None
    report = evaluate(lambda ex: "x", [{"question": "no answer"}])  # default metric: no answer -> unscored
    assert report.rows[0].score is None and report.mean is None and report.ci95 is None
    assert "none scored" in report.summary()


def test_save_load_round_trip(tmp_path):
    exs = examples(7)
    engine = echo_engine()
    report = evaluate(make_forward(engine), exs, lambda ex, out: Score(float(out.text == ex.answer), f"wanted {ex.answer}"))
    path = report.save(tmp_path / "evals" / "val.jsonl")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 7 and json.loads(lines[0])["example"] == {"question": "odd say 0", "answer": "0"}
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # atomic: no temp file left
    back = EvalReport.load(path)
    assert [r.example for r in back.rows] == [{"question": e.question, "answer": e.answer} for e in exs]
    assert [(r.output, r.score, r.feedback, r.error) for r in back.rows] == [
        (r.output, r.score, r.feedback, r.error) for r in report.rows
    ]
    assert back.mean == report.mean and back.ci95 == report.ci95


def test_worst_orders_by_score_then_example_order():
    rows = [EvalRow("a", "", 0.5), EvalRow("b", "", None), EvalRow("c", "", 0.0, error="E: x"), EvalRow("d", "", 0.5),
            EvalRow("e", "", 1.0)]
    report = EvalReport(rows)
    assert [r.example for r in report.worst(5)] == ["c", "a", "d", "e", "b"]
    assert [r.example for r in report.worst(1)] == ["c"]


def test_concurrency_bounds_forwards_in_flight():
    engine = echo_engine(latency=0.01, max_concurrency=64)
    report = evaluate(make_forward(engine), examples(30), concurrency=3)
    assert report.n == 30 and engine.max_in_flight == 3
    engine = echo_engine(latency=0.01, max_concurrency=64)
    evaluate(make_forward(engine), examples(30), concurrency=10)
    assert engine.max_in_flight == 10
    with pytest.raises(ValueError, match="concurrency"):
        evaluate(make_forward(engine), examples(2), concurrency=0)


def test_async_entry_point_from_running_loop():
    async def main():
        return await aevaluate(make_forward(echo_engine()), [Ex(f"say {i}", str(i)) for i in range(4)])

    assert asyncio.run(main()).mean == 1.0


def test_lazy_exports():
    assert to.evaluate is evaluate and to.aevaluate is aevaluate and to.Score is Score and to.EvalReport is EvalReport
