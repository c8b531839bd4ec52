"""Labeled prompt-injection texts: `load_corpus("bastion")` reads the bastioncorpus package (MIT), offline.

Labels are mapped to "malicious"/"benign"; the corpus category is kept. `split` makes a stratified,
seeded train/held-out split so evaluations can be repeated.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

LABELS = ("malicious", "benign")
#: bastioncorpus rows may hold a `{canary}` slot that its probe runner fills; we strip it (as its own adapters do).
_CANARY = "{canary}"


@dataclass(frozen=True)
class Example:
    """One labeled text. label is "malicious" (an injection attempt) or "benign"."""

    text: str
    label: str
    category: str = ""
    id: str = ""
    lang: str = ""

    @property
    def is_malicious(self) -> bool:
        return self.label == "malicious"


def _example(row: dict, where: str) -> Example:
    text = str(row.get("text", "")).replace(_CANARY, "").strip()
    label = str(row.get("label", "malicious")).strip().lower()
    if label in ("1", "true", "injection", "attack"):
        label = "malicious"
    elif label in ("0", "false", "safe", "clean"):
        label = "benign"
    if label not in LABELS:
        raise ValueError(f"{where}: label {row.get('label')!r} is neither 'malicious' nor 'benign'")
    if not text:
        raise ValueError(f"{where}: the text is empty")
    return Example(text=text, label=label, category=str(row.get("category", "")), id=str(row.get("id", "")), lang=str(row.get("lang", "")))


def _bastion() -> list[Example]:
    try:
        from importlib import resources

        data = resources.files("bastioncorpus").joinpath("corpus/injections.jsonl").read_text(encoding="utf-8")
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "the 'bastion' corpus needs the bastioncorpus package: run `pip install bastioncorpus` "
            "(or `pip install 'textopt[dev]'`)"
        ) from exc
    rows = [json.loads(line) for line in data.splitlines() if line.strip()]
    return [_example(r, f"bastioncorpus row {r.get('id', i)!r}") for i, r in enumerate(rows)]


def load_corpus(name: str = "bastion") -> list[Example]:
    """Labeled texts: "bastion" (the bastioncorpus package) or a .jsonl file with text, label[, category, id] per line."""
    if name == "bastion":
        return _bastion()
    path = Path(name)
    if path.suffix == ".jsonl" and path.is_file():
        out = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                out.append(_example(json.loads(line), f"{path}:{i}"))
        if not out:
            raise ValueError(f"{path} holds no examples")
        return out
    raise ValueError(f"unknown corpus {name!r}: use 'bastion' or the path of an existing .jsonl file (text, label per line)")


def split(examples: Sequence[Example], held_out: float = 0.5, *, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(train, held_out), stratified by label and seeded, so both parts keep the label mix."""
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"held_out must be a fraction between 0 and 1, got {held_out}")
    rng = random.Random(seed)
    train: list[Example] = []
    test: list[Example] = []
    for label in LABELS:
        group = [e for e in examples if e.label == label]
        rng.shuffle(group)
        k = round(len(group) * held_out)
        if len(group) >= 2:
            k = min(max(k, 1), len(group) - 1)
        test.extend(group[:k])
        train.extend(group[k:])
    return train, test
