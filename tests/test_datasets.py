"""Built-in tasks: deterministic generation, the label metric and its feedback, instruction templates,
and loading of the older tasks and of files."""
from __future__ import annotations

import json

import pytest

import textopt as to
from textopt import datasets


@pytest.mark.parametrize("task", ["sentiment", "categories", "object_counting", "word_sorting", "arithmetic"])
def test_same_seed_same_examples_other_seed_other_examples(task):
    a = datasets.load(task, n=40, seed=3)
    assert a == datasets.load(task, n=40, seed=3)
    assert a != datasets.load(task, n=40, seed=4)
    assert len(a) == 40 and all(e.question and e.answer for e in a)


@pytest.mark.parametrize("task", ["sentiment", "categories"])
def test_label_tasks_are_balanced_and_use_only_their_labels(task):
    ex = datasets.load(task, n=120, seed=0)
    labels = datasets.LABELS[task]
    counts = {lab: sum(e.answer == lab for e in ex) for lab in labels}
    assert set(e.answer for e in ex) == set(labels)
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    # the input never gives the label away
    assert not any(datasets.found_labels(e.question, labels) for e in ex)
    # enough distinct inputs that a 100-example test set is not a handful of repeats
    assert len({e.question for e in ex}) >= 90


def test_categories_answer_matches_the_item():
    for e in datasets.categories(n=60, seed=2):
        item = e.question.split()[-1]
        assert item in datasets._ITEMS[e.answer], e


@pytest.mark.parametrize(
    ("reply", "score", "says"),
    [
        ("negative", 1.0, "correct"),
        ("The sentiment is Negative.", 1.0, "correct"),
        ("positive", 0.0, "wrong label 'positive'"),
        ("It could be positive or negative.", 0.0, "named 2 labels: 'positive' and 'negative'"),
        ("I think the soup was bad.", 0.0, "named no label"),
        ("nonnegative", 0.0, "named no label"),  # whole words only
    ],
)
def test_sentiment_metric_scores_and_explains(reply, score, says):
    ex = datasets.Example("The soup was awful.", "negative")
    value, why = datasets.label_feedback(reply, ex.answer, datasets.LABELS["sentiment"])
    assert value == score and says in why and "negative" in why
    got = datasets.label_metric("sentiment")(ex, reply)
    got_value, got_why = (got.value, got.feedback) if hasattr(got, "value") else got
    assert (got_value, got_why) == (value, why)


def test_label_metric_reads_variables_dicts_and_plurals():
    metric = datasets.label_metric("categories")
    out = to.Variable("Those are fruits.", role="reply")
    got = metric({"question": "a pear", "answer": "fruit"}, out)
    value = got.value if hasattr(got, "value") else got[0]
    assert value == 1.0
    got = metric(datasets.Example("a harp", "instrument"), "an animal, or maybe an instrument")
    assert (got.value if hasattr(got, "value") else got[0]) == 0.0
    assert datasets.metric_for("categories") is not None and datasets.metric_for("arithmetic") is None


def test_render_fills_the_slot_or_puts_the_instruction_first():
    assert datasets.render("Review: {input}\nPositive or negative?", "Great.") == "Review: Great.\nPositive or negative?"
    assert datasets.render('Reply as {"label": ...}: {input}', "x") == 'Reply as {"label": ...}: x'  # other braces kept
    assert datasets.render("Classify the sentiment.", "Great.") == "Classify the sentiment.\n\nGreat."
    assert datasets.render("", "Great.") == "Great." == datasets.render(datasets.BARE_TEMPLATE, "Great.")


def test_every_hand_written_template_names_the_labels():
    for task, templates in datasets.TEMPLATES.items():
        assert templates["bare"] == datasets.BARE_TEMPLATE
        for name, t in templates.items():
            assert datasets.SLOT in t
            if name != "bare":
                assert set(datasets.found_labels(t, datasets.LABELS[task])) == set(datasets.LABELS[task]), (task, name)


def test_load_files_and_unknown_names(tmp_path):
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps({"question": "q1", "answer": "a1"}) + "\n")
    assert datasets.load(str(p)) == [datasets.Example("q1", "a1")]
    with pytest.raises(FileNotFoundError, match="sentiment"):
        datasets.load("no_such_task")
