"""The recipe "optimize": a prompt on a task (an instruction template for a label task, else a system prompt),
optimized with the Trainer (TGD, OptoPrime) or with Search, and scored before and after on held-out examples."""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..datasets import LABELS, TEMPLATES, load, metric_for, template_problem
from ..engines.usage import track_usage
from ..errors import EngineUnavailable
from ..evaluate import aevaluate, paired_gain, time_scoring
from ..loss import TextLoss
from ..ops import LLM
from ..ops.instruction import InstructionCall
from ..optim import TGD, OptoPrime
from ..run import Run
from ..search import Search
from ..train import Trainer
from ..variable import Variable
from .engine_spec import make_engine, reflect_installed
from .registry import Job, JobResult, RunSpec, _int_at_least, check_new_run_dir, has_run, register


#: The README's main job is these defaults: `textopt optimize` searches for a better instruction template
#: on the sentiment task with the embedded model. None means "the task's / optimizer's own default" (see
#: `resolve_args`), so `--task object_counting --optimizer tgd` still gets the sizes that suit it.
OPTIMIZE_DEFAULTS: dict[str, Any] = {
    "engine": "local", "backward_engine": None, "base_url": None, "task": "sentiment", "optimizer": "search",
    "steps": None, "batch_size": None, "eval_size": None, "val_size": None, "prompt": None,
    "seed": 0, "max_tokens": None, "update_tokens": 256, "concurrency": 8, "budget_tokens": None, "budget_calls": None,
    "budget_usd": None, "patience": None, "keep_best": True, "latency": 0.0, "no_cache": False,
    "budget_metric_calls": None, "train_size": None, "update_format": "json", "proposer": "tgd", "samples": None,
}
OPTIMIZERS = ("tgd", "optoprime", "search")
#: Sizes when an argument is None: (label task with search) and (anything else, the Trainer's small run).
#: Label tasks: 40 held-out test examples, 10 validation examples, minibatches of 4, a budget of
#: (8 + 1) * (10 + 2 * 4) = 162 metric calls -- sized for under 10 minutes on 2 quiet cores with SmolLM2
#: (about 1-2 s per 24-token answer, 5-10 s per 256-token update).
SIZES = {
    "label": {"steps": 8, "batch_size": 4, "eval_size": 100, "val_size": 10, "max_tokens": 24},
    "other": {"steps": 2, "batch_size": 2, "eval_size": 6, "val_size": 3, "max_tokens": 160},
}
#: The seed prompt of an answer task (a system prompt).
SYSTEM_PROMPT = "You are a helpful assistant. Answer the question."
#: Role of the trainable instruction template of a label task (what the optimizer is told it rewrites).
TEMPLATE_ROLE = ("instruction template for a small model that classifies a text; the text is put where {input} "
                 "stands, and the reply must name exactly one label")



def seed_prompt(task: str) -> str:
    """The default starting prompt: for a label task a weak but reasonable template (it names the labels but
    does not ask for one word: about a third right on SmolLM2), else a generic system prompt. (From the bare
    `{input}` the 1.5B proposer, seeing single failures, wrote answers for one example, not instructions.)"""
    return TEMPLATES[task]["question"] if task in LABELS else SYSTEM_PROMPT


def resolve_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe's arguments with every None filled from the task and optimizer (see SIZES)."""
    a = {**OPTIMIZE_DEFAULTS, **{k: v for k, v in args.items() if v is not None}}
    a["optimizer"] = str(a["optimizer"]).lower()
    sizes = SIZES["label" if a["task"] in LABELS and a["optimizer"] == "search" else "other"]
    for key, value in sizes.items():
        if a.get(key) is None:
            a[key] = value
    if a["max_tokens"] is None or (a["task"] in LABELS and args.get("max_tokens") is None):
        a["max_tokens"] = SIZES["label" if a["task"] in LABELS else "other"]["max_tokens"]
    if a["prompt"] is None:
        a["prompt"] = seed_prompt(a["task"])
    return a



