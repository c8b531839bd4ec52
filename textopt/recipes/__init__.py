"""Run recipes: runs that can be rebuilt from a few JSON arguments, so `resume(run_dir)` needs no code.

A recipe is a name in a registry and a builder `(spec, run_dir=..., resume=..., callbacks=..., progress=...)
-> Job`. A `RunSpec` (recipe name + JSON arguments, engine *spec strings*, never keys) goes into the run
directory's spec.json; `resume(run_dir)` reads it back, looks the recipe up and builds the same run (a run
made in Python is resumed by the same function, given its code again). The CLI commands are thin adapters
over these recipes; the library never imports the CLI.

- `registry`: `RunSpec`, `Job` (Fittable: `fit()` -> `JobResult`), `register`, `build`, `resume`;
- `engine_spec`: engines from spec strings (`make_engine`);
- one module per job kind: `prompt_job` ("optimize": Trainer or Search on a prompt), `aegis_job` ("aegis"),
  `humaneval_job` ("humaneval": test-time optimization of code).

    job = recipes.build(RunSpec("optimize", {"engine": "fake", "steps": 2}), run_dir="runs/x")
    result = job.fit()                       # a JobResult: .best, .history, .run_dir; .summary = runs/x/result.json
    job = recipes.resume("runs/x", steps=4)  # later, or after a crash
"""
from __future__ import annotations

from . import aegis_job, humaneval_job, prompt_job  # each registers its recipe
from .aegis_job import AEGIS_DEFAULTS, AegisJob, aegis_examples
from .engine_spec import make_engine, reflect_installed
from .humaneval_job import CODE_DEFAULTS, CodeJob
from .prompt_job import (
    OPTIMIZE_DEFAULTS, OPTIMIZERS, SIZES, SYSTEM_PROMPT, TEMPLATE_ROLE, OptimizeJob, SearchJob, answered, resolve_args,
    seed_prompt,
)
from .registry import (
    Builder, Job, JobResult, RunSpec, build, check_new_run_dir, names, register, resume, resume_trainer,
)

__all__ = [
    "RunSpec", "Job", "JobResult", "Builder", "register", "names", "build", "resume", "resume_trainer",
    "check_new_run_dir",
    "make_engine", "reflect_installed", "OPTIMIZE_DEFAULTS", "OPTIMIZERS", "SIZES", "SYSTEM_PROMPT", "TEMPLATE_ROLE",
    "OptimizeJob", "SearchJob", "answered", "resolve_args", "seed_prompt", "AEGIS_DEFAULTS", "AegisJob",
    "aegis_examples", "CODE_DEFAULTS", "CodeJob", "aegis_job", "humaneval_job", "prompt_job",
]
