"""Workload (i) of issue 26: test-time code optimization on HumanEval, four frameworks at equal budget.

    python benchmarks/code_bench.py --out runs/code_bench               # 20 problems (seed 1), all four frameworks
    python benchmarks/code_bench.py --smoke --out runs/code_smoke        # HumanEval/155, 1 update, small reply caps
    python benchmarks/code_bench.py --ids HumanEval/155,HumanEval/32 --frameworks textgrad,trace --out DIR

Frameworks: textopt TGD and textopt OptoPrime (`textopt.humaneval.optimize_code`, in this process), TextGrad's
TGD on a code Variable (benchmarks/peers/textgrad_code.py, in TextGrad's venv) and Trace's OptoPrime on a
trainable program node (benchmarks/peers/trace_code.py, in Trace's venv). The peers' venvs are made by
benchmarks/run.py's `Frameworks` (reused here), under benchmarks/.cache/venvs/.

What is shared, so the comparison is fair:
- one llama.cpp OpenAI-compatible server (started here, `--threads` threads, default the installed
  Qwen2.5-Coder-1.5B-Instruct) behind benchmarks/bench_servers.py's counting proxy; every request is
  greedy (temperature 0) and no client retries;
- the problems: `textopt.humaneval.load_humaneval(n, seed)` (or `--ids`); their ids are in the JSON;
- the first attempts, written ONCE here (textopt's `draft_code`: its prompt, greedy, `--draft-tokens`) and
  tested once in textopt's sandbox (`run_tests`); every framework starts each failing problem from the same
  code and the same test report (the failing assertion, exception, output tail);
- the budget: at most `--updates` update calls per failing problem, an update call being one LLM call that
  proposes new code (TextGrad: its TGD step; Trace: its OptoPrime step; textopt: its step's request and,
  when the step asks again or repairs its JSON, that call too: textopt's engine here refuses calls past
  the budget, and a refused call is recorded as a failed step). Calls that propose no code (TextGrad's loss
  and gradient calls) go to a separate proxy route and are reported as other calls, not budgeted.
  A problem stops as soon as its tests pass. Update replies are capped at `--update-tokens`, other calls at
  `--aux-tokens`;
- the tests: every candidate runs in textopt's sandbox. The peers' processes have no textopt, so this
  driver serves a test endpoint on 127.0.0.1 (stdlib http.server in a thread, `TestService`):
  POST /test/<framework> {"task_id", "code"} -> {"passed", "feedback", "status", ...}. It logs every
  request, so the attempts, the final verdict and the sandbox failures of a peer are the driver's record,
  not the peer's claim. (Chosen over starting the project's Python per candidate: no start-up per test,
  one warm sandbox worker, one log.)

Calls and tokens are counted at the proxy, per framework, problem and route (update / other), the same way
for everyone. Writes --out/results.json (per framework and problem: attempts with code and report, passed
after, update steps, update and other calls, tokens, wall time, sandbox failures by kind, unusable proposals)
and --out/table.md (pass@1 before/after with Wilson 95% intervals, the paired gain with a seeded bootstrap
interval, textopt against each peer, calls, tokens, wall). A re-run into the same --out with the same
settings keeps the other frameworks' results, and one with the same problems, model and draft cap reuses the
first attempts instead of drafting them again.
A heartbeat line goes to stderr every 10 s.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from detector_spread import Ticker, load  # noqa: E402  (heartbeat thread, load average)
from prompt_spread import wilson  # noqa: E402  (Wilson 95% interval)
from peers._code_common import clip  # noqa: E402  (the peer scripts' own, so replies are cut alike)
from textopt.engines.openai import OpenAIEngine  # noqa: E402
from textopt.errors import EngineError  # noqa: E402

if TYPE_CHECKING:
    from textopt.humaneval import Problem
    from textopt.sandbox import Sandbox

FRAMEWORKS = ("textopt-tgd", "textopt-optoprime", "textopt-tgd-text", "textopt-tgd-fix", "textgrad", "trace")
TEXTOPT = {"textopt-tgd": "tgd", "textopt-optoprime": "optoprime", "textopt-tgd-text": "tgd", "textopt-tgd-fix": "tgd"}
#: textopt variants whose update reply is plain text (`--update-format text`): no JSON grammar around the code.
TEXT_REPLY = {"textopt-tgd-text", "textopt-tgd-fix"}
#: textopt variants that spend the budget as one round of k proposals from one report (`--samples k`).
SAMPLES = {"textopt-tgd-fix": 3}
PEER_SCRIPTS = {"textgrad": HERE / "peers" / "textgrad_code.py", "trace": HERE / "peers" / "trace_code.py"}
LABEL = {"textopt-tgd": "textopt TGD", "textopt-optoprime": "textopt OptoPrime", "textopt-tgd-text": "textopt TGD, text replies",
         "textopt-tgd-fix": "textopt TGD, code-repair prompt, 3 samples",
         "textgrad": "TextGrad TGD",
         "trace": "Trace OptoPrime"}
HOW = {
    "textopt-tgd": "textopt.humaneval.optimize_code(optimizer='tgd'): the program is a CodeVariable; the test op's "
                   "backward hands the report over (no model call); one TGD update per step (JSON reply)",
    "textopt-optoprime": "textopt.humaneval.optimize_code(optimizer='optoprime'): the same graph; one OptoPrime "
                         "update per step (JSON reply)",
    "textopt-tgd-text": "as textopt TGD, with update_format text: the reply is the new code (a fence and prose "
                        "around it allowed), no JSON grammar",
    "textopt-tgd-fix": "as textopt TGD text (prompts/code_update.j2: say the bug, then the program in one fence), "
                       "samples=3: the 3 update calls are 3 proposals from the first report (the 2nd and 3rd at "
                       "0.8), the best one kept",
    "textgrad": "tg.Variable(program, requires_grad=True); loss = FormattedLLMCall reviewing task, code and test "
                "report; loss.backward(); tg.TGD step (one update call; loss and gradient are other calls)",
    "trace": "trace.node(program, trainable=True) -> @bundle unit_tests -> report; opt.backward(report, report); "
             "OptoPrime step (one update call, JSON mode)",
}
MODEL_ALIAS = "coder"
DEFAULTS = {"n": 20, "seed": 1, "updates": 3, "draft_tokens": 512, "update_tokens": 1024, "aux_tokens": 512}
#: --smoke: one problem the 1.5B fails at first (README: fixed by TGD in the seed-1 run), one update, small caps.
SMOKE = {"ids": ["HumanEval/155"], "updates": 1, "update_tokens": 384, "aux_tokens": 128}
#: Seconds one model request may take (a loaded 2-core machine, a 1,024-token reply on a 1.5B model).
CALL_TIMEOUT = 900.0
BOOTSTRAP_SEED = 0
BOOTSTRAP_RESAMPLES = 2000
#: The error of a call refused by CappedEngine (recognized in textopt's failure records).
BUDGET_MARK = "update-call budget"
SANDBOX_KINDS = ("timeout", "crash", "syntax", "missing", "error")


def log(msg: str) -> None:
    print(f"[code-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- settings -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Settings:
    """What a result depends on; two runs merge only when these are equal."""

    ids: tuple[str, ...]
    model: str
    updates: int
    draft_tokens: int
    update_tokens: int
    aux_tokens: int
    test_timeout: float
    n: int | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ids"] = list(self.ids)
        return d


def parse_frameworks(text: str) -> list[str]:
    """The comma-separated framework names, in the given order; ValueError naming any unknown one."""
    names = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in names if x not in FRAMEWORKS]
    if unknown or not names:
        raise ValueError(f"unknown framework(s) {unknown or names!r}; choose from {', '.join(FRAMEWORKS)}")
    return list(dict.fromkeys(names))


def run_name(task_id: str) -> str:
    """A task id as a proxy run id segment (no '/')."""
    return task_id.replace("/", "-")


def route(tag: str, task_id: str, kind: str) -> str:
    """The proxy run id of one framework's calls on one problem: kind "update" (proposes code) or "other"."""
    return f"{tag}.{run_name(task_id)}.{kind}"


