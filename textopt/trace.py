"""@trace: Python functions as graph nodes, trainable code, and exceptions as error nodes.

A traced function is called with Variables and/or plain values; its body gets plain values and its
result comes back as a Variable whose parents are the Variable arguments (plus the code Variable when
the function is trainable). Nothing is registered anywhere: the graph is only the Variables' parents.

Trainable code runs isolated by default (`isolation="process"`): in a warm worker process, with a
wall-clock limit covering compile and call, a memory limit and no secret environment variables (see
textopt/sandbox/, which also says what the code sees and what it does not protect against). Exits,
interrupts, crashes, hangs and memory blow-ups of code an optimizer wrote become error nodes.
`isolation="thread"` runs it in-process instead, in a fresh daemon thread with the time limit: when time
is up the thread is stopped by raising an exception into it (CPython's PyThreadState_SetAsyncExc,
repeated until it unwinds), which ends pure-Python loops but not a thread blocked inside C, nor a loop
that catches BaseException. `isolation="none"` calls it directly. No sys.settrace, no frame inspection.
"""
from __future__ import annotations

import asyncio
import contextvars
import ctypes
import functools
import inspect
import itertools
import sys
import threading
import traceback
from typing import TYPE_CHECKING, Any, Callable, Mapping

from .engines.base import Engine
from .function import Feedback, Function, OpContext, OpDescription, OpError
from .prompts import render_messages
from .sandbox import arun_isolated, check_isolation, run_isolated
from .source import CodeVariable, find_source
from .variable import Variable, as_text

if TYPE_CHECKING:
    from .sandbox import Sandbox

#: Default time limit (seconds) for one call of trainable code.
DEFAULT_TIMEOUT = 5.0
#: Characters of each value shown in the backward prompt of a traced function.
SHOWN_CHARS = 4000

_counter = itertools.count(1)


class TraceError(OpError):
    """A traced function raised. `.variable` is the error node: its value is the annotated traceback,
    its parents are the call's inputs, so you can backward from it (or hand it to OptoPrime) like any output."""


class TraceTimeout(BaseException):
    """Raised inside trainable code whose time is up (a BaseException, so `except Exception` can't swallow it)."""


# -- running with a time limit ------------------------------------------------------------------
def _interrupt(thread: threading.Thread) -> None:
    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(TraceTimeout))


def _start_limited(call: Callable[[], Any], name: str, on_done: Callable[[], None]) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}
    ctx = contextvars.copy_context()

    def target() -> None:
        try:
            box["value"] = ctx.run(call)
        except BaseException as exc:  # handed to the caller
            box["error"] = exc
        finally:
            box["done"] = True
            on_done()

    thread = threading.Thread(target=target, name=f"textopt-trainable-{name}", daemon=True)
    thread.start()
    return thread, box


def _stop(thread: threading.Thread, box: dict[str, Any]) -> None:
    """Raise TraceTimeout into the thread until it unwinds (at most ~1 s of trying)."""
    for _ in range(20):
        if box.get("done") or not thread.is_alive():
            return
        _interrupt(thread)
        thread.join(0.05)


def _timeout_error(name: str, timeout: float) -> TimeoutError:
    return TimeoutError(
        f"{name} did not finish within {timeout:g} s (time limit of trainable code; raise it with "
        f"@trace(trainable=True, timeout=...)) - an endless loop or a very slow step?"
    )


def run_limited(call: Callable[[], Any], timeout: float, name: str) -> Any:
    """Run `call()` in a worker thread and return its result, or raise TimeoutError after `timeout` s."""
    done = threading.Event()
    thread, box = _start_limited(call, name, done.set)
    if not done.wait(timeout):
        _stop(thread, box)
        raise _timeout_error(name, timeout)
    if "error" in box:
        raise box["error"]
    return box["value"]