class _PromptTask(Job):
    """What the optimize recipes share: arguments, data split, engines, the trainable prompt, forward and loss.
    Label tasks train an instruction template in the user turn (`InstructionCall`); the others a system prompt."""

    def _setup(self, spec: RunSpec, run_dir: str | Path | None, resume: bool) -> dict[str, Any]:
        a = resolve_args(spec.args)
        for name, low in (("steps", 0), ("batch_size", 1), ("eval_size", 0), ("val_size", 0), ("concurrency", 1),
                          ("max_tokens", 1), ("update_tokens", 16)):
            _int_at_least(a, name, low)
        if a["optimizer"] not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {a['optimizer']!r}")
        if a.get("samples") is not None:
            if a["optimizer"] != "search":
                raise ValueError("--samples is for --optimizer search (proposals per mutation) and --task humaneval; "
                                 f"--optimizer {a['optimizer']} makes one update per step")
            _int_at_least(a, "samples", 1)
        self.labels = a["task"] in LABELS
        check_new_run_dir(run_dir, resume)
        self.spec, self.args = RunSpec(spec.recipe, a, "search" if a["optimizer"] == "search" else "trainer"), a
        if not a["train_size"]:  # fixed at the first build, so a resume with more steps keeps the same data
            a["train_size"] = max(1, a["steps"] * a["batch_size"])
        examples = load(a["task"], n=a["eval_size"] + a["val_size"] + a["train_size"], seed=a["seed"])
        if len(examples) < a["eval_size"] + a["val_size"] + 1:
            raise ValueError(f"{a['task']} has {len(examples)} examples, fewer than --eval-size {a['eval_size']} + "
                             f"--val-size {a['val_size']} + 1 for training")
        self.test = examples[: a["eval_size"]]
        self.val = examples[a["eval_size"] : a["eval_size"] + a["val_size"]]
        self.train = examples[a["eval_size"] + a["val_size"] :]
        self.engine = make_engine(a["engine"], base_url=a["base_url"], no_cache=a["no_cache"], latency=a["latency"],
                                  budget_usd=a["budget_usd"])
        if not a["backward_engine"] and a["engine"].strip().lower() == "local" and reflect_installed():
            a["backward_engine"] = "local:reflect"  # SmolLM2 can't write instructions; the 1.5B reflection model can
        self.backward_engine = (make_engine(a["backward_engine"], base_url=a["base_url"], no_cache=a["no_cache"],
                                            latency=a["latency"], budget_usd=a["budget_usd"])
                                if a["backward_engine"] else self.engine)
        if self.labels:
            labels = LABELS[a["task"]]
            problem = template_problem(a["prompt"], labels)
            if problem:
                raise ValueError(f"--prompt {a['prompt']!r} can't be the {a['task']} template: {problem}")
            self.prompt = Variable(a["prompt"], role=TEMPLATE_ROLE, requires_grad=True, name="instruction_template",
                                      required=("input",), validate=functools.partial(template_problem, labels=labels))
        else:
            self.prompt = Variable(a["prompt"], role="system prompt of an assistant that answers questions",
                                      requires_grad=True, name="system_prompt")
            self.llm = LLM(self.engine, system_prompt=self.prompt, max_tokens=a["max_tokens"])
        self.metric = metric_for(a["task"])  # label tasks score with feedback; the others by exact match
        self.run_dir = run_dir
        return a

    def proposer(self) -> Any:
        """The optimizer that rewrites the prompt, its reply capped at --update-tokens."""
        a = self.args
        numeric = a["task"] in ("object_counting", "arithmetic")
        constraints = ["The prompt must ask for the final answer as a number."] if numeric else []
        if self.labels:
            words = " or ".join(self._labels())
            constraints = ["Keep {input} exactly once, where the text to classify goes.",
                           "The template is used unchanged for every text: write an instruction, not an answer about "
                           "one example.",
                           f"The template must tell the model to answer with exactly one word, {words}, and nothing "
                           "else (a reply that names no label or several labels is wrong)."]
        kind = self.proposer_kind()  # checked whatever the optimizer, so a typo is never ignored
        if a["optimizer"] == "optoprime" or (a["optimizer"] == "search" and kind == "optoprime"):
            return OptoPrime([self.prompt], engine=self.backward_engine, constraints=constraints,
                                max_tokens=a["update_tokens"])
        return TGD([self.prompt], engine=self.backward_engine, constraints=constraints, max_tokens=a["update_tokens"],
                      reply=self.update_format())

    def proposer_kind(self) -> str:
        """What writes Search's proposals: tgd (the default) or optoprime (one call that sees the traces)."""
        kind = str(self.args.get("proposer") or "tgd").lower()
        if kind not in ("tgd", "optoprime"):
            raise ValueError(f"--proposer must be tgd or optoprime, got {kind!r}")
        return kind

    def update_format(self) -> str:
        """TGD's reply format: json (reasoning and value) or text (the value alone; see `TGD(reply=...)`)."""
        fmt = self.args.get("update_format") or "json"
        if fmt not in ("json", "text"):
            raise ValueError(f"--update-format must be json or text, got {fmt!r}")
        return fmt

    def _labels(self) -> tuple[str, ...]:
        return LABELS[self.args["task"]]

    async def forward(self, example: Any) -> Any:
        if self.labels:
            op = InstructionCall(self.engine, max_tokens=self.args["max_tokens"])
            return await op.acall(self.prompt, Variable(example.question, role="text to classify"))
        return await self.llm.acall(Variable(example.question, role="question to answer"))

    async def loss(self, example: Any, output: Any) -> Any:
        return await TextLoss(
            f"Question: {example.question}\nThe correct answer is {example.answer}. Say whether the response gives "
            "exactly this answer and, if not, what went wrong in its reasoning. Be brief.",
            engine=self.backward_engine, max_tokens=160,
        ).acall(output)

    def _start_clock(self) -> float:
        """The run's start, and each engine's call time so far (the split counts only this run's)."""
        self._seconds_at_start = {id(e): e.usage.seconds for e in (self.engine, self.backward_engine)}
        return time.perf_counter()

    def time_split(self, start: float, scoring: float) -> dict[str, float]:
        """Where the run's wall time went: task-model calls, proposer calls (gradients and rewrites), the
        metric functions, and everything else (graph, prompts, files, waiting). With one engine for both
        roles its calls are all counted as task-model calls. Calls that overlap (concurrency) can sum past
        the wall time; then `other` is 0."""
        spent = lambda e: e.usage.seconds - self._seconds_at_start.get(id(e), 0.0)  # noqa: E731
        wall = time.perf_counter() - start
        task = spent(self.engine)
        proposer = spent(self.backward_engine) if self.backward_engine is not self.engine else 0.0
        split = {"wall_s": wall, "task_model_s": task, "proposer_s": proposer, "scoring_s": scoring,
                 "other_s": max(0.0, wall - task - proposer - scoring)}
        return {k: round(v, 2) for k, v in split.items()}

    def _result(self, before: Any, after: Any, start: float, usage: Any, run_usage: dict[str, Any],
                scoring: float = 0.0) -> dict[str, Any]:
        gain = paired_gain(before, after, seed=self.args["seed"])
        return {
            "task": self.args["task"], "engine": self.args["engine"], "optimizer": self.args["optimizer"],
            "accuracy_before": before and before.mean, "accuracy_after": after and after.mean,
            "ci95_before": before and before.ci95, "ci95_after": after and after.ci95,
            "gain": gain and gain[0], "ci95_gain": gain and gain[1], "initial_prompt": self.args["prompt"],
            "eval_size": len(self.test), "val_size": len(self.val), "tokens": usage.to_dict(), "run_usage": dict(run_usage),
            "seconds": round(time.perf_counter() - start, 2), "final_prompt": self.prompt.value,
            "run_dir": str(self.run_dir) if self.run_dir else None, "backward_engine": self.args.get("backward_engine"),
            "tokens_by_engine": self._tokens_by_engine(), "time_split": self.time_split(start, scoring),
        }

    def _tokens_by_engine(self) -> dict[str, dict[str, Any]]:
        """Tokens per model in this process (a resumed run counts only what it spent since the resume)."""
        out = {self.args["engine"]: self.engine.usage.to_dict()}
        if self.backward_engine is not self.engine:
            out[self.args["backward_engine"]] = self.backward_engine.usage.to_dict()
        return out

    def phase(self, run: Any, name: str, what: str, **info: Any) -> None:
        """Tell the display what the next long stretch of work is (its heartbeat names it)."""
        run.log({"event": "phase", "phase": name, "what": what, **info})

    async def held_out(self, run: Any, name: str, which: str, value: str | None = None) -> Any:
        """The prompt's score on the held-out test examples (None without any), kept in the run as eval `name`:
        the one before/after measurement of every optimize job, so both sides of the gain are taken alike.
        value: scored in the prompt's place for the while (the initial prompt, before). A report in which no
        example got an answer stops the run before it is kept (`answered`): it is no accuracy."""
        if not self.test:
            return None
        current = self.prompt.value
        if value is not None:
            self.prompt.set_value(value)
        self.phase(run, name, f"scoring the {which} prompt on {len(self.test)} held-out examples", total=len(self.test))
        report = await self.score_test(run)
        self.prompt.set_value(current)
        answered(report, f"scoring the {which} prompt")
        run.save_eval(name, report)
        return report

    async def score_test(self, run: Any) -> Any:
        """The test examples scored with the prompt as it stands (each job kind scores its own way)."""
        raise NotImplementedError