def constraint(problem: "Problem") -> str:
    """The rule the peers' optimizers get for every new version (textopt's own optimizers have theirs built in)."""
    return (f"Keep the function {problem.entry_point} with its name and parameters, and write the whole program: the "
            "imports it needs, any helpers and the function; no tests, example calls or prints.")


# -- the test endpoint ------------------------------------------------------------------------------------
class TestService:
    """The sandbox's verdict over HTTP on 127.0.0.1, for the peers' processes (which have no textopt):
    POST /test/<tag> with {"task_id", "code"} answers {"passed", "feedback", "status", "checks",
    "failed_checks", "duration", "cached"}. Every request is logged per tag; a version already tested (by
    any framework, or as a first attempt) is answered from memory, marked cached."""

    __test__ = False  # not a pytest class

    def __init__(self, problems: Iterable["Problem"], *, sandbox: "Sandbox | None" = None, timeout: float = 10.0) -> None:
        self.problems = {p.task_id: p for p in problems}
        self.sandbox, self.timeout = sandbox, timeout
        self.lock = threading.Lock()
        self.log: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self._memo: dict[tuple[str, str], dict[str, Any]] = {}
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                parts = self.path.strip("/").split("/")
                if len(parts) != 2 or parts[0] != "test" or not parts[1]:
                    return self._send(404, {"error": f"no route {self.path}; POST /test/<framework>"})
                try:
                    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                    task_id, code = body["task_id"], body["code"]
                    if not isinstance(task_id, str) or not isinstance(code, str):
                        raise TypeError("task_id and code must be strings")
                except (ValueError, KeyError, TypeError) as exc:
                    return self._send(400, {"error": f"bad request: {type(exc).__name__}: {exc}"})
                if task_id not in service.problems:
                    return self._send(404, {"error": f"{task_id!r} is not a problem of this run"})
                self._send(200, service.check(parts[1], task_id, code))

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="code-bench-tests", daemon=True)

    def url(self, tag: str) -> str:
        return f"http://127.0.0.1:{self.port}/test/{tag}"

    def remember(self, task_id: str, code: str, result: dict[str, Any]) -> None:
        """Seed the memory with a result tested elsewhere (the first attempts)."""
        with self.lock:
            self._memo[(task_id, _sha(code))] = dict(result)

    def check(self, tag: str, task_id: str, code: str) -> dict[str, Any]:
        """Test `code` on `task_id` in the sandbox (or answer from memory) and log it under `tag`."""
        from textopt.humaneval import run_tests

        key = (task_id, _sha(code))
        with self.lock:
            known = self._memo.get(key)
        if known is None:
            r = run_tests(self.problems[task_id], code, timeout=self.timeout, sandbox=self.sandbox)
            known = {"passed": r.passed, "feedback": r.feedback, "status": r.status, "checks": r.checks,
                     "failed_checks": r.failed_checks, "duration": r.duration}
            cached = False
            with self.lock:
                self._memo[key] = known
        else:
            cached = True
        out = {**known, "cached": cached}
        with self.lock:
            self.log[tag].append({"task_id": task_id, "code": code, **out})
        return out

    def attempts(self, tag: str, task_id: str) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(a) for a in self.log.get(tag, []) if a["task_id"] == task_id]

    def __enter__(self) -> "TestService":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "backslashreplace")).hexdigest()


