"""Module: a pipeline of several steps whose trainable text is found, named, saved and loaded as one.

    class Pipeline(to.Module):
        def __init__(self, engine):
            self.draft = to.LLM(engine, system_prompt=to.Variable("Answer.", role="...", requires_grad=True))
            self.refine = to.LLM(engine, system_prompt=to.Variable("Improve the answer.", role="...", requires_grad=True))

        async def forward(self, question):
            return await self.refine.acall(await self.draft.acall(question))

    pipe = Pipeline(engine)
    opt = to.TGD(pipe)                 # a Module goes wherever a list of parameters goes
    pipe.named_parameters()            # [("draft.system_prompt", Variable), ("refine.system_prompt", Variable)]
    json.dump(pipe.state_dict(), f)    # {"draft.system_prompt": "...", ...}: plain JSON

Nothing is registered: the parameters are found by walking the module's attributes when asked, in the order
they were assigned. An attribute counts when it is a trainable Variable, a sub-Module, an op or call that
owns trainable Variables (anything with a `parameters()` method, e.g. `to.LLM`, `to.FormattedLLMCall`, a
trainable `@to.trace` function), or a list, tuple or dict of those. A Variable reachable twice (one prompt
shared by two steps) is one parameter, named by the first path that reaches it.

Names. `named_parameters()` gives structural names (`draft.system_prompt`, `steps.0.system_prompt`): they
depend only on how the module is built, so they key `state_dict()` and stay the same in a fresh process.
Optimizers, Search and Trainer keep using each Variable's own `.name` (what the LLM sees and what
`SearchResult.best`, `History.final` and parameters.json are keyed by); `load_state_dict` accepts those
too. Give Variables distinct names when a module class is instantiated twice (optimizers refuse two
parameters with one name).

Async. `forward` is yours, sync or `async def`. `module(x)` calls it as it is: with an async forward it
returns the coroutine (await it), and Search, Trainer and `to.evaluate` see the module as an async
function and await it on the textopt loop. `await module.acall(x)` works for both kinds (a sync forward
runs in a worker thread, so its sync ops may block).
"""
from __future__ import annotations

import asyncio
import inspect
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

from .variable import Variable

__all__ = ["Module", "LoadResult", "parameter_list"]


class LoadResult(NamedTuple):
    """What `load_state_dict(..., strict=False)` left out: parameters with no key, keys with no parameter."""

    missing: list[str]
    unexpected: list[str]