def answered(report: Any, what: str) -> None:
    """Raise EngineUnavailable when no example of `report` got an answer: an accuracy computed from zero
    answers is not a result (the run stays resumable once the cause is fixed)."""
    rows = list(getattr(report, "rows", None) or [])
    if rows and all(getattr(r, "error", None) for r in rows):
        raise EngineUnavailable(f"{what}: none of its {len(rows)} calls got an answer, so no accuracy is reported; "
                                f"the first error: {' '.join(str(rows[0].error).split())[:300]}")



class OptimizeJob(_PromptTask):
    """Optimize the system prompt of an LLM on a task with the Trainer (TGD or OptoPrime); score it before
    and after on held-out test examples; write result.json."""

    def __init__(self, spec: RunSpec, *, run_dir: str | Path | None, resume: bool,
                 callbacks: Sequence[Any], progress: bool | None) -> None:
        a = self._setup(spec, run_dir, resume)
        self.optimizer: Any = self.proposer()
        self.trainer = Trainer(
            self.forward, self.loss, self.optimizer, train=self.train, val=self.val, batch_size=a["batch_size"],
            concurrency=a["concurrency"], steps=a["steps"], budget_tokens=a["budget_tokens"],
            budget_calls=a["budget_calls"], budget_usd=a["budget_usd"], keep_best=a["keep_best"],
            patience=a["patience"], metric=self.metric, backward_engine=self.backward_engine, seed=a["seed"],
            spec=self.spec.to_dict(), run_dir=run_dir, progress=progress, callbacks=callbacks)
        if resume and run_dir is not None and has_run(run_dir):  # a run stopped before its first checkpoint starts over
            self.trainer.run.resuming = self.trainer.resumed = True
            self.trainer.run.load_checkpoint(self.trainer.load_state_dict)

    @property
    def progress_note(self) -> str:
        t = self.trainer
        return f"resuming {t.run.dir} after step {t.global_step} of {t.total_steps}"

    async def afit(self) -> JobResult:
        """Score the initial prompt on the test set, train, score the final prompt; write result.json. Best and
        history are the Trainer's."""
        trainer, run = self.trainer, self.trainer.run
        await self.aready()
        start = self._start_clock()
        with run, track_usage() as usage, time_scoring() as scoring:
            run.start(step=trainer.global_step, total_steps=trainer.total_steps, resumed=trainer.resumed,
                      run_dir=str(run.dir) if run.dir else None)
            # a resumed run scores the *initial* prompt (cache hits), not the one it resumes with
            before = await self.held_out(run, "test_before", "initial", trainer.state.initial[self.prompt.name])
            history = await trainer.afit()
            after = await self.held_out(run, "test_after", "final")
            result = {
                **self._result(before, after, start, usage, run.totals, scoring[0]),
                "steps": len([r for r in history.rows if r["step"] > 0]), "rejected_steps": history.rejected,
                "best_val": history.best_val, "stopped": history.stopped, "failed_updates": len(self.optimizer.failures),
                "failures": [getattr(f, "error", str(f))[:300] for f in self.optimizer.failures[-5:]],
            }
            run.write_json("result.json", result)
            run.log({"event": "result", **result})
        return JobResult(result, best=history.best, history=history.history, run_dir=self.run_dir)

    async def score_test(self, run: Any) -> Any:
        with run.track():  # the Trainer's evaluation: its metric-call count and this run's usage
            return await self.trainer.evaluate(self.test)


