"""The recipe registry: runs that can be rebuilt from a few JSON arguments, so `resume(run_dir)` needs no code.

A recipe is a name in a registry and a builder `(spec, run_dir=..., resume=..., callbacks=..., progress=...)
-> Job`. A `RunSpec` (recipe name + JSON arguments, engine *spec strings*, never keys) goes into the run
directory's spec.json; `resume(run_dir)` reads it back, looks the recipe up and builds the same run. The
CLI commands are thin adapters over these recipes; the library never imports the CLI.

    job = recipes.build(RunSpec("optimize", {"engine": "fake", "steps": 2}), run_dir="runs/x")
    result = job.fit()                       # a JobResult: .best, .history, .run_dir; .summary = runs/x/result.json
    job = recipes.resume("runs/x", steps=4)  # later, or after a crash
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from .._sync import run_sync, sync_twin
from ..checkpoint import atomic_write_text
from ..errors import CodeNeeded, RunError
from ..run import SPEC, Callback, check_not_busy, has_run, read_spec, scrubbed_json
from ..train import Trainer, trainer_from_run_dir

if TYPE_CHECKING:
    from ..engines.base import Engine


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


@dataclass
class JobResult:
    """What a Job's `fit()` returns: the run protocol's `best` (parameter name -> value), `history` (rows) and
    `run_dir`, like any `textopt.run.FitResult`, and `summary`, the JSON dict that the CLI prints and the run
    writes to result.json (a recipe run is judged by its held-out scores, which only the summary holds)."""

    summary: dict[str, Any]
    best: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: str | None = None

    def __post_init__(self) -> None:
        if self.run_dir is not None:
            self.run_dir = str(self.run_dir)  # a Path from the Job: the protocol's run_dir is text

    def to_dict(self) -> dict[str, Any]:
        """The summary (result.json's content), as a new dict."""
        return dict(self.summary)


class Job:
    """A built recipe, `textopt.run.Fittable` like the Trainer, Search and co-evolution it drives: `fit()` /
    `await afit()` do the whole run and return a JobResult (the CLI and `textopt resume` call nothing else)."""

    spec: RunSpec
    run_dir: str | Path | None = None

    async def afit(self) -> JobResult:
        raise NotImplementedError

    fit = sync_twin(afit, "Run the job to a stop (sync `afit`): its JobResult.")

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
        if self.run_dir is None:
            return
        folder = Path(self.run_dir)
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / SPEC).exists() or not has_run(folder):
            atomic_write_text(folder / SPEC, scrubbed_json(self.spec.to_dict()) + "\n")


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


def _lookup(name: str) -> Builder | None:
    return _REGISTRY.get(name)


def build(spec: RunSpec | Mapping[str, Any], *, run_dir: str | Path | None = None, resume: bool = False,
          callbacks: Sequence[Callback | Callable[[dict[str, Any]], Any]] = (), progress: bool | None = None) -> Job:
    """The Job for `spec` (a RunSpec or its dict)."""
    spec = spec if isinstance(spec, RunSpec) else RunSpec.from_dict(spec)
    builder = _lookup(spec.recipe)
    if builder is None:
        raise RunError(f"unknown recipe {spec.recipe!r}; known: {', '.join(names())}")
    return builder(spec, run_dir=run_dir, resume=resume, callbacks=list(callbacks), progress=progress)


def resume(run_dir: str | Path, *, forward: Any = None, loss: Any = None, optimizer: Any = None,
           train: Sequence[Any] | None = None, val: Sequence[Any] | None = None, metric: Any = None,
           callbacks: Sequence[Callback | Callable[[dict[str, Any]], Any]] = (), progress: bool | None = None,
           **overrides: Any) -> "Job | Trainer":
    """Continue the run in `run_dir`, whoever made it.

    A recipe run (`textopt optimize`, `recipes.build`) is rebuilt from its spec.json: the result is its Job.
    overrides replace arguments (e.g. steps=10, budget_calls=100) and are saved in spec.json for later resumes.
    A run made in Python (`Trainer(..., run_dir=...)`) needs its code again: forward, loss, an optimizer over
    Variables with the same names, and the same train/val data (checked by fingerprint); the result is the
    Trainer, and overrides replace its saved options."""
    spec = read_spec(run_dir)
    if not spec.get("recipe"):
        if spec.get("kind") != "trainer":
            raise RunError(f"{Path(run_dir) / SPEC} holds a {spec.get('kind')!r} run, not a Trainer run")
        code = {"forward": forward, "loss": loss, "optimizer": optimizer, "train": train}
        if any(v is None for v in code.values()):
            missing = ", ".join(k for k, v in code.items() if v is None)
            raise CodeNeeded(f"{run_dir} was made from Python, so its code can't be rebuilt from disk: pass {missing} "
                             "(the same ones as the original run) to textopt.resume(run_dir, forward=..., loss=..., "
                             "optimizer=..., train=..., val=...)")
        display = {"callbacks": list(callbacks)} if callbacks else {}
        if progress is not None:
            display["progress"] = progress
        return trainer_from_run_dir(run_dir, forward=forward, loss=loss, optimizer=optimizer, train=train, val=val,
                                    metric=metric, **display, **overrides)
    job_spec = RunSpec.from_dict(spec)
    unknown = [k for k in overrides if k not in job_spec.args]
    if unknown:
        raise RunError(f"cannot override {', '.join(unknown)} of a {job_spec.recipe!r} run; it takes: {', '.join(sorted(job_spec.args))}")
    job_spec.args.update(overrides)
    return build(job_spec, run_dir=run_dir, resume=True, callbacks=callbacks, progress=progress)


def resume_trainer(run_dir: str | Path, **kw: Any) -> Trainer:
    """`resume` for a Trainer run (textopt.resume): the Trainer that continues it from its last completed step,
    for a run made in Python or by the "optimize" recipe with a Trainer (tgd, optoprime); call `.fit()` on it."""
    found = resume(run_dir, **kw)
    trainer = found if isinstance(found, Trainer) else getattr(found, "trainer", None)
    if trainer is None:
        raise RunError(f"{run_dir} is a {read_spec(run_dir).get('kind')!r} run, not a Trainer run; continue it with "
                       f"textopt.recipes.resume({str(run_dir)!r}).fit() or `textopt resume {run_dir}`")
    return trainer


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

