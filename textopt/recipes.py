"""Run recipes: runs that can be rebuilt from a few JSON arguments, so `resume(run_dir)` needs no code.

A recipe is a name in a registry and a builder `(spec, run_dir=..., resume=..., callbacks=..., progress=...)
-> Job`. A `RunSpec` (recipe name + JSON arguments, engine *spec strings*, never keys) goes into the run
directory's spec.json; `resume(run_dir)` reads it back, looks the recipe up and builds the same run. The
CLI commands are thin adapters over these recipes; the library never imports the CLI.

    job = recipes.build(RunSpec("optimize", {"engine": "fake", "steps": 2}), run_dir="runs/x")
    result = job.run()                       # dict, also written to runs/x/result.json
    job = recipes.resume("runs/x", steps=4)  # later, or after a crash
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ._sync import run_sync
from .run import Budgets, Callback, RunError, check_not_busy, has_run, read_spec

if TYPE_CHECKING:
    from .engines.base import Engine


@dataclass
class RunSpec:
    """How to rebuild a run: the recipe's registry name, its JSON arguments, and the run kind."""

    recipe: str
    args: dict[str, Any] = field(default_factory=dict)
    kind: str = "trainer"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "recipe": self.recipe, "args": dict(self.args)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RunSpec":
        if not data.get("recipe"):
            raise RunError("this run was made from Python, so it can't be rebuilt from disk: resume it in Python with "
                           "textopt.resume(run_dir, forward=..., loss=..., optimizer=..., train=..., val=...)")
        return cls(str(data["recipe"]), dict(data.get("args") or {}), str(data.get("kind") or "trainer"))


class Job:
    """A built recipe. `arun()` / `run()` do the whole run and return its result (a JSON dict)."""

    spec: RunSpec
    run_dir: str | Path | None = None

    async def arun(self) -> dict[str, Any]:
        raise NotImplementedError

    def run(self) -> dict[str, Any]:
        return run_sync(self.arun())

    @property
    def progress_note(self) -> str:
        """One line saying where a resumed run continues from."""
        return ""