class SearchJob(_PromptTask):
    """The same task with candidate search (`textopt.search.Search`): a pool of prompts scored per validation
    example, parents from the Pareto front, TGD reflection on minibatches (for a label task each reply's
    verdict is the feedback the template gets, see `InstructionCall`). --steps bounds the iterations, and
    a metric-call budget of (steps + 1) * (val + 2 * batch) unless --budget-metric-calls is given."""

    def __init__(self, spec: RunSpec, *, run_dir: str | Path | None, resume: bool,
                 callbacks: Sequence[Any], progress: bool | None) -> None:
        a = self._setup(spec, run_dir, resume)
        budget = a["budget_metric_calls"] or (a["steps"] + 1) * (len(self.val) + 2 * a["batch_size"])
        self.search = Search(
            [self.prompt], forward=self.forward, train=self.train, val=self.val, metric=self.metric, loss=self.loss,
            proposer=self.proposer(), minibatch=a["batch_size"], proposals=a.get("samples") or 1, budget=budget,
            iterations=a["steps"] or None,
            budget_tokens=a["budget_tokens"], budget_usd=a["budget_usd"], patience=a["patience"],
            concurrency=a["concurrency"], run_dir=run_dir, resume=resume, seed=a["seed"], callbacks=callbacks,
            progress=progress, spec=self.spec.to_dict())
        self.initial = self.prompt.value

    @property
    def progress_note(self) -> str:
        return f"resuming the search in {self.run_dir} after its last completed iteration"

    async def afit(self) -> JobResult:
        """Score the initial prompt, search, score the best prompt; write result.json. Best and history are the
        search's."""
        side = Run(self.run_dir, kind="search", callbacks=self.search.callbacks)  # not opened: Search holds the lock
        await self.aready()
        start = self._start_clock()
        with track_usage() as usage, time_scoring() as scoring:
            before = await self.held_out(side, "test_before", "initial", self.initial)
            found = await self.search.afit()
            after = await self.held_out(side, "test_after", "best")
        result = {
            **self._result(before, after, start, usage, found.usage, scoring[0]),
            "steps": found.iterations, "stopped": found.stopped, "best_val": found.best_val, "best_id": found.best_id,
            "pareto": found.pareto, "candidates": len(found.candidates), "metric_calls": found.metric_calls,
            "rejected_steps": [], "failed_updates": sum(int(r.get("failures") or 0) for r in found.rows), "failures": [],
        }
        side.write_json("result.json", result)
        side.log({"event": "result", **result})
        return JobResult(result, best=found.best, history=found.history, run_dir=self.run_dir)

    async def score_test(self, run: Any) -> Any:
        """Scored here, not by Search: the held-out set is no part of the search (it never picks on it)."""
        return await aevaluate(self.forward, self.test, self.metric, concurrency=self.args["concurrency"])


@register("optimize")
def _optimize(spec: RunSpec, **kw: Any) -> Job:
    optimizer = str(spec.args.get("optimizer") or OPTIMIZE_DEFAULTS["optimizer"]).lower()
    return SearchJob(spec, **kw) if optimizer == "search" else OptimizeJob(spec, **kw)

