"""Built-in procedural tasks with exact answers, and loading of JSONL/CSV files of {question, answer}.

Procedural tasks are generated from a seed, so every machine gets the same examples, offline.

Two kinds of built-in task:
- answer tasks (object_counting, word_sorting, arithmetic), scored by `exact_match`;
- label tasks (sentiment, categories), where the *prompt* matters for small models: the reply must name
  exactly one label word, and the model has to be told which words those are. They are scored by
  `label_metric(task)`, which returns a score and a sentence of why (feedback an optimizer can read).
  On SmolLM2-135M an instruction works far better as a template in the user turn around the input than as
  a system prompt, so the trainable text for these tasks is an instruction template: see `render`.
"""
from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

try:
    from .scores import Score
except ImportError:  # loaded as a file of its own (a benchmark's isolated process reads it by path): plain tuples
    Score = None  # type: ignore[assignment,misc]

_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
_FRUITS = ["apple", "banana", "orange", "plum", "peach", "grape", "pear", "cherry"]
_ANIMALS = ["dog", "cat", "rabbit", "goat", "cow", "duck", "horse", "snake"]
_INSTRUMENTS = ["piano", "flute", "violin", "drum", "trumpet", "guitar", "cello", "clarinet"]
_CATEGORIES = {"fruits": _FRUITS, "animals": _ANIMALS, "musical instruments": _INSTRUMENTS}


@dataclass(frozen=True)
class Example:
    """A question with its exact answer."""

    question: str
    answer: str


def _plural(word: str, n: int) -> str:
    if n == 1:
        return f"a {word}" if word[0] not in "aeiou" else f"an {word}"
    if word.endswith("y") and word[-2] not in "aeiou":
        return f"{_NUMBER_WORDS[n]} {word[:-1]}ies"
    return f"{_NUMBER_WORDS[n]} {word}{'es' if word.endswith(('ch', 'sh')) else 's'}"


def object_counting(n: int = 50, seed: int = 0) -> list[Example]:
    """'I have a plum, two dogs and a flute. How many fruits do I have?' -> '1'."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        target = rng.choice(sorted(_CATEGORIES))
        items: list[tuple[str, int]] = []
        for cat, words in sorted(_CATEGORIES.items()):
            k = rng.randint(1, 3) if cat == target else rng.randint(0, 2)
            for w in rng.sample(words, k):
                items.append((w, rng.randint(1, 3)))
        rng.shuffle(items)
        answer = sum(c for w, c in items if w in _CATEGORIES[target])
        listed = [_plural(w, c) for w, c in items]
        phrase = ", ".join(listed[:-1]) + f", and {listed[-1]}" if len(listed) > 1 else listed[0]
        out.append(Example(f"I have {phrase}. How many {target} do I have?", str(answer)))
    return out


def word_sorting(n: int = 50, seed: int = 0) -> list[Example]:
    """'Sort alphabetically: pear dog flute' -> 'dog flute pear'."""
    rng = random.Random(seed)
    vocab = sorted(set(_FRUITS + _ANIMALS + _INSTRUMENTS))
    out = []
    for _ in range(n):
        words = rng.sample(vocab, rng.randint(3, 6))
        out.append(Example("Sort these words alphabetically: " + " ".join(words), " ".join(sorted(words))))
    return out


def arithmetic(n: int = 50, seed: int = 0) -> list[Example]:
    """'What is 7 + 12 * 3?' -> '43'."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b, c = rng.randint(1, 20), rng.randint(1, 20), rng.randint(1, 9)
        op1, op2 = rng.choice("+-"), rng.choice("+-*")
        expr = f"{a} {op1} {b} {op2} {c}"
        out.append(Example(f"What is {expr}?", str(eval(expr, {"__builtins__": {}}))))  # our own digits only
    return out


# -- label tasks: the prompt has to teach the label set ------------------------------------------------

_SUBJECTS = ["The movie", "The soup", "The hotel room", "My new phone", "The concert", "The service", "The book",
             "The train ride", "The coffee", "The new software update", "Our tour guide", "The museum visit",
             "The pizza", "The customer support call", "The hiking trail", "The laptop", "The play", "The bakery"]
_POSITIVE = ["was wonderful", "made my whole day", "was a real delight", "exceeded every expectation",
             "was worth every penny", "left me smiling", "was simply excellent", "felt warm and friendly",
             "was better than I hoped", "is something I would gladly repeat"]
_NEGATIVE = ["was awful", "ruined my whole day", "was a complete letdown", "fell far below expectations",
             "was a waste of money", "left me annoyed", "was simply terrible", "felt cold and rude",
             "was worse than I feared", "is something I never want to repeat"]
_SENTIMENT_TAILS = ["", "", " again", " this time", ", honestly", " from start to finish"]


