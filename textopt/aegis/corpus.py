"""Labeled prompt-injection texts: `load_corpus("bastion")` reads the bastioncorpus package (MIT), offline;
`load_corpus(path)` reads a user's own .jsonl/.json/.csv file (`read_corpus_file`).

Labels are mapped to "malicious"/"benign"; the corpus category is kept. `split` makes a stratified,
seeded train/held-out split so evaluations can be repeated.
"""
from __future__ import annotations

import csv
import io
import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Iterator, Sequence

LABELS = ("malicious", "benign")
#: Label spellings a corpus may use (compared without case or surrounding spaces), and the label each means.
LABEL_ALIASES: dict[str, str] = {
    "malicious": "malicious", "injection": "malicious", "attack": "malicious", "1": "malicious", "true": "malicious",
    "benign": "benign", "safe": "benign", "clean": "benign", "0": "benign", "false": "benign",
}
#: File endings `read_corpus_file` reads, and the format of each (JSON Lines or CSV with a header row).
CORPUS_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv"}
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


class CorpusError(ValueError):
    """A corpus file that can't be used as it is. The message is one line: the file, the problem, what to do."""


def map_label(value: object) -> str | None:
    """The label ("malicious" or "benign") a spelling in LABEL_ALIASES means, else None so callers can say where."""
    return LABEL_ALIASES.get(str(value).strip().lower())


def _accepted() -> str:
    groups = {label: [k for k, v in LABEL_ALIASES.items() if v == label] for label in LABELS}
    return "; ".join(f"{label}: {', '.join(names)}" for label, names in groups.items())


def _example(row: dict, where: str) -> Example:
    text = str(row.get("text", "")).replace(_CANARY, "").strip()
    label = map_label(row.get("label", "malicious"))
    if label is None:
        raise ValueError(f"{where}: label {row.get('label')!r} is neither 'malicious' nor 'benign'")
    if not text:
        raise ValueError(f"{where}: the text is empty")
    return Example(text=text, label=label, category=str(row.get("category", "")), id=str(row.get("id", "")), lang=str(row.get("lang", "")))


def _bastion() -> list[Example]:
    try:
        data = resources.files("bastioncorpus").joinpath("corpus/injections.jsonl").read_text(encoding="utf-8")
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "the 'bastion' corpus needs the bastioncorpus package: run `pip install bastioncorpus` "
            "(or `pip install 'textopt[dev]'`)"
        ) from exc
    rows = [json.loads(line) for line in data.splitlines() if line.strip()]
    return [_example(r, f"bastioncorpus row {r.get('id', i)!r}") for i, r in enumerate(rows)]


def _read_text(path: Path) -> str:
    """The file as text; newline="" keeps line breaks inside quoted CSV fields, utf-8-sig drops an editor's BOM."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        raise CorpusError(f"corpus file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None


def _json_rows(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSON Lines file."""
    for n, line in enumerate(io.StringIO(text, newline=""), 1):  # only line breaks end a line, not U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = " (a JSON array? write one object per line instead)" if line.strip().startswith("[") else ""
            raise CorpusError(f"corpus file {path}, line {n}: malformed JSON ({exc.msg} at column {exc.colno}){hint}; "
                              'write one JSON object per line, e.g. {"text": "...", "label": "benign"}') from None
        if not isinstance(row, dict):
            raise CorpusError(f"corpus file {path}, line {n}: a JSON {type(row).__name__}, not an object; write one "
                              'object per line, e.g. {"text": "...", "label": "benign"}')
        keys = {str(k).strip().lower(): k for k in row}
        missing = [name for name in ("text", "label") if name not in keys]
        if missing:
            found = ", ".join(map(str, row)) or "none"
            raise CorpusError(f"corpus file {path}, line {n}: no {' or '.join(missing)} key (keys found: {found}); "
                              "every line needs both text and label")
        yield n, {name: row[key] for name, key in keys.items()}