class Module:
    """Base class for a pipeline of steps: subclass it, assign steps and prompts as attributes, write `forward`.

    No `super().__init__()` is needed (nothing is registered). See the module docstring for what is
    discovered, how names work, and how async fits."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """An `async def forward` makes `__call__` a coroutine function too, so callers that check
        (`inspect.iscoroutinefunction(obj.__call__)`, as Search, Trainer and evaluate do) await it on their
        loop instead of sending it to a worker thread."""
        super().__init_subclass__(**kwargs)
        if cls.__call__ not in _CALLS:
            return  # the subclass (or one of its bases) wrote its own
        forward = getattr(cls, "forward", None)
        cls.__call__ = Module._acall_forward if inspect.iscoroutinefunction(forward) else Module._call_forward  # type: ignore[method-assign]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The pipeline: calls its steps and returns the output Variable. Write it in the subclass."""
        raise NotImplementedError(f"{type(self).__name__} needs a forward(...) method: the steps of the pipeline")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """`forward(*args, **kwargs)`: its result, or with an async forward the coroutine to await."""
        return self.forward(*args, **kwargs)

    def _call_forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    async def _acall_forward(self, *args: Any, **kwargs: Any) -> Any:
        return await self.forward(*args, **kwargs)

    async def acall(self, *args: Any, **kwargs: Any) -> Any:
        """Async call for either kind of forward: awaited when async, else run in a worker thread (with the
        caller's contextvars, so `to.using` and usage tracking follow)."""
        result = self.forward(*args, **kwargs) if inspect.iscoroutinefunction(self.forward) else \
            await asyncio.to_thread(self.forward, *args, **kwargs)
        while inspect.isawaitable(result):
            result = await result
        return result

    # -- parameters ---------------------------------------------------------------------------
    def named_parameters(self) -> list[tuple[str, Variable]]:
        """(dotted name, Variable) for every trainable Variable, each once, in attribute order."""
        seen_vars: set[int] = set()
        out: list[tuple[str, Variable]] = []
        for name, var in _walk(self, "", {id(self)}):
            if id(var) not in seen_vars:
                seen_vars.add(id(var))
                out.append((name, var))
        return out

    def parameters(self) -> list[Variable]:
        """The trainable Variables (what an optimizer, Trainer or Search takes), each once, in attribute order."""
        return [v for _, v in self.named_parameters()]

    def zero_grad(self) -> None:
        """Forget the feedback on every parameter (for hand-written loops; optimizers have their own)."""
        for v in self.parameters():
            v.zero_grad()

    # -- saving and loading -------------------------------------------------------------------
    def state_dict(self) -> dict[str, str]:
        """{dotted name: text} of every parameter: plain JSON, loadable into a fresh instance."""
        return {name: v.text for name, v in self.named_parameters()}

    def load_state_dict(self, state: Mapping[str, str], strict: bool = True) -> LoadResult:
        """Set the parameters' texts from `state` (all or nothing: a value a Variable refuses restores the rest).

        Keys are dotted names from `state_dict()`, or a Variable's own name (as in `SearchResult.best`,
        `History.final` and parameters.json). strict: every parameter needs a key and every key a parameter,
        else ValueError naming them; with strict=False the mismatches are returned instead."""
        named = self.named_parameters()
        by_path = dict(named)
        by_name: dict[str, list[Variable]] = {}
        for _, v in named:
            by_name.setdefault(v.name, []).append(v)
        chosen: dict[int, tuple[str, Variable, Any]] = {}
        unexpected: list[str] = []
        for key, text in state.items():
            var = by_path.get(key)
            if var is None and len(by_name.get(key, ())) == 1:
                var = by_name[key][0]
            if var is None:
                unexpected.append(key)
            elif id(var) in chosen:
                raise ValueError(f"load_state_dict: {chosen[id(var)][0]!r} and {key!r} both set the parameter "
                                 f"{_path_of(named, var)!r}; keep one of them")
            else:
                chosen[id(var)] = (key, var, text)
        missing = [path for path, v in named if id(v) not in chosen]
        if strict and (missing or unexpected):
            raise ValueError(f"load_state_dict into {type(self).__name__}: " + "; ".join(
                part for part in (f"missing keys {missing}" if missing else "",
                                  f"unexpected keys {unexpected}" if unexpected else "") if part)
                + f"; its keys are {list(by_path)}: load a state_dict() of the same pipeline, or pass strict=False "
                "to load only the keys that match")
        for key, _, text in chosen.values():
            if not isinstance(text, str):
                raise TypeError(f"load_state_dict: the value of {key!r} is a {type(text).__name__}; parameters hold text")
        done: list[tuple[Variable, Any]] = []
        try:
            for key, var, text in chosen.values():
                old = var.value
                try:
                    var.set_value(text)
                except (ValueError, TypeError) as exc:
                    raise type(exc)(f"load_state_dict: {key!r} was refused: {exc}") from exc
                done.append((var, old))
        except BaseException:
            for var, old in reversed(done):  # values they held before: accepted once, so accepted again
                var.set_value(old)
            raise
        return LoadResult(missing, unexpected)

    def __repr__(self) -> str:
        names = ", ".join(name for name, _ in self.named_parameters())
        return f"{type(self).__name__}(parameters: {names or 'none'})"


_CALLS = (Module.__call__, Module._call_forward, Module._acall_forward)


def parameter_list(parameters: "Module | Iterable[Variable]") -> list[Variable]:
    """What optimizers and Search take as parameters, as a list: a Module's `parameters()`, else the iterable."""
    if isinstance(parameters, Module):
        return parameters.parameters()
    return list(parameters)


def _walk(obj: Any, prefix: str, seen: set[int]) -> Iterator[tuple[str, Variable]]:
    """(path, trainable Variable) below a Module or container; `seen` holds the modules and containers on the
    way, so a module that refers back to its parent is walked once."""
    if isinstance(obj, Module):
        items: Iterable[tuple[Any, Any]] = vars(obj).items()
    elif isinstance(obj, Mapping):
        items = obj.items()
    else:
        items = enumerate(obj)
    for key, value in items:
        path = f"{prefix}{key}"
        if isinstance(value, Variable):
            if value.requires_grad:
                yield path, value
        elif isinstance(value, (Module, list, tuple, dict)):
            if id(value) not in seen:
                seen.add(id(value))
                yield from _walk(value, path + ".", seen)
        elif callable(getattr(value, "parameters", None)) and not isinstance(value, type):
            yield from _owned(value, path)


def _owned(op: Any, path: str) -> Iterator[tuple[str, Variable]]:
    """The trainable Variables an op or call holds (its `parameters()`), named by the attribute that holds
    each (`draft.system_prompt`), else by position."""
    attrs = {id(v): k for k, v in getattr(op, "__dict__", {}).items() if isinstance(v, Variable)}
    for i, var in enumerate(op.parameters()):
        if isinstance(var, Variable) and var.requires_grad:
            yield f"{path}.{attrs.get(id(var), i)}", var


def _path_of(named: list[tuple[str, Variable]], var: Variable) -> str:
    return next(path for path, v in named if v is var)