# -- textopt's side (in this process) -------------------------------------------------------------------------
class CappedEngine(OpenAIEngine):
    """textopt's OpenAI-compatible engine that refuses calls past `max_calls` with an EngineError (no request
    is sent). textopt's optimizers record that as a failed step, so a step's re-ask or JSON repair spends the
    same update-call budget the peers' single call per step does."""

    def __init__(self, model: str, *, max_calls: int, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        self.max_calls, self.calls = max_calls, 0

    async def acomplete(self, messages: Any, *, json_schema: dict[str, Any] | None = None, **options: Any) -> Any:
        if self.calls >= self.max_calls:
            raise EngineError(f"{BUDGET_MARK} of {self.max_calls} reached for this problem (no request sent)")
        self.calls += 1
        return await super().acomplete(messages, json_schema=json_schema, **options)


def textopt_engine(model: str, base_url: str, *, max_calls: int, max_tokens: int) -> CappedEngine:
    # json_object: what llama.cpp's server takes (with "auto" the first request of each engine is a refused
    # json_schema one, which the proxy would count); no cache and no retries, like the peers' clients.
    return CappedEngine(model, base_url=base_url, max_calls=max_calls, max_tokens=max_tokens, cache=False, retries=0,
                        timeout=CALL_TIMEOUT, max_time=CALL_TIMEOUT, json_mode="json_object", temperature=0.0)


def run_textopt(kind: str, problems: Sequence["Problem"], firsts: dict[str, dict[str, Any]], proxy: Any,
                settings: Settings, sandbox: "Sandbox | None", status: "Status", tag: str | None = None) -> dict[str, dict[str, Any]]:
    """textopt's optimizer `kind` on every problem whose first attempt failed; rows by task id."""
    from textopt.humaneval import optimize_code

    tag = tag or f"textopt-{kind}"
    rows: dict[str, dict[str, Any]] = {}
    failing = [p for p in problems if not firsts[p.task_id]["passed"]]
    for i, p in enumerate(failing, 1):
        status.at(tag, p.task_id, i, len(failing))
        engine = textopt_engine(settings.model, proxy.base_url(route(tag, p.task_id, "update")),
                                max_calls=settings.updates, max_tokens=settings.update_tokens)
        t0 = time.perf_counter()
        row = empty_row(p.task_id)
        try:
            run = optimize_code(p, engine, optimizer=kind, max_updates=settings.updates, first_attempt=firsts[p.task_id]["code"],
                                timeout=settings.test_timeout, sandbox=sandbox,
                                optimizer_options={"max_tokens": settings.update_tokens,
                                                   **({"reply": "text"} if tag in TEXT_REPLY else {})},
                                samples=SAMPLES.get(tag, 1))
        except Exception as exc:  # noqa: BLE001 - e.g. the server went away: recorded, the next problem goes on
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
        else:
            row["attempts"] = [{"update": a.update, "passed": a.passed, "status": a.status, "checks": a.checks,
                                "failed_checks": a.failed_checks, "duration": a.duration, "code": a.code,
                                "feedback": a.feedback, "cached": False} for a in run.attempts[1:]]
            row["update_steps"] = run.updates
            kinds = Counter("budget" if BUDGET_MARK in f.error else (f.kind or "other") for f in run.failures)
            row["capped_calls"] = kinds.pop("budget", 0)  # calls refused by the budget cap (no request sent)
            row["unusable"] = dict(kinds)
            row["notes"] = [{"step": f.step, "kind": f.kind, "error": clip(f.error, 400), "reply": clip(f.reply)}
                            for f in run.failures if BUDGET_MARK not in f.error]
        row["wall_s"] = round(time.perf_counter() - t0, 3)
        rows[p.task_id] = finish_row(row, proxy, tag, settings.updates)
        log(f"{tag} {p.task_id}: {'fixed' if row['passed'] else 'still failing'} after {row['update_calls']} update "
            f"call(s), {row['wall_s']:.0f} s")
    return rows


# -- the peers' side (in their venvs) ---------------------------------------------------------------------------
def peer_env(scratch: Path) -> dict[str, str]:
    """The peer's environment: caches and logs in a fresh folder, Trace's OpenAI-compatible backend, no
    project on the path, a dummy key for the keyless local server."""
    env = dict(os.environ)
    env.update({
        "PYTHONPATH": "", "XDG_CACHE_HOME": str(scratch / "xdg"), "TEXTGRAD_LOG_DIR": str(scratch / "textgrad-logs"),
        "TRACE_DEFAULT_LLM_BACKEND": "CustomLLM", "TRACE_CUSTOMLLM_API_KEY": "bench", "OPENAI_API_KEY": "bench",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    })
    (scratch / "textgrad-logs").mkdir(parents=True, exist_ok=True)
    return env


def peer_config(name: str, problems: Sequence["Problem"], firsts: dict[str, dict[str, Any]], proxy: Any,
                service: TestService, settings: Settings) -> dict[str, Any]:
    """What the peer script reads: routes, caps, budget, and each failing problem with its shared first attempt."""
    return {
        "tag": name, "model": settings.model, "url": proxy.base_url("{run}"), "test_url": service.url(name),
        "updates": settings.updates, "update_tokens": settings.update_tokens, "aux_tokens": settings.aux_tokens,
        "problems": [{"task_id": p.task_id, "run": run_name(p.task_id), "prompt": p.prompt, "entry_point": p.entry_point,
                      "constraint": constraint(p), "code": firsts[p.task_id]["code"],
                      "feedback": firsts[p.task_id]["feedback"]}
                     for p in problems if not firsts[p.task_id]["passed"]],
    }


def run_peer(name: str, python: str, problems: Sequence["Problem"], firsts: dict[str, dict[str, Any]], proxy: Any,
             service: TestService, settings: Settings, scratch: Path, status: "Status",
             timeout: float | None = None) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Run the peer's script in its venv on every failing problem. Returns (rows by task id, error or None);
    attempts and verdicts come from the test endpoint's log, calls and tokens from the proxy."""
    shutil.rmtree(scratch / "xdg", ignore_errors=True)  # TextGrad's disk cache: a re-run must make its calls again
    scratch.mkdir(parents=True, exist_ok=True)
    cfg = peer_config(name, problems, firsts, proxy, service, settings)
    cfg_path = scratch / f"{name}-config.json"
    cfg_path.write_text(json.dumps(cfg), encoding="utf-8")
    n = len(cfg["problems"])
    limit = timeout if timeout is not None else 600 + n * (settings.updates * 3 + 1) * CALL_TIMEOUT
    cmd = [python, str(PEER_SCRIPTS[name]), str(cfg_path)]
    rows: dict[str, dict[str, Any]] = {}
    started: dict[str, float] = {}
    error: str | None = None
    code: int | None = None
    log_path = scratch / f"{name}.log"
    with open(log_path, "w", encoding="utf-8") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=peer_env(scratch), cwd=scratch)
        killer = threading.Timer(limit, proc.kill)
        killer.daemon = True
        killer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                kind, _, payload = line.partition(" ")
                if kind == "CODE_BENCH_START":
                    task_id = json.loads(payload)["task_id"]
                    started[task_id] = time.perf_counter()
                    status.at(name, task_id, len(started), n)
                elif kind == "CODE_BENCH_ROW":
                    got = json.loads(payload)
                    task_id = got["task_id"]
                    row = peer_row(got, service.attempts(name, task_id))
                    rows[task_id] = finish_row(row, proxy, name, settings.updates)
                    log(f"{name} {task_id}: {'fixed' if row['passed'] else 'still failing'} after {row['update_calls']} "
                        f"update call(s), {row['wall_s']:.0f} s")
            code = proc.wait()
        finally:
            killer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if code != 0 or len(rows) < n:
        tail = " / ".join(x.strip() for x in log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-4:] if x.strip())
        error = f"exit {code}, {len(rows)} of {n} problems done: {tail[-600:]}"
        for task_id, t0 in started.items():  # the problem in flight when it ended: what the endpoint saw of it
            if task_id not in rows:
                row = peer_row({"task_id": task_id, "errors": [error], "wall_s": round(time.perf_counter() - t0, 3)},
                               service.attempts(name, task_id))
                rows[task_id] = finish_row(row, proxy, name, settings.updates)
    return rows, error


