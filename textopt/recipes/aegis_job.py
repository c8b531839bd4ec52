"""The recipe "aegis": co-evolution of injection attacks and a detector prompt (`textopt.aegis.coevolve`)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .. import aegis
from ..aegis.corpus import load_corpus, sample
from ..run import Budgets, Progress
from .engine_spec import make_engine
from .registry import Job, JobResult, RunSpec, _int_at_least, check_new_run_dir, register

if TYPE_CHECKING:
    from ..aegis.corpus import Example


# -- recipe "aegis": co-evolution of injection attacks and a detector prompt ----------------------
AEGIS_DEFAULTS: dict[str, Any] = {
    "engine": "local", "optimizer_engine": None, "base_url": None, "rounds": 2, "iterations": 2, "pool_size": 4,
    "patience": 1, "buffer_size": 4, "quote_failures": True, "exemplars": 0,
    "essays": 6, "corpus": None, "corpus_examples": 0, "attack": None, "defense": None, "max_tokens": None, "seed": 0,
    "no_cache": False, "budget_tokens": None, "budget_calls": None, "budget_usd": None, "latency": 0.0,
}


def aegis_examples(args: Mapping[str, Any]) -> list["Example"]:
    """The labeled texts mixed into the defender's data: a seeded sample of `corpus_examples` texts from the
    `corpus` file, else from bastioncorpus. With a file, 0 means all its rows (the user brought them to be used);
    without one, 0 means none (bastioncorpus is an optional extra)."""
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
        a = {**AEGIS_DEFAULTS, **{k: v for k, v in spec.args.items() if v is not None}}
        if not 2 <= int(a["essays"]) <= len(aegis.ESSAYS):
            raise ValueError(f"--essays must be between 2 and {len(aegis.ESSAYS)}, got {a['essays']}")
        check_new_run_dir(run_dir, resume)
        self.examples = aegis_examples(a)
        if a["corpus"]:  # absolute, so `textopt resume DIR` finds the file from any directory
            a["corpus"] = str(Path(a["corpus"]).expanduser().resolve())
        self.spec, self.args, self.resuming, self.run_dir = RunSpec(spec.recipe, a, "aegis"), a, resume, run_dir
        mk = lambda s: make_engine(s, base_url=a["base_url"], no_cache=a["no_cache"], max_tokens=a["max_tokens"],  # noqa: E731
                                   latency=a["latency"], budget_usd=a["budget_usd"])
        self.engine = mk(a["engine"])
        self.optimizer_engine = mk(a["optimizer_engine"]) if a["optimizer_engine"] else self.engine
        show = progress if progress is not None else sys.stderr.isatty()
        self.callbacks = list(callbacks) + ([Progress(bar=True)] if show else [])

    @property
    def progress_note(self) -> str:
        return f"resuming {self.run_dir} after its last completed round"

    async def afit(self) -> JobResult:
        """The co-evolution to a stop; its Result's dict is the summary (it writes result.json itself)."""
        a = self.args
        await self.aready()
        result = await aegis.CoEvolution(
            a["attack"] or list(aegis.DEFAULT_ATTACKS), a["defense"] or aegis.DEFAULT_DEFENSE,
            benign=list(aegis.ESSAYS)[: a["essays"]], engine=self.engine, optimizer_engine=self.optimizer_engine,
            rounds=a["rounds"], iterations=a["iterations"], pool_size=a["pool_size"], seed=a["seed"], out=self.run_dir,
            patience=a["patience"], buffer_size=a["buffer_size"], quote_failures=a["quote_failures"],
            exemplars=int(a.get("exemplars") or 0), examples=self.examples, resume=self.resuming, callbacks=self.callbacks, spec=self.spec.to_dict(),
            budgets=Budgets(tokens=a["budget_tokens"], calls=a["budget_calls"], usd=a["budget_usd"]),
        ).afit()
        return JobResult(result.to_dict(), best=result.best, history=result.history, run_dir=self.run_dir)


@register("aegis")
def _aegis(spec: RunSpec, **kw: Any) -> Job:
    return AegisJob(spec, **kw)