Builder = Callable[..., Job]
_REGISTRY: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make `builder(spec, *, run_dir, resume, callbacks, progress) -> Job` the recipe `name`."""
    def deco(fn: Builder) -> Builder:
        _REGISTRY[name] = fn
        return fn
    return deco


def names() -> list[str]:
    return sorted(_REGISTRY)


def build(spec: RunSpec | Mapping[str, Any], *, run_dir: str | Path | None = None, resume: bool = False,
          callbacks: Sequence[Callback | Callable[[dict[str, Any]], Any]] = (), progress: bool | None = None) -> Job:
    """The Job for `spec` (a RunSpec or its dict)."""
    spec = spec if isinstance(spec, RunSpec) else RunSpec.from_dict(spec)
    if spec.recipe not in _REGISTRY:
        raise RunError(f"unknown recipe {spec.recipe!r}; known: {', '.join(names())}")
    return _REGISTRY[spec.recipe](spec, run_dir=run_dir, resume=resume, callbacks=list(callbacks), progress=progress)


def resume(run_dir: str | Path, *, callbacks: Sequence[Callback | Callable[[dict[str, Any]], Any]] = (),
           progress: bool | None = None, **overrides: Any) -> Job:
    """The Job that continues the run in `run_dir` (rebuilt from its spec.json). overrides replace
    arguments (e.g. steps=10, budget_calls=100) and are saved in spec.json for later resumes."""
    spec = RunSpec.from_dict(read_spec(run_dir))
    unknown = [k for k in overrides if k not in spec.args]
    if unknown:
        raise RunError(f"cannot override {', '.join(unknown)} of a {spec.recipe!r} run; it takes: {', '.join(sorted(spec.args))}")
    spec.args.update(overrides)
    return build(spec, run_dir=run_dir, resume=True, callbacks=callbacks, progress=progress)


def make_engine(spec: str, *, base_url: str | None = None, no_cache: bool = False, max_tokens: int | None = None,
                latency: float = 0.0) -> "Engine":
    """An engine from a spec string as the CLI takes it: local[:path.gguf], openai:<model>, litellm:<model>,
    or fake (alias scripted: the offline stand-in model, answers are noise)."""
    from .engines import get_engine

    kind = spec.strip().partition(":")[0].lower()
    options: dict[str, Any] = {}
    if no_cache:
        options["cache"] = False
    if max_tokens:
        options["max_tokens"] = max_tokens
    if base_url:
        if kind != "openai":
            raise ValueError(f"--base-url works with openai:<model> engines, not {spec!r} (e.g. --engine openai:my-model)")
        options["base_url"] = base_url
    if kind in ("fake", "scripted"):
        from .engines.fake import FakeEngine

        return FakeEngine(latency=latency or 0.0, **options)
    if kind == "local":  # checked here, before a run directory exists or anything is spent
        import importlib.util

        path = spec.strip().partition(":")[2]
        if path and not Path(path).expanduser().is_file():
            raise FileNotFoundError(f"--engine {spec}: there is no model file at {path}; pass the path of a .gguf file, "
                                    "or --engine local for the embedded SmolLM2")
        if importlib.util.find_spec("llama_cpp") is None:
            raise ImportError("the local engine needs llama-cpp-python: pip install -e '.[local]' "
                              "(or use --engine openai:<model> / litellm:<model>)")
    try:
        return get_engine(spec, **options)
    except ValueError as exc:
        if "unknown engine" not in str(exc):
            raise
        raise ValueError(f"unknown engine {spec!r}: use local, local:<path.gguf>, openai:<model>, litellm:<model> "
                         "or fake") from None


def check_new_run_dir(run_dir: str | Path | None, resume: bool) -> None:
    """Fail before spending anything when a live run holds the directory, or a new run would land on an old one."""
    if run_dir is not None:
        check_not_busy(run_dir)
    if run_dir is not None and not resume and has_run(run_dir):
        raise FileExistsError(f"{run_dir} already holds a run; continue it with `textopt resume {run_dir}`, "
                              "or pick another output directory")


def _int_at_least(args: Mapping[str, Any], name: str, low: int) -> None:
    value = args.get(name)
    if not isinstance(value, int) or value < low:
        raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")


# -- recipe "optimize": a system prompt on a task, before/after on held-out examples --------------
OPTIMIZE_DEFAULTS: dict[str, Any] = {
    "engine": "local", "backward_engine": None, "base_url": None, "task": "object_counting", "optimizer": "tgd",
    "steps": 2, "batch_size": 2, "eval_size": 6, "val_size": 3, "prompt": "You are a helpful assistant. Answer the question.",
    "seed": 0, "max_tokens": 160, "concurrency": 8, "budget_tokens": None, "budget_calls": None, "budget_usd": None,
    "patience": None, "keep_best": True, "latency": 0.0, "no_cache": False, "budget_metric_calls": None,
    "train_size": None,
}
OPTIMIZERS = ("tgd", "optoprime", "search")


class _PromptTask(Job):
    """What the optimize recipes share: arguments, data split, engines, the prompt Variable, forward and loss."""

    def _setup(self, spec: RunSpec, run_dir: str | Path | None, resume: bool) -> dict[str, Any]:
        import textopt as to
        from .datasets import load, metric_for

        a = {**OPTIMIZE_DEFAULTS, **{k: v for k, v in spec.args.items() if v is not None}}
        for name, low in (("steps", 0), ("batch_size", 1), ("eval_size", 0), ("val_size", 0), ("concurrency", 1)):
            _int_at_least(a, name, low)
        if a["optimizer"] not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {a['optimizer']!r}")
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
        self.engine = make_engine(a["engine"], base_url=a["base_url"], no_cache=a["no_cache"], latency=a["latency"])
        self.backward_engine = (make_engine(a["backward_engine"], base_url=a["base_url"], no_cache=a["no_cache"],
                                            latency=a["latency"]) if a["backward_engine"] else self.engine)
        self.prompt = to.Variable(a["prompt"], role="system prompt of an assistant that answers questions",
                                  requires_grad=True, name="system_prompt")
        self.llm = to.LLM(self.engine, system_prompt=self.prompt, max_tokens=a["max_tokens"] or 160)
        self.metric = metric_for(a["task"])  # label tasks score with feedback; the others by exact match
        self.run_dir = run_dir
        return a

    async def forward(self, example: Any) -> Any:
        from .variable import Variable

        return await self.llm.acall(Variable(example.question, role="question to answer"))

    async def loss(self, example: Any, output: Any) -> Any:
        from .loss import TextLoss

        return await TextLoss(
            f"Question: {example.question}\nThe correct answer is {example.answer}. Say whether the response gives "
            "exactly this answer and, if not, what went wrong in its reasoning. Be brief.",
            engine=self.backward_engine, max_tokens=160,
        ).acall(output)

    def _result(self, before: Any, after: Any, start: float, usage: Any, run_usage: dict[str, Any]) -> dict[str, Any]:
        return {
            "task": self.args["task"], "engine": self.args["engine"], "optimizer": self.args["optimizer"],
            "accuracy_before": before and before.mean, "accuracy_after": after and after.mean,
            "ci95_before": before and before.ci95, "ci95_after": after and after.ci95,
            "eval_size": len(self.test), "val_size": len(self.val), "tokens": usage.to_dict(), "run_usage": dict(run_usage),
            "seconds": round(time.perf_counter() - start, 2), "final_prompt": self.prompt.value,
            "run_dir": str(self.run_dir) if self.run_dir else None,
        }


class OptimizeJob(_PromptTask):
    """Optimize the system prompt of an LLM on a task with the Trainer (TGD or OptoPrime); score it before
    and after on held-out test examples; write result.json."""

    def __init__(self, spec: RunSpec, *, run_dir: str | Path | None, resume: bool,
                 callbacks: Sequence[Any], progress: bool | None) -> None:
        import textopt as to
        from .train import Trainer

        a = self._setup(spec, run_dir, resume)
        numeric = a["task"] in ("object_counting", "arithmetic")
        constraints = ["The prompt must ask for the final answer as a number."] if numeric else []
        if a["optimizer"] == "optoprime":
            self.optimizer: Any = to.OptoPrime([self.prompt], engine=self.backward_engine, constraints=constraints)
        else:
            self.optimizer = to.TGD([self.prompt], engine=self.backward_engine, constraints=constraints)
        self.trainer = Trainer(
            self.forward, self.loss, self.optimizer, train=self.train, val=self.val, batch_size=a["batch_size"],
            concurrency=a["concurrency"], steps=a["steps"], budget_tokens=a["budget_tokens"],
            budget_calls=a["budget_calls"], budget_usd=a["budget_usd"], keep_best=a["keep_best"],
            patience=a["patience"], metric=self.metric, backward_engine=self.backward_engine, seed=a["seed"],
            spec=self.spec.to_dict(), run_dir=run_dir, progress=progress, callbacks=callbacks)
        if resume and run_dir is not None:
            self.trainer.run.resume = self.trainer.resumed = True
            self.trainer.run.load_checkpoint(self.trainer.load_state_dict)

    @property
    def progress_note(self) -> str:
        t = self.trainer
        return f"resuming {t.run.dir} after step {t.global_step} of {t.total_steps}"

    async def arun(self) -> dict[str, Any]:
        """Score the initial prompt on the test set, train, score the final prompt; write result.json."""
        from .engines.usage import track_usage

        trainer, run = self.trainer, self.trainer.run
        start = time.perf_counter()
        with run, track_usage() as usage:
            run.start(step=trainer.global_step, total_steps=trainer.total_steps, resumed=trainer.resumed,
                      run_dir=str(run.dir) if run.dir else None)
            current = self.prompt.value
            self.prompt.set_value(trainer.state.initial[self.prompt.name])  # a resumed run scores the *initial* prompt (cache hits)
            with run.track():
                before = await trainer.evaluate(self.test, "test_before") if self.test else None
            self.prompt.set_value(current)
            history = await trainer.afit()
            with run.track():
                after = await trainer.evaluate(self.test, "test_after") if self.test else None
            result = {
                **self._result(before, after, start, usage, run.totals),
                "steps": len([r for r in history.rows if r["step"] > 0]), "rejected_steps": history.rejected,
                "best_val": history.best_val, "stopped": history.stopped, "failed_updates": len(self.optimizer.failures),
                "failures": [getattr(f, "error", str(f))[:300] for f in self.optimizer.failures[-5:]],
            }
            run.write_json("result.json", result)
            run.log({"event": "result", **result})
        return result


class SearchJob(_PromptTask):
    """The same task with candidate search (`textopt.search.Search`): a pool of prompts scored per validation
    example, parents from the Pareto front, TGD reflection on minibatches. --steps bounds the mutations
    through a metric-call budget of (steps + 1) * (val + 2 * batch) unless --budget-metric-calls is given."""

    def __init__(self, spec: RunSpec, *, run_dir: str | Path | None, resume: bool,
                 callbacks: Sequence[Any], progress: bool | None) -> None:
        from .search import Search

        a = self._setup(spec, run_dir, resume)
        budget = a["budget_metric_calls"] or (a["steps"] + 1) * (len(self.val) + 2 * a["batch_size"])
        self.search = Search(
            [self.prompt], forward=self.forward, train=self.train, val=self.val, metric=self.metric, loss=self.loss,
            proposer="tgd", engine=self.backward_engine, minibatch=a["batch_size"], budget=budget,
            budget_tokens=a["budget_tokens"], budget_usd=a["budget_usd"], patience=a["patience"],
            concurrency=a["concurrency"], run_dir=run_dir, resume=resume, seed=a["seed"], callbacks=callbacks,
            progress=progress, spec=self.spec.to_dict())
        self.initial = self.prompt.value

    @property
    def progress_note(self) -> str:
        return f"resuming the search in {self.run_dir} after its last completed iteration"

    async def arun(self) -> dict[str, Any]:
        from .engines.usage import track_usage
        from .run import Run

        side = Run(self.run_dir, kind="search", callbacks=self.search.callbacks)  # not opened: Search holds the lock
        start = time.perf_counter()
        with track_usage() as usage:
            before = await self._test("test_before", side)
            found = await self.search.afit()
            after = await self._test("test_after", side)
        result = {
            **self._result(before, after, start, usage, found.usage),
            "steps": found.iterations, "stopped": found.stopped, "best_val": found.best_val, "best_id": found.best_id,
            "pareto": found.pareto, "candidates": len(found.candidates), "metric_calls": found.metric_calls,
            "rejected_steps": [], "failed_updates": sum(int(r.get("failures") or 0) for r in found.rows), "failures": [],
        }
        side.write_json("result.json", result)
        side.log({"event": "result", **result})
        return result

    async def _test(self, name: str, side: Any) -> Any:
        from .evaluate import aevaluate

        if not self.test:
            return None
        current = self.prompt.value
        if name == "test_before":
            self.prompt.set_value(self.initial)
        report = await aevaluate(self.forward, self.test, self.metric, concurrency=self.args["concurrency"])
        self.prompt.set_value(current)
        side.save_eval(name, report)
        return report


@register("optimize")
def _optimize(spec: RunSpec, **kw: Any) -> Job:
    optimizer = (spec.args.get("optimizer") or "tgd").lower()
    return SearchJob(spec, **kw) if optimizer == "search" else OptimizeJob(spec, **kw)


# -- recipe "aegis": co-evolution of injection attacks and a detector prompt ----------------------
AEGIS_DEFAULTS: dict[str, Any] = {
    "engine": "local", "optimizer_engine": None, "base_url": None, "rounds": 2, "iterations": 2, "pool_size": 4,
    "essays": 6, "corpus_examples": 0, "attack": None, "defense": None, "max_tokens": None, "seed": 0,
    "no_cache": False, "budget_tokens": None, "budget_calls": None, "budget_usd": None, "latency": 0.0,
}


class AegisJob(Job):
    """`aegis.coevolve` from JSON arguments, checkpointed every round in the run directory."""

    def __init__(self, spec: RunSpec, *, run_dir: str | Path | None, resume: bool,
                 callbacks: Sequence[Any], progress: bool | None) -> None:
        from . import aegis
        from .run import Progress

        a = {**AEGIS_DEFAULTS, **{k: v for k, v in spec.args.items() if v is not None}}
        if not 2 <= int(a["essays"]) <= len(aegis.ESSAYS):
            raise ValueError(f"--essays must be between 2 and {len(aegis.ESSAYS)}, got {a['essays']}")
        check_new_run_dir(run_dir, resume)
        self.examples: list[Any] = []
        if a["corpus_examples"]:
            import random

            corpus = aegis.load_corpus("bastion")  # a clear one-line error if bastioncorpus is missing
            self.examples = random.Random(a["seed"]).sample(corpus, min(a["corpus_examples"], len(corpus)))
        self.spec, self.args, self.resume, self.run_dir = RunSpec(spec.recipe, a, "aegis"), a, resume, run_dir
        mk = lambda s: make_engine(s, base_url=a["base_url"], no_cache=a["no_cache"], max_tokens=a["max_tokens"],  # noqa: E731
                                   latency=a["latency"])
        self.engine = mk(a["engine"])
        self.optimizer_engine = mk(a["optimizer_engine"]) if a["optimizer_engine"] else self.engine
        show = progress if progress is not None else sys.stderr.isatty()
        self.callbacks = list(callbacks) + ([Progress(bar=True)] if show else [])

    @property
    def progress_note(self) -> str:
        return f"resuming {self.run_dir} after its last completed round"

    async def arun(self) -> dict[str, Any]:
        from . import aegis

        a = self.args
        result = await aegis.acoevolve(
            a["attack"] or list(aegis.DEFAULT_ATTACKS), a["defense"] or aegis.DEFAULT_DEFENSE,
            benign=list(aegis.ESSAYS)[: a["essays"]], engine=self.engine, optimizer_engine=self.optimizer_engine,
            rounds=a["rounds"], iterations=a["iterations"], pool_size=a["pool_size"], seed=a["seed"], out=self.run_dir,
            examples=self.examples, resume=self.resume, callbacks=self.callbacks, spec=self.spec.to_dict(),
            budgets=Budgets(tokens=a["budget_tokens"], calls=a["budget_calls"], usd=a["budget_usd"]),
        )
        return result.to_dict()


@register("aegis")
def _aegis(spec: RunSpec, **kw: Any) -> Job:
    return AegisJob(spec, **kw)