def peer_row(got: dict[str, Any], attempts: list[dict[str, Any]]) -> dict[str, Any]:
    """A row from a peer's report and the endpoint's log of its tests (which decides what passed)."""
    row = empty_row(got["task_id"])
    row["attempts"] = [{"update": None, **a} for a in attempts]
    row["update_steps"] = int(got.get("update_steps", 0))
    row["unusable"] = dict(got.get("unusable") or {})
    row["notes"] = list(got.get("notes") or [])
    row["wall_s"] = float(got.get("wall_s", 0.0))
    if got.get("errors"):
        row["error"] = "; ".join(got["errors"])[:600]
    claim = got.get("passed_claim")
    if claim is not None and bool(claim) != bool(attempts and attempts[-1]["passed"]):
        row["claim_mismatch"] = True  # the peer's own verdict differs from the endpoint's record
    return row


# -- rows ----------------------------------------------------------------------------------------------
def empty_row(task_id: str, *, first_passed: bool = False) -> dict[str, Any]:
    return {"task_id": task_id, "first_passed": first_passed, "passed": first_passed, "update_steps": 0, "update_calls": 0,
            "other_calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "tokens": 0, "wall_s": 0.0, "attempts": [],
            "unusable": {}, "notes": [], "sandbox": {}, "over_budget": False, "error": None}


