"""Built-in procedural tasks with exact answers, and loading of JSONL/CSV files of {question, answer}.

Procedural tasks are generated from a seed, so every machine gets the same examples, offline.
"""
from __future__ import annotations

import csv
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

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


TASKS: dict[str, Callable[..., list[Example]]] = {
    "object_counting": object_counting,
    "word_sorting": word_sorting,
    "arithmetic": arithmetic,
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
