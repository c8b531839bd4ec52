"""The one verb that runs any optimizer: Trainer, Search and AEGIS co-evolution (`aegis.CoEvolution`) are
`Fittable`, and so is every recipe Job that drives them (`textopt.recipes.Job`, whose `JobResult` also holds
the result.json summary): `fit()` (or `await afit()`) runs to a stop and returns a `FitResult` with the best
values found, the history of the run (one row per step, iteration, round or problem) and the run directory
(None without one). `Optimizer.step()` stays the verb for hand-written loops."""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class FitResult(Protocol):
    """What `fit()` returns: `best` (parameter name -> value), `history` (rows) and `run_dir`."""

    @property
    def best(self) -> dict[str, Any]: ...

    @property
    def history(self) -> list[dict[str, Any]]: ...

    run_dir: str | None


@runtime_checkable
class Fittable(Protocol):
    """Something that runs an optimizer to a stop: `fit()` / `await afit()` -> FitResult."""

    def fit(self) -> FitResult: ...

    async def afit(self) -> FitResult: ...