def finish_row(row: dict[str, Any], proxy: Any, tag: str, updates: int) -> dict[str, Any]:
    """Fill the verdict (the last version tested), calls and tokens (the proxy's count), sandbox statuses."""
    attempts = row["attempts"]
    row["passed"] = bool(row["first_passed"] or (attempts and attempts[-1]["passed"]))
    up, other = proxy.stats(route(tag, row["task_id"], "update")), proxy.stats(route(tag, row["task_id"], "other"))
    row["update_calls"], row["other_calls"] = up.calls, other.calls
    row["prompt_tokens"] = up.prompt_tokens + other.prompt_tokens
    row["completion_tokens"] = up.completion_tokens + other.completion_tokens
    row["tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    row["sandbox"] = dict(Counter(a["status"] for a in attempts))
    row["over_budget"] = up.calls > updates
    return row


# -- statistics --------------------------------------------------------------------------------------------
def _report(ids: Sequence[str], passed: dict[str, bool]) -> Any:
    from textopt.evaluate import EvalReport, EvalRow

    return EvalReport([EvalRow(i, "", 1.0 if passed.get(i) else 0.0) for i in ids], seed=BOOTSTRAP_SEED)


def paired(ids: Sequence[str], before: dict[str, bool], after: dict[str, bool]) -> dict[str, Any]:
    """Mean of after - before over the same problems, and its seeded percentile-bootstrap 95% interval
    (problems resampled in pairs: textopt.evaluate.paired_gain)."""
    from textopt.evaluate import paired_gain

    got = paired_gain(_report(ids, before), _report(ids, after), seed=BOOTSTRAP_SEED, resamples=BOOTSTRAP_RESAMPLES)
    if got is None:
        return {"mean": None, "ci95": None}
    return {"mean": got[0], "ci95": list(got[1])}


def rate(k: int, n: int) -> dict[str, Any]:
    return {"k": k, "n": n, "rate": round(k / n, 4) if n else None, "ci95": [round(x, 4) for x in wilson(k, n)]}


def summarize(ids: Sequence[str], firsts: dict[str, dict[str, Any]], rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per framework: pass@1 before/after over all `ids` (Wilson), the paired gain (bootstrap), what flipped,
    calls, tokens, wall, sandbox failures by kind, unusable proposals; a problem the framework never got to
    counts as its first attempt's verdict (and is listed as missing)."""
    before = {i: bool(firsts[i]["passed"]) for i in ids}
    n = len(ids)
    out: dict[str, Any] = {}
    for name, by_task in rows.items():
        after = {i: bool(by_task[i]["passed"]) if i in by_task else before[i] for i in ids}
        done = [by_task[i] for i in ids if i in by_task]
        sandbox: Counter[str] = Counter()
        unusable: Counter[str] = Counter()
        for r in done:
            sandbox.update(r["sandbox"])
            unusable.update(r["unusable"])
        out[name] = {
            "label": LABEL.get(name, name),
            "before": rate(sum(before.values()), n), "after": rate(sum(after.values()), n),
            "gain": paired(ids, before, after),
            "fixed": [i for i in ids if after[i] and not before[i]],
            "broke": [i for i in ids if before[i] and not after[i]],
            "missing": [i for i in ids if not before[i] and i not in by_task],
            "errors": [r["task_id"] for r in done if r.get("error")],
            "over_budget": [r["task_id"] for r in done if r["over_budget"]],
            "update_steps": sum(r["update_steps"] for r in done),
            "update_calls": sum(r["update_calls"] for r in done),
            "other_calls": sum(r["other_calls"] for r in done),
            "prompt_tokens": sum(r["prompt_tokens"] for r in done),
            "completion_tokens": sum(r["completion_tokens"] for r in done),
            "tokens": sum(r["tokens"] for r in done),
            "wall_s": round(sum(r["wall_s"] for r in done), 1),
            "candidates_tested": sum(len(r["attempts"]) for r in done),
            "sandbox": {k: sandbox.get(k, 0) for k in (*SANDBOX_KINDS, "failed", "passed")},
            "unusable": dict(unusable),
        }
    return out


def versus(ids: Sequence[str], firsts: dict[str, dict[str, Any]], rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each textopt optimizer against each peer: the paired difference of pass@1 after (textopt - peer)."""
    before = {i: bool(firsts[i]["passed"]) for i in ids}
    after = {name: {i: bool(r[i]["passed"]) if i in r else before[i] for i in ids} for name, r in rows.items()}
    out = []
    for mine in (x for x in FRAMEWORKS if x in TEXTOPT and x in rows):
        for peer in (x for x in FRAMEWORKS if x not in TEXTOPT and x in rows):
            d = paired(ids, after[peer], after[mine])
            out.append({"textopt": mine, "peer": peer, "diff": d["mean"], "ci95": d["ci95"],
                        "only_textopt": [i for i in ids if after[mine][i] and not after[peer][i]],
                        "only_peer": [i for i in ids if after[peer][i] and not after[mine][i]]})
    return out


# -- markdown ------------------------------------------------------------------------------------------
def _pass(r: dict[str, Any]) -> str:
    lo, hi = r["ci95"]
    return f"{r['k']}/{r['n']} = {r['rate']:.2f} [{lo:.2f}, {hi:.2f}]" if r["n"] else "n/a"


def _signed(mean: float | None, ci: Sequence[float] | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:+.2f} [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else f"{mean:+.2f}"


def markdown(res: dict[str, Any]) -> str:
    """The tables for BENCHMARKS.md: pass@1 and cost per framework, sandbox failures, textopt vs peers."""
    s, summ = res["settings"], res.get("summary", {})
    subset = "ids given" if s.get("n") is None else f"n={s['n']}, seed={s['seed']}"
    L = [f"Workload (i): HumanEval test-time code optimization, {len(res['ids'])} problems "
         f"({subset}), model {res['meta'].get('model', s['model'])}, "
         f"greedy; first attempts shared (draft cap {s['draft_tokens']} tokens); at most {s['updates']} update call(s) per "
         f"failing problem (replies <= {s['update_tokens']} tokens, other calls <= {s['aux_tokens']}).", "",
         "| framework | pass@1 before | pass@1 after | fixed | paired gain [95% CI] | update calls | other calls | tokens | wall (s) |",
         "|---|---|---|---|---|---|---|---|---|"]
    for name in (x for x in FRAMEWORKS if x in summ):
        m = summ[name]
        note = " (incomplete)" if m["missing"] or m["errors"] else ""
        L.append(f"| {m['label']}{note} | {_pass(m['before'])} | {_pass(m['after'])} | {len(m['fixed'])} | "
                 f"{_signed(m['gain']['mean'], m['gain']['ci95'])} | {m['update_calls']} | {m['other_calls']} | "
                 f"{m['tokens']:,} | {m['wall_s']:.0f} |")
    L += ["", "| framework | candidates tested | timeouts | crashes | no compile | no such function | raised on load | unusable proposals |",
          "|---|---|---|---|---|---|---|---|"]
    for name in (x for x in FRAMEWORKS if x in summ):
        m = summ[name]
        sb = m["sandbox"]
        unusable = ", ".join(f"{k} {v}" for k, v in sorted(m["unusable"].items())) or "none"
        L.append(f"| {m['label']} | {m['candidates_tested']} | {sb['timeout']} | {sb['crash']} | {sb['syntax']} | "
                 f"{sb['missing']} | {sb['error']} | {unusable} |")
    if res.get("versus"):
        L += ["", "| textopt vs peer | pass@1 after, difference [95% CI] | solved only by textopt | only by the peer |", "|---|---|---|---|"]
        for v in res["versus"]:
            L.append(f"| {LABEL[v['textopt']]} vs {LABEL[v['peer']]} | {_signed(v['diff'], v['ci95'])} | "
                     f"{', '.join(v['only_textopt']) or 'none'} | {', '.join(v['only_peer']) or 'none'} |")
    fixed = {name: m["fixed"] for name, m in summ.items() if m["fixed"]}
    L += ["", "Fixed: " + ("; ".join(f"{LABEL[k]}: {', '.join(v)}" for k, v in fixed.items()) if fixed else "none") + "."]
    L += [f"Problems: {', '.join(res['ids'])}.",
          f"Intervals: Wilson 95% for pass@1; paired gains from {BOOTSTRAP_RESAMPLES} bootstrap resamples of the problems "
          f"(seed {BOOTSTRAP_SEED}). Calls and tokens counted at the proxy; wall = sum of per-problem times."]
    return "\n".join(L) + "\n"


# -- the run ------------------------------------------------------------------------------------------------
class Status:
    """What the run is doing, for the heartbeat line."""

    def __init__(self, proxy: Any = None) -> None:
        self.proxy, self.t0 = proxy, time.monotonic()
        self.what, self.since = "starting", time.monotonic()

    def at(self, tag: str, task_id: str, i: int, n: int) -> None:
        self.what, self.since = f"{tag} {task_id} ({i}/{n})", time.monotonic()

    def phase(self, what: str) -> None:
        self.what, self.since = what, time.monotonic()

    def line(self) -> str:
        calls = tokens = 0
        acct = getattr(self.proxy, "acct", None)
        if acct is not None:
            with acct.lock:
                for s in acct.runs.values():
                    calls += s.calls
                    tokens += s.prompt_tokens + s.completion_tokens
        now = time.monotonic()
        return (f"{self.what}: {now - self.since:.0f} s on it, {now - self.t0:.0f} s in all; {calls} calls, "
                f"{tokens:,} tokens at the server; {load()}")


def draft_first_attempts(problems: Sequence["Problem"], proxy: Any, settings: Settings, sandbox: "Sandbox | None",
                         status: Status) -> dict[str, dict[str, Any]]:
    """Each problem's first attempt, written once by textopt's draft prompt (greedy) and tested once."""
    import textopt as to
    from textopt.humaneval import draft_code, run_tests

    engine = to.get_engine("openai:" + settings.model, base_url=proxy.base_url("draft"), cache=False, retries=0,
                           timeout=CALL_TIMEOUT, max_time=CALL_TIMEOUT, temperature=0.0)
    out: dict[str, dict[str, Any]] = {}
    for i, p in enumerate(problems, 1):
        status.at("first attempt", p.task_id, i, len(problems))
        code = draft_code(p, engine, max_tokens=settings.draft_tokens)
        r = run_tests(p, code, timeout=settings.test_timeout, sandbox=sandbox)
        out[p.task_id] = {"code": code, "passed": r.passed, "status": r.status, "feedback": r.feedback, "checks": r.checks,
                          "failed_checks": r.failed_checks, "duration": r.duration}
        log(f"first attempt {p.task_id}: {r.status}")
    return out


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
    tmp.replace(path)


#: The settings the first attempts depend on (an earlier run's are reused when these and the model match).
DRAFT_KEYS = ("ids", "model", "draft_tokens", "test_timeout")


def reusable_first_attempts(previous: dict[str, Any], settings: Settings, model: str) -> dict[str, dict[str, Any]] | None:
    """An earlier run's first attempts in the same --out, when they were drafted the same way by the same model
    (greedy, so drafting again would give the same code; reusing them saves the calls)."""
    old = previous.get("settings") or {}
    now = settings.to_dict()
    firsts = previous.get("first_attempts") or {}
    if previous.get("meta", {}).get("model") != model or any(old.get(k) != now[k] for k in DRAFT_KEYS):
        return None
    return firsts if set(firsts) == set(settings.ids) else None


def merge_previous(previous: dict[str, Any], res: dict[str, Any], running: Sequence[str]) -> None:
    """Keep an earlier run's frameworks (not run now) when it had the same settings and first attempts."""
    if previous.get("settings") != res["settings"]:
        return
    old, new = previous.get("first_attempts", {}), res["first_attempts"]
    if {k: v.get("code") for k, v in old.items()} != {k: v.get("code") for k, v in new.items()}:
        return
    for name, fw in previous.get("frameworks", {}).items():
        if name not in running and name not in res["frameworks"]:
            res["frameworks"][name] = fw


def finalize(res: dict[str, Any]) -> None:
    rows = {name: fw["problems"] for name, fw in res["frameworks"].items()}
    res["summary"] = summarize(res["ids"], res["first_attempts"], rows)
    res["versus"] = versus(res["ids"], res["first_attempts"], rows)


def merge_runs(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One result from runs on different problems with the same settings but the subset (e.g. a first 20 and
    20 more): problems in order of the parts; a framework is kept only if every problem has its row, and a
    later part's row for a problem replaces an earlier one (a rerun after a fix). The first attempts of a
    problem must be the same code in every part that has it."""
    if not parts:
        raise ValueError("--merge needs at least one results.json")
    keys = ("model", "updates", "draft_tokens", "update_tokens", "aux_tokens", "test_timeout")
    base = {k: parts[0]["settings"][k] for k in keys}
    ids: list[str] = []
    firsts: dict[str, dict[str, Any]] = {}
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for i, part in enumerate(parts):
        other = {k: part["settings"][k] for k in keys}
        if other != base:
            raise ValueError(f"part {i + 1} ran with other settings: {other} against {base}")
        for task_id in part["ids"]:
            first = part.get("first_attempts", {}).get(task_id)  # a trimmed rerun file may leave them out
            if first is None:
                if task_id not in firsts:
                    raise ValueError(f"part {i + 1} has no first attempt at {task_id}, and no earlier part has one")
                continue
            if task_id in firsts and firsts[task_id]["code"] != first["code"]:
                raise ValueError(f"part {i + 1} has another first attempt at {task_id}")
            if task_id not in firsts:
                ids.append(task_id)
                firsts[task_id] = first
        for name, fw in part["frameworks"].items():
            rows.setdefault(name, {}).update(fw["problems"])
    complete = {name: r for name, r in rows.items() if set(ids) <= set(r)}
    res = {"meta": {"merged_from": [p["meta"] for p in parts], "model": parts[0]["meta"].get("model")},
           "settings": {**base, "ids": ids, "n": None, "seed": None}, "ids": ids, "first_attempts": firsts,
           "frameworks": {name: {"problems": {i: r[i] for i in ids}} for name, r in complete.items()},
           "dropped": sorted(set(rows) - set(complete))}
    finalize(res)
    return res


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=None, help=f"problems in the seeded subset (default {DEFAULTS['n']})")
    ap.add_argument("--seed", type=int, default=None, help=f"seed of the subset (default {DEFAULTS['seed']})")
    ap.add_argument("--ids", default=None, help="comma-separated problems instead of a subset, e.g. HumanEval/155,HumanEval/32")
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated subset of " + ",".join(FRAMEWORKS))
    ap.add_argument("--updates", type=int, default=None, help=f"update calls per failing problem (default {DEFAULTS['updates']})")
    ap.add_argument("--draft-tokens", type=int, default=DEFAULTS["draft_tokens"], help="reply cap of the first attempt")
    ap.add_argument("--update-tokens", type=int, default=None, help=f"reply cap of an update call (default {DEFAULTS['update_tokens']})")
    ap.add_argument("--aux-tokens", type=int, default=None, help=f"reply cap of other calls (default {DEFAULTS['aux_tokens']})")
    ap.add_argument("--test-timeout", type=float, default=10.0, help="seconds one run of a problem's tests may take")
    ap.add_argument("--out", required=True, help="folder for results.json, table.md and logs")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads (n_threads and n_threads_batch)")
    ap.add_argument("--gguf", default="reflect", help="GGUF file, or a registered local model name (default 'reflect': "
                    "the installed Qwen2.5-Coder-1.5B-Instruct)")
    ap.add_argument("--server", default=None, metavar="URL", help="use this running OpenAI-compatible server (its /v1 URL) "
                    "instead of starting llama.cpp; requests name --model")
    ap.add_argument("--model", default=MODEL_ALIAS, help="model name in requests (the alias of the started server)")
    ap.add_argument("--cache", default=str(HERE / ".cache"), help="folder of the peers' venvs (benchmarks/run.py's)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="RESULTS_JSON",
                    help="no run: merge these results.json of runs on different problems (later parts replace earlier "
                         "rows) into --out's results.json and table.md")
    ap.add_argument("--smoke", action="store_true", help="a quick end-to-end check: " + ", ".join(f"{k}={v}" for k, v in SMOKE.items())
                    + " (each overridable)")
    return ap


def resolve(args: argparse.Namespace) -> tuple[list["Problem"], Settings, list[str]]:
    """Problems, settings and frameworks from the arguments (ValueError on a bad combination)."""
    from textopt.humaneval import load_humaneval

    frameworks = parse_frameworks(args.frameworks)
    smoke = SMOKE if args.smoke else {}
    pick = lambda key: getattr(args, key) if getattr(args, key) is not None else smoke.get(key, DEFAULTS[key])  # noqa: E731
    ids = [x.strip() for x in args.ids.split(",") if x.strip()] if args.ids else None
    if ids is None and args.smoke and args.n is None and args.seed is None:
        ids = list(SMOKE["ids"])
    if ids is not None:
        if args.n is not None or args.seed is not None:
            raise ValueError("--ids goes alone: not with --n or --seed")
        problems, n, seed = load_humaneval(ids=ids), None, None
    else:
        n, seed = pick("n"), pick("seed")
        problems = load_humaneval(n=n, seed=seed)
    updates = pick("updates")
    if updates < 1:
        raise ValueError(f"--updates must be >= 1, got {updates}")
    settings = Settings(ids=tuple(p.task_id for p in problems), model=args.model, updates=updates,
                        draft_tokens=args.draft_tokens, update_tokens=pick("update_tokens"), aux_tokens=pick("aux_tokens"),
                        test_timeout=args.test_timeout, n=n, seed=seed)
    return problems, settings, frameworks


def main(argv: Sequence[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.merge:
        try:
            merged = merge_runs([json.loads(Path(p).read_text(encoding="utf-8")) for p in args.merge])
        except (OSError, ValueError, KeyError) as exc:
            ap.error(f"--merge: {exc}")
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        _write_json(out / "results.json", merged)
        (out / "table.md").write_text(markdown(merged), encoding="utf-8")
        print(markdown(merged))
        return 0
    try:
        problems, settings, frameworks = resolve(args)
    except (ValueError, KeyError) as exc:
        ap.error(str(exc).strip("'\""))
    from bench_servers import CountingProxy, LlamaServer
    from run import Frameworks, reflect_model
    from textopt.sandbox import Sandbox

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    previous: dict[str, Any] = {}
    if json_path.exists():
        try:
            previous = json.loads(json_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            previous = {}
    model_desc = f"server {args.server}"
    gguf: Path | None = None
    if args.server is None:
        try:
            gguf, model_desc = reflect_model(args.gguf)
        except ValueError as exc:
            ap.error(str(exc))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the server, the proxy and a peer are stopped
    peers = [x for x in frameworks if x in PEER_SCRIPTS]
    fw = Frameworks(Path(args.cache).resolve(), peers)
    started = _dt.datetime.now(_dt.timezone.utc)
    res: dict[str, Any] = {
        "meta": {"command": "python benchmarks/code_bench.py " + shlex.join(argv if argv is not None else sys.argv[1:]),
                 "started": started.isoformat(timespec="seconds"), "host": platform.node(), "cpus": os.cpu_count(),
                 "python": platform.python_version(), "textopt": fw.info["textopt"]["version"], "model": model_desc,
                 "threads": args.threads, "load_before": load(), "frameworks": frameworks, "how": {k: HOW[k] for k in frameworks},
                 "budget": "update calls = LLM calls that propose code, counted at the proxy; textopt's engine refuses "
                           "calls past the budget (a step's re-ask or JSON repair counts); other calls are reported"},
        "settings": settings.to_dict(), "ids": list(settings.ids), "first_attempts": {}, "frameworks": {},
    }
    log(f"{len(problems)} problems, frameworks {', '.join(frameworks)}; {load()}")
    with ExitStack() as stack:
        status = Status()
        stack.enter_context(Ticker(10.0, status.line))
        if args.server is None:
            status.phase("starting llama.cpp")
            llama = LlamaServer(gguf, out / "llama-server.log", alias=args.model)
            llama.cmd += ["--n_threads", str(args.threads), "--n_threads_batch", str(args.threads)]
            res["meta"]["server_command"] = shlex.join(llama.cmd).replace(str(ROOT) + "/", "")
            log("starting llama.cpp: " + res["meta"]["server_command"])
            stack.enter_context(llama)
            upstream = llama.base_url
        else:
            upstream = args.server
        proxy = stack.enter_context(CountingProxy(upstream, timeout=CALL_TIMEOUT + 60))
        status.proxy = proxy
        sandbox = Sandbox(max_workers=1)
        stack.callback(sandbox.close)
        scratch = out / "scratch"

        def save() -> None:
            res["meta"]["seconds"] = round((_dt.datetime.now(_dt.timezone.utc) - started).total_seconds(), 1)
            finalize(res)
            _write_json(json_path, res)
            (out / "table.md").write_text(markdown(res), encoding="utf-8")

        status.phase("first attempts")
        reused = reusable_first_attempts(previous, settings, model_desc)
        if reused is not None:
            log(f"first attempts: reused from {json_path} (same problems, model and draft settings)")
            res["first_attempts"], res["draft_usage"] = reused, {**previous.get("draft_usage", {}), "reused": True}
        else:
            res["first_attempts"] = draft_first_attempts(problems, proxy, settings, sandbox, status)
            draft = proxy.stats("draft")
            res["draft_usage"] = {"calls": draft.calls, "tokens": draft.prompt_tokens + draft.completion_tokens}
        merge_previous(previous, res, frameworks)
        res["meta"]["kept_from_earlier_run"] = sorted(res["frameworks"])
        failing = [p.task_id for p in problems if not res["first_attempts"][p.task_id]["passed"]]
        log(f"first attempts: {len(problems) - len(failing)}/{len(problems)} pass; optimizing {len(failing)}")
        save()
        service = stack.enter_context(TestService(problems, sandbox=sandbox, timeout=settings.test_timeout))
        for task_id, first in res["first_attempts"].items():
            service.remember(task_id, first["code"], first)
        for name in frameworks:
            t0 = time.perf_counter()
            entry: dict[str, Any] = {"how": HOW[name], "error": None, "threads": args.threads,
                                     "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
            base = {p.task_id: empty_row(p.task_id, first_passed=True) for p in problems if res["first_attempts"][p.task_id]["passed"]}
            if name in TEXTOPT:
                rows = run_textopt(TEXTOPT[name], problems, res["first_attempts"], proxy, settings, sandbox, status, tag=name)
            elif not fw.ensure(name):
                rows, entry["error"] = {}, fw.errors.get(name, "venv could not be made")
            else:
                entry["version"] = fw.info[name]["version"]
                rows, entry["error"] = run_peer(name, fw.python[name], problems, res["first_attempts"], proxy, service,
                                                settings, scratch / name, status)
            if entry["error"]:
                log(f"{name}: {entry['error']}")
            entry["problems"] = {**base, **rows}
            entry["process_wall_s"] = round(time.perf_counter() - t0, 1)
            res["frameworks"][name] = entry
            save()
        res["meta"]["load_after"] = load()
        save()
    print(markdown(res))
    log(f"wrote {json_path} and {out / 'table.md'} in {res['meta']['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