def sentiment(n: int = 50, seed: int = 0) -> list[Example]:
    """'The soup was a complete letdown this time.' -> 'negative' (balanced labels, shuffled)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        pred = rng.choice(_POSITIVE if label == "positive" else _NEGATIVE)
        out.append(Example(f"{rng.choice(_SUBJECTS)} {pred}{rng.choice(_SENTIMENT_TAILS)}.", label))
    rng.shuffle(out)
    return out


_ITEMS = {
    "fruit": _FRUITS + ["mango", "lemon", "kiwi", "melon", "apricot", "strawberry", "pineapple", "fig", "lime", "papaya"],
    "animal": _ANIMALS + ["tiger", "sheep", "zebra", "eagle", "mouse", "donkey", "camel", "otter", "wolf", "parrot"],
    "instrument": _INSTRUMENTS + ["harp", "banjo", "saxophone", "oboe", "trombone", "ukulele", "accordion", "tuba",
                                  "harmonica", "xylophone"],
}
_ITEM_ADJECTIVES = ["", "", "small", "big", "old", "new", "cheap", "fine"]


def categories(n: int = 50, seed: int = 0) -> list[Example]:
    """'a shiny banjo' -> 'instrument'; labels fruit / animal / instrument, cycled so they stay balanced."""
    rng = random.Random(seed)
    labels = sorted(_ITEMS)
    out = []
    for i in range(n):
        label = labels[i % len(labels)]
        adj = rng.choice(_ITEM_ADJECTIVES)
        item = rng.choice(_ITEMS[label])
        phrase = f"{adj} {item}" if adj else item
        out.append(Example(("an " if phrase[0] in "aeiou" else "a ") + phrase, label))
    rng.shuffle(out)
    return out


#: The label set of every label task (the metric needs it: a reply must name exactly one of these).
LABELS: dict[str, tuple[str, ...]] = {
    "sentiment": ("positive", "negative"),
    "categories": ("fruit", "animal", "instrument"),
}

#: A template that passes the input alone: the "no instruction" baseline for label tasks.
BARE_TEMPLATE = "{input}"
SLOT = "{input}"


def render(template: str, text: str) -> str:
    """The user message for one input: `template` with its `{input}` slot replaced by `text`.

    Only the literal `{input}` is replaced (other braces are left alone, so a template may show JSON).
    A template without the slot is an instruction to put before the input: the result is the template,
    a blank line, then the input. An empty template gives the input alone.
    """
    template = template or ""
    if SLOT in template:
        return template.replace(SLOT, text)
    return f"{template.rstrip()}\n\n{text}" if template.strip() else text


def found_labels(reply: str, labels: Sequence[str]) -> list[str]:
    """The distinct label words a reply names, in order of first appearance (whole words, any case;
    a plain plural such as 'fruits' counts as the label)."""
    hits: list[tuple[int, str]] = []
    low = reply.lower()
    for label in labels:
        m = re.search(rf"\b{re.escape(label.lower())}s?\b", low)
        if m:
            hits.append((m.start(), label))
    return [label for _, label in sorted(hits)]


def label_feedback(reply: str, answer: str, labels: Sequence[str]) -> tuple[float, str]:
    """(score, why): 1.0 when the reply names exactly one label word and it is `answer`, else 0.0."""
    named = found_labels(reply, labels)
    options = " or ".join(repr(x) for x in labels)
    if named == [answer]:
        return 1.0, f"correct: the reply named exactly the expected label {answer!r}"
    if not named:
        return 0.0, f"reply named no label (it must say one of {options}); expected exactly {answer!r}"
    if len(named) > 1:
        listed = " and ".join(repr(x) for x in named)
        return 0.0, f"reply named {len(named)} labels: {listed}; expected exactly {answer!r}"
    return 0.0, f"reply named the wrong label {named[0]!r}; expected {answer!r}"


#: A word in braces, as a template slot is written ({input}); JSON examples such as {"a": 1} don't match.
_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
#: The tags textopt's own prompts use to mark a value (a small proposer copies them into its new value).
_STRUCTURE_TAG = re.compile(r"</?(?:value|new_value|feedback|variable|constraint|rejected|past)>", re.I)


def template_problem(template: str, labels: Sequence[str]) -> str | None:
    """Why `template` can't be a label task's instruction template, else None. It must hold {input} (or the
    text is never shown, and a reply can only echo the template), no other `{slot}` (nothing fills it) and
    none of the tags textopt's prompts mark values with (a proposer copied them), and name all the labels or
    none: a template that names one label but not the others wins its score by having the model echo that word."""
    if "{input}" not in template:
        return "it has no {input} slot, so the text to classify would never reach the model"
    stray = sorted({m for m in _PLACEHOLDER.findall(template) if m != SLOT})
    if stray:
        return (f"it has the placeholder(s) {', '.join(stray)}, which nothing fills (only {SLOT} is replaced, by the text): "
                "write the words themselves")
    tag = _STRUCTURE_TAG.search(template)
    if tag:
        return (f"it contains the tag {tag.group(0)!r}, copied from the request's layout: the template is plain text "
                "with {input} where the text goes")
    named = found_labels(template.replace("{input}", " "), labels)
    if named and len(named) < len(labels):
        missing = [x for x in labels if x not in named]
        return (f"it names the label(s) {', '.join(map(repr, named))} but not {', '.join(map(repr, missing))}: name every "
                "label or none (a model that echoes the one label it was shown is not classifying)")
    return None


def label_metric(task: str | Sequence[str]) -> Callable[[Any, Any], Any]:
    """metric(example, output) for a label task (a task name from LABELS, or the label words themselves).

    `output` may be a Variable or a string; the example needs an `answer` (attribute or key). Returns a
    `textopt.Score(value, feedback)` (a (score, feedback) tuple when this file is loaded on its own)."""
    labels = tuple(LABELS[task]) if isinstance(task, str) else tuple(task)

    def metric(example: Any, output: Any) -> Any:
        answer = example.get("answer") if isinstance(example, dict) else getattr(example, "answer", None)
        reply = getattr(output, "text", output)
        value, why = label_feedback(str(reply), str(answer), labels)
        return Score(value, why) if Score is not None else (value, why)

    metric.__name__ = f"label_metric_{'_'.join(labels)}"
    metric.__textopt_nonblocking__ = True  # type: ignore[attr-defined]  # string work only: called on the loop (usercall.nonblocking)
    return metric


def metric_for(name: str) -> Callable[[Any, Any], Any] | None:
    """The built-in metric of a task: `label_metric` for label tasks, None (exact match) for the others."""
    return label_metric(name) if name in LABELS else None


#: Hand-written instruction templates per label task (measured in BENCHMARKS.md, workload g): the seed
#: prompt for optimizers is the bare template; these show how far the wording alone moves accuracy.
TEMPLATES: dict[str, dict[str, str]] = {
    "sentiment": {
        "bare": BARE_TEMPLATE,
        "question": "{input}\nIs this positive or negative?",
        "one-word": "Is the sentiment of this sentence positive or negative? Answer with one word.\n\nSentence: {input}",
        "examples": "Classify the sentiment as positive or negative.\nThe cake was lovely. -> positive\n"
                    "The bus was late and dirty. -> negative\n{input} ->",
        "label-line": "Sentence: {input}\nSentiment (positive or negative):",
    },
    "categories": {
        "bare": BARE_TEMPLATE,
        "question": "{input}\nIs this a fruit, an animal or an instrument?",
        "one-word": "Is the following a fruit, an animal or an instrument? Answer with one word.\n\n{input}",
        "examples": "Say whether each item is a fruit, an animal or an instrument.\na pear -> fruit\n"
                    "a horse -> animal\na flute -> instrument\n{input} ->",
        "label-line": "Item: {input}\nCategory (fruit, animal or instrument):",
    },
}


TASKS: dict[str, Callable[..., list[Example]]] = {
    "object_counting": object_counting,
    "word_sorting": word_sorting,
    "arithmetic": arithmetic,
    "sentiment": sentiment,
    "categories": categories,
}


def load(name_or_path: str, *, n: int = 50, seed: int = 0) -> list[Example]:
    """A built-in task by name, or a .jsonl / .csv file with `question` and `answer` fields."""
    if name_or_path in TASKS:
        return TASKS[name_or_path](n=n, seed=seed)
    path = Path(name_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"no built-in task or file named {name_or_path!r}; built-in tasks: {', '.join(TASKS)}")
    rows: list[dict[str, str]]
    if path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{i} is not valid JSON ({exc.msg}); each line must be one object") from exc
    elif path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    else:
        raise ValueError(f"{path}: use a .jsonl or .csv file with 'question' and 'answer' fields")
    out = []
    for i, row in enumerate(rows, 1):
        if "question" not in row or "answer" not in row:
            raise ValueError(f"{path}: row {i} lacks 'question' or 'answer' (has {sorted(row)})")
        out.append(Example(str(row["question"]), str(row["answer"])))
    return out


def split(examples: list[Example], *, train: int, val: int = 0, test: int = 0) -> tuple[list[Example], ...]:
    """Consecutive, non-overlapping slices (train, val, test)."""
    if train + val + test > len(examples):
        raise ValueError(f"asked for {train + val + test} examples but only {len(examples)} exist")
    return examples[:train], examples[train : train + val], examples[train + val : train + val + test]


_LAST_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_WORD_NUMBERS = {w: str(i) for i, w in enumerate(_NUMBER_WORDS)}


def parse_number(text: str) -> str | None:
    """The last number in a reply ('... so the answer is 4.' -> '4'), number words included."""
    tokens = re.findall(r"-?\d+(?:\.\d+)?|[a-zA-Z]+", text)
    for tok in reversed(tokens):
        if _LAST_NUMBER.fullmatch(tok):
            return tok[:-2] if tok.endswith(".0") else tok
        if tok.lower() in _WORD_NUMBERS:
            return _WORD_NUMBERS[tok.lower()]
    return None


def exact_match(reply: str, answer: str) -> bool:
    """Numeric answers compare the last number in the reply; others compare normalized text."""
    if _LAST_NUMBER.fullmatch(answer.strip()):
        return parse_number(reply) == answer.strip()
    norm = lambda s: " ".join(re.findall(r"[a-z0-9]+", s.lower()))  # noqa: E731
    return norm(answer) != "" and norm(answer) in norm(reply)