async def arun_limited(call: Callable[[], Any], timeout: float, name: str) -> Any:
    """`run_limited` for the async path: the event loop stays free while the call runs."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def on_done() -> None:
        loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(None))

    thread, box = _start_limited(call, name, on_done)
    try:
        await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError:
        await asyncio.to_thread(_stop, thread, box)
        raise _timeout_error(name, timeout) from None
    if "error" in box:
        raise box["error"]
    return box["value"]


# -- the op ------------------------------------------------------------------------------------
class TracedCall(Function):
    """The op behind every traced function: forward runs the body (an exception becomes an error node);
    backward asks an LLM how each input (including the code, when trainable) should change, with the
    function's description, code, inputs and output as context. One op per traced function; each call's
    details live on its OpContext (args as called; saved: source, code)."""

    def __init__(self, traced: "Traced") -> None:
        self.traced = traced
        self.role = f"output of {traced.name}"

    @property
    def op_name(self) -> str:
        return self.traced.name

    def output_name(self, ctx: OpContext) -> str:
        return f"{self.traced.name}_{'error_' if ctx.error is not None else ''}{next(_counter)}"

    def error(self, ctx: OpContext, output: Variable) -> TraceError:
        exc = ctx.error
        first = str(exc).splitlines()[0] if str(exc) else ""
        err = TraceError(f"{self.traced.name} raised {type(exc).__name__}: {first} (the error node is .variable: {output.name})", output)
        err.__cause__ = exc
        return err

    def forward_sync(self, ctx: OpContext, *inputs: Variable) -> Any:
        fn, (args, kwargs) = self.traced, ctx.saved.pop("call")
        try:  # trainable code is compiled inside the time limit too (its module-level statements run then)
            if fn.isolation not in ("thread", "none"):
                return run_isolated(fn.fn, name=fn.name, source=ctx.saved["source"], is_async=fn.is_async, args=args,
                                    kwargs=kwargs, timeout=fn.timeout, sandbox=fn.isolation)
            if fn.timeout is not None:
                return run_limited(lambda: fn._body()(*args, **kwargs), fn.timeout, fn.name)
            return fn._body()(*args, **kwargs)
        except Exception as exc:
            return self._failed(ctx, exc)

    async def forward(self, ctx: OpContext, *inputs: Variable) -> Any:
        fn, (args, kwargs) = self.traced, ctx.saved.pop("call")
        try:
            if fn.isolation not in ("thread", "none"):
                return await arun_isolated(fn.fn, name=fn.name, source=ctx.saved["source"], is_async=fn.is_async,
                                           args=args, kwargs=kwargs, timeout=fn.timeout, sandbox=fn.isolation)
            if fn.timeout is not None:
                if fn.is_async:
                    return await arun_limited(lambda: asyncio.run(fn._body()(*args, **kwargs)), fn.timeout, fn.name)
                return await arun_limited(lambda: fn._body()(*args, **kwargs), fn.timeout, fn.name)
            if fn.is_async:
                return await fn._body()(*args, **kwargs)
            return fn._body()(*args, **kwargs)
        except Exception as exc:
            return self._failed(ctx, exc)

    def _failed(self, ctx: OpContext, exc: Exception) -> str:
        ctx.error = exc
        return self.traced._annotate(exc, ctx.saved["source"])

    def describe(self, ctx: OpContext, output: Variable) -> OpDescription:
        fn = self.traced
        doc = fn.description or "(no docstring)"
        if fn.code is None:
            doc += "\nSource:\n" + (fn.source or fn.signature_text)
        else:
            doc += f"\n(its code is the trainable variable {fn.code.name})"
        return OpDescription(name=fn.name, args=list(ctx.args), doc=doc,
                             note=f"runs {fn.code.name}" if fn.code is not None else "")

    async def backward(self, ctx: OpContext, output: Variable, feedback: Feedback, engine: Engine) -> Mapping[Variable, str]:
        targets = [p for p in output.parents if p.requires_grad]
        code = ctx.saved["code"]

        async def one(target: Variable) -> str:
            messages = render_messages(
                "trace_backward.j2",
                fn_name=self.traced.name,
                description=self.traced.description,
                code=ctx.saved["source"] or self.traced.signature_text,
                args=[(k, v.name if isinstance(v, Variable) else None, as_text(v.value if isinstance(v, Variable) else v))
                      for k, v in ctx.args],
                output=output,
                is_error=ctx.error is not None,
                feedback=feedback,
                target=target,
                target_is_code=target is code,
                limit=SHOWN_CHARS,
            )
            return (await engine.acomplete(messages)).text.strip()

        texts = await asyncio.gather(*(one(t) for t in targets))
        return dict(zip(targets, texts))


class Traced:
    """A Python function recorded in the graph on every call (what `@trace` returns; its op is `.op`)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        trainable: bool = False,
        timeout: float | None = None,
        isolation: str | Sandbox | None = None,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@trace decorates a function, got {type(fn).__name__}")
        if isinstance(fn, (staticmethod, classmethod)):
            raise TypeError("put @trace below @staticmethod/@classmethod, directly on the function")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.fn = fn
        self.name = name or fn.__name__
        self.description = (description or inspect.getdoc(fn) or "").strip()
        self.trainable = trainable
        if trainable or isolation is not None:
            isolation = check_isolation(isolation, trainable=trainable, timeout=timeout)
        self.isolation = isolation or "none"  # "process" | a Sandbox | "thread" | "none"
        self.timeout = timeout if timeout is not None else (DEFAULT_TIMEOUT if trainable and self.isolation != "none" else None)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.signature = inspect.signature(fn)
        simple = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        self._positional = [k for k, prm in self.signature.parameters.items() if prm.kind in simple]
        self._positional_only_simple = all(prm.kind in simple for prm in self.signature.parameters.values())
        self.signature_text = f"{'async ' if self.is_async else ''}def {fn.__name__}{self.signature}: ..."
        found = find_source(fn)
        self.source: str | None = found[0] if found else None
        self._filename, self._firstline = (found[1], found[2]) if found else (getattr(fn.__code__, "co_filename", ""), 0)
        self.code: CodeVariable | None = None
        if trainable:
            if self.source is None:
                raise TraceError(
                    f"can't read the source code of {fn.__name__!r} (functions typed into a plain python REPL keep "
                    "none), so it can't be trainable; define it in a file or a notebook cell",
                    Variable("no source", role="error"),
                )
            self.code = CodeVariable(
                self.source,
                function_name=fn.__name__,
                is_async=self.is_async,
                role=f"Python source code of the function {self.name}",
                name=f"code_{self.name}",
            )
        self._compiled: tuple[str, Callable[..., Any]] | None = None
        self.op = TracedCall(self)
        functools.update_wrapper(self, fn)

    def __repr__(self) -> str:
        return f"<traced {'trainable ' if self.trainable else ''}function {self.name}>"

    def __get__(self, obj: Any, objtype: Any = None) -> Any:  # methods: bind self as a plain argument
        if obj is None:
            return self
        return functools.partial(self.__call__, obj)

    def parameters(self) -> list[Variable]:
        """[the code Variable] when trainable, else []."""
        return [self.code] if self.code is not None else []

    # -- body selection ---------------------------------------------------------------------
    def _source(self) -> str | None:
        """The code that runs now: the current value of the code Variable when trainable."""
        return self.code.value if self.code is not None else self.source

    def _body(self) -> Callable[..., Any]:
        """The callable to run (the current code, compiled on first use, when trainable)."""
        src = self._source()
        if self.code is None or src == self.source:
            return self.fn
        if self._compiled is None or self._compiled[0] != src:
            self._compiled = (src, self._compile(src))
        return self._compiled[1]

    def _compile(self, src: str) -> Callable[..., Any]:
        """Build the trainable function from its (checked) code, with the original's globals and closure values."""
        # One namespace (a copy of the original's globals plus its closure values): the new code's own top-level
        # imports and helpers land where its function looks them up (with separate globals/locals they didn't).
        ns: dict[str, Any] = dict(self.fn.__globals__)
        if self.fn.__closure__:
            ns.update({k: c.cell_contents for k, c in zip(self.fn.__code__.co_freevars, self.fn.__closure__)})
        exec(compile(src, f"<textopt-code:{self.name}>", "exec"), ns)
        return ns[self.fn.__name__]

    # -- calling ----------------------------------------------------------------------------
    def _bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[tuple[str, Any]], tuple, dict, list[Variable]]:
        if not kwargs and len(args) == len(self._positional) and self._positional_only_simple:  # fast path
            shown = list(zip(self._positional, args))
            parents = []
            for a in args:
                if isinstance(a, Variable) and all(a is not p for p in parents):
                    parents.append(a)
            return shown, tuple(a.value if isinstance(a, Variable) else a for a in args), {}, parents
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.name}{self.signature}: {exc}") from None
        shown: list[tuple[str, Any]] = []
        parents: list[Variable] = []
        for key, val in bound.arguments.items():
            kind = self.signature.parameters[key].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                for i, v in enumerate(val):
                    shown.append((f"{key}[{i}]", v))
            elif kind is inspect.Parameter.VAR_KEYWORD:
                shown.extend((k, v) for k, v in val.items())
            else:
                shown.append((key, val))
        for _, v in shown:
            if isinstance(v, Variable) and all(v is not p for p in parents):
                parents.append(v)
        plain_args = tuple(a.value if isinstance(a, Variable) else a for a in bound.args)
        plain_kwargs = {k: (v.value if isinstance(v, Variable) else v) for k, v in bound.kwargs.items()}
        return shown, plain_args, plain_kwargs, parents

    def _prepare(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[Variable], OpContext]:
        """The op's inputs (Variable arguments, then the code when trainable) and the call's context."""
        shown, pargs, pkwargs, parents = self._bind(args, kwargs)
        if self.code is not None:
            parents = [*parents, self.code]
        ctx = OpContext(args=shown, saved={"source": self._source(), "code": self.code, "call": (pargs, pkwargs)})
        return parents, ctx

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Call with Variables and/or plain values; returns a Variable (a coroutine for async functions)."""
        if self.is_async:
            return self.acall(*args, **kwargs)
        return self.op.apply_sync(*self._prepare(args, kwargs))

    async def acall(self, *args: Any, **kwargs: Any) -> Variable:
        """The async path: awaits async bodies; sync bodies of trainable code run off the loop with the time limit."""
        return await self.op.apply(*self._prepare(args, kwargs))

    # -- error text -------------------------------------------------------------------------
    def _annotate(self, exc: BaseException, source: str | None) -> str:
        """The exception, and the function's code with the failing line marked `>>`."""
        frames = getattr(exc, "textopt_frames", None) or traceback.extract_tb(exc.__traceback__)  # set by the sandbox
        compiled_name = f"<textopt-code:{self.name}>"
        line_in_source: int | None = None
        deeper: list[str] = []
        for fr in frames:
            if fr.filename == compiled_name and fr.lineno:
                line_in_source, deeper = fr.lineno, []
            elif fr.filename == self._filename and self._firstline and source and fr.lineno is not None and \
                    self._firstline <= fr.lineno < self._firstline + source.count("\n") + 1 and fr.name == self.fn.__name__:
                line_in_source, deeper = fr.lineno - self._firstline + 1, []
            elif line_in_source is not None:
                deeper.append(f'  File "{fr.filename}", line {fr.lineno}, in {fr.name}: {(fr.line or "").strip()}')
        what = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        if isinstance(exc, TimeoutError) and "did not finish" in str(exc):
            what = f"TimeoutError: {exc}"
        out = [f"The call of {self.name} failed with {what}"]
        if source:
            lines = source.splitlines()
            width = len(str(len(lines)))
            out.append(f"Code of {self.name} (>> marks the line that raised):" if line_in_source else f"Code of {self.name}:")
            for i, line in enumerate(lines, 1):
                mark = ">>" if i == line_in_source else "  "
                out.append(f"{mark} {i:>{width}} | {line}")
        if deeper:
            out.append("Raised further down, in code called from that line:")
            out.extend(deeper[-5:])
        return "\n".join(out)


def trace(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    trainable: bool = False,
    timeout: float | None = None,
    isolation: str | Sandbox | None = None,
) -> Any:
    """Record every call of a Python function in the graph. `@trace`, or `@trace(name=, description=,
    trainable=, timeout=)`. trainable=True makes the source code a Variable an optimizer can rewrite;
    its calls then run with a time limit (`timeout` seconds, default DEFAULT_TIMEOUT) in a worker process
    (`isolation="process"`, or a textopt.sandbox.Sandbox for other limits); `isolation="thread"` or `"none"`
    runs them in this process (see textopt/sandbox/ for what each protects against)."""
    def wrap(f: Callable[..., Any]) -> Traced:
        return Traced(f, name=name, description=description, trainable=trainable, timeout=timeout, isolation=isolation)

    if fn is None:
        return wrap
    return wrap(fn)
