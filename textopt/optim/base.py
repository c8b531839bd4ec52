"""What every optimizer shares: its parameters, the engine, a record of failed updates, and state to checkpoint."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

from .._sync import run_sync
from ..engines.base import Engine
from ..variable import Variable


@dataclass
class UpdateFailure:
    """An update that could not be used. The variable kept its last good value."""

    step: int
    variable: str
    error: str
    reply: str = ""


class Optimizer:
    """Base class: holds trainable Variables; `step()` wraps the async `astep()`."""

    def __init__(self, parameters: Iterable[Variable], *, engine: Engine | str | None = None, strict: bool = False) -> None:
        params = list(parameters)
        if not params:
            raise ValueError("the optimizer got no parameters: pass the trainable Variables to optimize")
        names: set[str] = set()
        for p in params:
            if not isinstance(p, Variable):
                raise TypeError(f"optimizer parameters must be Variables, got {type(p).__name__}")
            if not p.requires_grad:
                raise ValueError(f"parameter {p.name!r} has requires_grad=False; create it with requires_grad=True to optimize it")
            if p.name in names:
                raise ValueError(f"two parameters share the name {p.name!r}; names must be unique")
            names.add(p.name)
        self.parameters = params
        self.engine = engine
        self.strict = strict
        self.failures: list[UpdateFailure] = []
        self.steps = 0

    def zero_grad(self) -> None:
        """Forget the feedback of the last backward."""
        for p in self.parameters:
            p.zero_grad()

    async def astep(self) -> None:
        raise NotImplementedError

    def step(self) -> None:
        run_sync(self.astep())

    def state_dict(self) -> dict[str, Any]:
        """Plain-JSON state for checkpoints (values are saved separately)."""
        return {"steps": self.steps, "failures": [asdict(f) for f in self.failures]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        self.failures = [UpdateFailure(**f) for f in state.get("failures", [])]