def _csv_rows(path: Path, text: str) -> Iterator[tuple[int, dict]]:
    """(line where the record starts, row by lower-cased column name) for each non-blank record after the header.
    strict: an unclosed quote is an error at its line, not a text that swallows the rest of the file."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1
    try:
        header = next(reader, None)
        if header is None:
            return
        names = [h.strip().lower() for h in header]
        missing = [name for name in ("text", "label") if name not in names]
        if missing:
            found = ", ".join(h.strip() for h in header if h.strip()) or "none"
            raise CorpusError(f"corpus file {path} has no {' or '.join(missing)} column (columns found: {found}); "
                              "its first row must name the columns, text and label among them")
        while True:
            start = reader.line_num + 1
            record = next(reader, None)
            if record is None:
                return
            if not any(cell.strip() for cell in record):
                continue
            if len(record) != len(names):
                raise CorpusError(f"corpus file {path}, line {start}: {len(record)} field{'s' * (len(record) != 1)} "
                                  f"where the header has {len(names)}; put a text that holds a comma in double quotes")
            yield start, dict(zip(names, record))
    except csv.Error as exc:
        raise CorpusError(f"corpus file {path}, line {start}: unreadable CSV ({exc}); a text in double quotes must "
                          'end with one, and a double quote inside it is written twice ("")') from None


def _file_example(path: Path, n: int, row: dict) -> Example:
    """One row as an Example; its id is the row's id, else file:line, so errors and reports can point back."""
    text = row["text"]
    if text is not None and not isinstance(text, str):
        raise CorpusError(f"corpus file {path}, line {n}: the text is a {type(text).__name__}, not a string; "
                          "quote it")
    if not (text or "").strip():
        raise CorpusError(f"corpus file {path}, line {n}: the text is empty; fill it in or remove the row")
    label = map_label(row["label"])
    if label is None:
        raise CorpusError(f"corpus file {path}, line {n}: label {row['label']!r} means neither malicious nor benign; "
                          f"accepted labels (any case): {_accepted()}")
    extra = {k: str(row.get(k) or "").strip() for k in ("category", "id", "lang")}
    return Example(text=text.strip(), label=label, category=extra["category"], id=extra["id"] or f"{path.name}:{n}",
                   lang=extra["lang"])


def _check_both_labels(path: Path, examples: Sequence[Example]) -> None:
    """A detector can't be trained or measured on one class: TPR or TNR would be undefined."""
    malicious = sum(e.is_malicious for e in examples)
    benign = len(examples) - malicious
    if not malicious or not benign:
        lacking = "malicious" if not malicious else "benign"
        raise CorpusError(f"corpus file {path} holds only one class ({malicious} malicious, {benign} benign); "
                          f"a detector needs both: add {lacking} texts")


def read_corpus_file(path: str | Path) -> list[Example]:
    """Labeled texts from the user's own file, so a detector can be evolved and measured on their data.

    .jsonl or .json: one JSON object per line; .csv: a header row, then one record per line (quote texts that
    hold commas). Each row needs `text` and `label` (names in any case); `category`, `id` and `lang` are kept
    when present. Labels may mix conventions (say "injection" on one row and 1 on another) as long as each maps
    through LABEL_ALIASES. Blank lines are skipped. Anything else, and a file with only one class, raises
    CorpusError with a one-line message naming the file, the line and the fix.
    """
    p = Path(path)
    if not p.is_file():
        what = "is a directory" if p.is_dir() else "does not exist"
        raise CorpusError(f"corpus file {p} {what}; pass the path of a .jsonl or .csv file with text and label")
    kind = CORPUS_FORMATS.get(p.suffix.lower())
    if kind is None:
        raise CorpusError(f"corpus file {p} has the ending {p.suffix or '(none)'}, which is not read; use .jsonl or "
                          ".json (one JSON object per line) or .csv (a header row naming text and label)")
    text = _read_text(p)
    rows = _json_rows(p, text) if kind == "json" else _csv_rows(p, text)
    examples = [_file_example(p, n, row) for n, row in rows]
    if not examples:
        raise CorpusError(f"corpus file {p} is empty (no rows); add one labeled text per row, with text and label")
    _check_both_labels(p, examples)
    return examples


def load_corpus(name: str | Path = "bastion") -> list[Example]:
    """Labeled texts: "bastion" (the bastioncorpus package), or the path of a .jsonl/.json/.csv file
    (`read_corpus_file`)."""
    if str(name) == "bastion":
        return _bastion()
    return read_corpus_file(name)


def sample(examples: Sequence[Example], n: int, *, seed: int = 0) -> list[Example]:
    """A seeded random n of the examples (all of them, shuffled, when n is at least their number), so a run's
    data can be rebuilt exactly on resume."""
    if n < 0:
        raise ValueError(f"the number of corpus examples must be >= 0, got {n}")
    return random.Random(seed).sample(list(examples), min(n, len(examples)))


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
