"""The engine contract: one request/response model, an async path that is the real one, a sync wrapper.

Every provider implements `_acomplete`. The base class owns what must be the same everywhere:
the concurrency limit, the disk cache, retries with backoff on transient errors only, token
usage, a bounded history, and an optional token budget.
"""
from __future__ import annotations

import asyncio
import collections
import copy
import weakref
from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from .._sync import run_sync
from ..errors import BudgetExceeded, EngineError
from .cache import DiskCache, cache_key
from .usage import Usage, active_trackers

Message = dict[str, str]


@dataclass
class Completion:
    """What an engine returns: the text, the tokens it cost, and whether the cache served it."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    model: str = ""


@dataclass
class Request:
    """What was asked: chat messages plus the options that change the answer."""

    messages: list[Message]
    json_schema: dict[str, Any] | None = None
    options: dict[str, Any] = field(default_factory=dict)


class Engine:
    """Base class of every engine. Subclasses set `kind` and implement `_acomplete`.

    max_concurrency bounds the calls in flight per event loop; cache is True (default folder),
    False (off), a path, or a DiskCache; budget_tokens stops further calls once spent.
    """

    kind: ClassVar[str] = "base"
    #: True when `_acomplete` enforces `json_schema` on the reply (grammar or structured outputs).
    supports_json_schema: ClassVar[bool] = False
    #: Exceptions worth retrying are decided by `is_transient`; everything else fails at once.
    retries: int = 4

    def __init__(
        self,
        model: str = "",
        *,
        max_concurrency: int = 8,
        cache: bool | str | DiskCache = True,
        retries: int | None = None,
        retry_wait: float = 1.0,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        budget_tokens: int | None = None,
        history_size: int = 1000,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        self.model = model
        self.max_concurrency = max_concurrency
        if cache is True:
            self.cache: DiskCache | None = DiskCache()
        elif cache is False or cache is None:
            self.cache = None
        elif isinstance(cache, DiskCache):
            self.cache = cache
        else:
            self.cache = DiskCache(cache)
        if retries is not None:
            self.retries = retries
        self.retry_wait = retry_wait
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.budget_tokens = budget_tokens
        self.usage = Usage()
        self.history: collections.deque[tuple[Request, Completion]] = collections.deque(maxlen=history_size)
        self._semaphores: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    # -- what subclasses implement ------------------------------------------------------------
    async def _acomplete(self, request: Request) -> Completion:
        raise NotImplementedError

    def is_transient(self, exc: BaseException) -> bool:
        """True for errors a retry can fix: rate limits, timeouts, connection errors, 5xx."""
        return isinstance(exc, (TimeoutError, ConnectionError, asyncio.TimeoutError))

    def cache_identity(self) -> dict[str, Any]:
        """What, besides the request, decides the answer (never a secret)."""
        return {"kind": self.kind, "model": self.model}

    # -- the public entry points --------------------------------------------------------------
    async def acomplete(
        self,
        messages: Sequence[Message],
        *,
        json_schema: dict[str, Any] | None = None,
        **options: Any,
    ) -> Completion:
        """Send chat `messages`; with `json_schema`, ask for (and where possible enforce) that JSON shape."""
        msgs = [{"role": str(m["role"]), "content": str(m["content"])} for m in messages]
        if not msgs:
            raise ValueError("acomplete needs at least one message")
        opts = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        opts.update(options)
        request = Request(messages=msgs, json_schema=json_schema, options=opts)

        key = None
        if self.cache is not None:
            key = cache_key({**self.cache_identity(), "messages": msgs, "json_schema": json_schema, "options": opts})
            hit = self.cache.get(key)
            if hit is not None and isinstance(hit.get("text"), str):
                completion = Completion(
                    text=hit["text"],
                    prompt_tokens=int(hit.get("prompt_tokens", 0)),
                    completion_tokens=int(hit.get("completion_tokens", 0)),
                    cached=True,
                    model=hit.get("model", self.model),
                )
                self._account(request, completion)
                return completion

        self._check_budget()
        async with self._semaphore():
            completion = await self._with_retries(request)
        if key is not None and self.cache is not None:
            self.cache.set(
                key,
                {
                    "text": completion.text,
                    "prompt_tokens": completion.prompt_tokens,
                    "completion_tokens": completion.completion_tokens,
                    "model": completion.model,
                },
            )
        self._account(request, completion)
        return completion

    def complete(self, messages: Sequence[Message], *, json_schema: dict[str, Any] | None = None, **options: Any) -> Completion:
        """Sync wrapper of `acomplete` (works inside a running event loop too)."""
        return run_sync(self.acomplete(messages, json_schema=json_schema, **options))

    # -- internals ----------------------------------------------------------------------------
    def _semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        sem = self._semaphores.get(loop)
        if sem is None:
            sem = asyncio.Semaphore(self.max_concurrency)
            self._semaphores[loop] = sem
        return sem

    async def _with_retries(self, request: Request) -> Completion:
        from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random

        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception(self.is_transient),
                stop=stop_after_attempt(self.retries + 1),
                wait=wait_exponential(multiplier=self.retry_wait, max=30 * self.retry_wait) + wait_random(0, self.retry_wait),
                reraise=True,
            ):
                with attempt:
                    return await self._acomplete(copy.deepcopy(request))
        except EngineError:
            raise
        except Exception as exc:
            transient = self.is_transient(exc)
            what = f"after {self.retries + 1} attempts" if transient else "(not retried: the same request would fail again)"
            raise EngineError(
                f"{self.kind} engine {self.model!r} failed {what}: {type(exc).__name__}: {exc}. "
                + (
                    "The provider looks unavailable; check the server or try again later. Nothing was lost: "
                    "variables keep their last good values."
                    if transient
                    else "Check the model name, credentials and request options."
                )
            ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _check_budget(self) -> None:
        if self.budget_tokens is not None and self.usage.total_tokens >= self.budget_tokens:
            raise BudgetExceeded(
                f"token budget of {self.budget_tokens} reached on {self.kind} engine {self.model!r} "
                f"({self.usage.total_tokens} spent); raise budget_tokens to go on"
            )

    def _account(self, request: Request, completion: Completion) -> None:
        for usage in (self.usage, *active_trackers()):
            usage.add(completion.prompt_tokens, completion.completion_tokens, completion.cached)
        self.history.append((request, completion))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"

