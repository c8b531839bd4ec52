"""What both peer scripts of workload (i) share (benchmarks/code_bench.py): the protocol lines they print, and
the client of the driver's test endpoint. Standard library only: it runs in each peer's own venv."""
from __future__ import annotations

import json
import urllib.request
from typing import Any


def emit(kind: str, payload: dict[str, Any]) -> None:
    """One protocol line on stdout (`CODE_BENCH_START` / `CODE_BENCH_ROW`); anything else printed is ignored."""
    print(f"CODE_BENCH_{kind} " + json.dumps(payload), flush=True)


def clip(text: str, limit: int = 1200) -> str:
    """A long reply shortened in the middle, for the notes of the results."""
    return text if len(text) <= limit else text[: limit // 2] + " [...] " + text[-limit // 2:]


class Tester:
    """The driver's test endpoint; a version already tested here is not sent again."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: dict[tuple[str, str], dict[str, Any]] = {}

    def test(self, task_id: str, code: str) -> dict[str, Any]:
        key = (task_id, code)
        if key not in self.seen:
            body = json.dumps({"task_id": task_id, "code": code}).encode()
            req = urllib.request.Request(self.url, data=body, method="POST", headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as resp:
                self.seen[key] = json.loads(resp.read())
        return self.seen[key]


def run_problems(solve: Any, config_path: str) -> None:
    """The peer script's main loop: every problem of the config through `solve(problem, cfg, tester)`, with a
    START line before and a ROW line after each."""
    with open(config_path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    tester = Tester(cfg["test_url"])
    for problem in cfg["problems"]:
        emit("START", {"task_id": problem["task_id"]})
        emit("ROW", solve(problem, cfg, tester))
