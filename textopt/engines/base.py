"""The engine contract: one request/response model, an async path that is the real one, a sync wrapper.

Every provider implements `_acomplete`. The base class owns what must be the same everywhere: the disk
cache, one provider call for identical requests in flight, the concurrency limit, time limits, retries
with backoff on transient errors only, token and dollar usage, a bounded history, and budgets.

Every provider call runs on the one textopt event loop (`textopt._sync`): sync callers submit to it, and
async callers on their own loops hand their calls over to it. So an engine has one client, one connection
pool and one `max_concurrency` limit for its life, whoever calls it and from whichever thread.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import dataclasses
import functools
import threading
import time
from typing import Any, Callable, ClassVar, Sequence, TypeVar

from .. import image
from .._sync import run_on_textopt_loop, run_sync, sync_twin
from ..errors import AuthenticationFailed, BudgetExceeded, EngineError, EngineUnavailable
from . import pricing
from .cache import DiskCache, Draws
from .inflight import InFlight
from .retry import call_with_retries
from .types import Completion, Message, Request
from .usage import Usage, active_trackers

T = TypeVar("T")
_account_lock = threading.Lock()


class Engine:
    """Base class of every engine. Subclasses set `kind` and implement `_acomplete`.

    max_concurrency bounds the calls in flight across all callers (sync, async, any thread); cache is True
    (default folder), False (off), a path, or a DiskCache. timeout bounds one attempt and max_time all
    attempts and backoff waits together (seconds; None: no limit). budget_tokens / budget_usd stop further
    calls with BudgetExceeded once spent.
    """

    kind: ClassVar[str] = "base"
    #: True when `_acomplete` enforces `json_schema` on the reply (grammar or structured outputs).
    supports_json_schema: ClassVar[bool] = False
    #: True for engines that cost nothing per call (local models, scripts): their calls are priced $0.
    free: ClassVar[bool] = False
    #: Exceptions worth retrying are decided by `is_transient`; everything else fails at once.
    retries: int = 4
    #: After this many provider calls in a row fail for good with the server unreachable or the key refused,
    #: every further call raises EngineUnavailable at once (a run stops instead of scoring failures).
    unreachable_after: int = 3

    def __init__(
        self,
        model: str = "",
        *,
        max_concurrency: int = 8,
        cache: bool | str | DiskCache = True,
        retries: int | None = None,
        retry_wait: float = 1.0,
        timeout: float | None = None,
        max_time: float | None = None,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        budget_tokens: int | None = None,
        budget_usd: float | None = None,
        history_size: int = 1000,
        supports_images: bool | None = None,
    ) -> None:
        _check_limits(max_concurrency, timeout, max_time)
        self.model = model
        self.max_concurrency = max_concurrency
        self.cache: DiskCache | None = _as_cache(cache)
        if retries is not None:
            self.retries = retries
        self.retry_wait = retry_wait
        self.timeout = timeout
        self.max_time = max(max_time, timeout) if max_time is not None and timeout is not None else max_time
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.budget_tokens = budget_tokens
        self.budget_usd = budget_usd
        pricing.check_budget_usd(budget_usd, self.free)  # a paid engine without litellm: refused before any call
        self.usage = Usage()
        self.history: collections.deque[tuple[Request, Completion]] = collections.deque(maxlen=history_size)
        self._supports_images = supports_images
        self._inflight: InFlight[Completion] = InFlight()
        self._draws = Draws()
        self._semaphore: tuple[asyncio.AbstractEventLoop, asyncio.Semaphore] | None = None
        self._workers: concurrent.futures.ThreadPoolExecutor | None = None
        self._dead_calls = 0  # provider calls in a row that failed unreachable / key refused
        self._dead_reason = ""

    # -- what subclasses implement ------------------------------------------------------------
    async def _acomplete(self, request: Request) -> Completion:
        raise NotImplementedError

    def is_transient(self, exc: BaseException) -> bool:
        """True for errors a retry can fix: rate limits, timeouts, connection errors, 5xx."""
        return isinstance(exc, (TimeoutError, ConnectionError, asyncio.TimeoutError))

    async def aready(self) -> None:
        """One cheap check that this engine can answer (key, reachability, model name), made before a run
        spends anything, so a missing key or a dead server is one line instead of a run of failed calls.
        Raises textopt.errors.EngineNotReady naming the engine, the cause and the fix. The default checks
        nothing (engines with nothing to check: fake, scripted); providers override it."""

    def ready(self) -> None:
        """Sync wrapper of `aready`."""
        run_sync(self.aready())

    def cache_identity(self) -> dict[str, Any]:
        """What, besides the request, decides the answer (never a secret)."""
        return {"kind": self.kind, "model": self.model}

    def secrets(self) -> list[str]:
        """Configured credentials to mask in errors (environment keys are masked anyway)."""
        return []

    @property
    def supports_images(self) -> bool:
        """Whether messages may hold images (textopt.image.Image). supports_images= at construction overrides
        the engine's own default (`images_by_default`); an image sent anyway fails before any call."""
        return self._supports_images if self._supports_images is not None else self.images_by_default()

    @supports_images.setter
    def supports_images(self, value: bool | None) -> None:
        self._supports_images = value

    def images_by_default(self) -> bool:
        """Default of `supports_images` for this engine and model (False: text only)."""
        return False

    def price_models(self, completion: Completion) -> list[str]:
        """Names to look the price up under in litellm's cost map, best first."""
        return [completion.model, self.model]

    async def _in_worker(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking provider work in this engine's own threads. Not the loop's default executor
        (`asyncio.to_thread`): sync callers run in those threads while they wait for this very call."""
        with _account_lock:
            if self._workers is None:
                self._workers = concurrent.futures.ThreadPoolExecutor(self.max_concurrency, f"textopt-{self.kind}")
        call = functools.partial(contextvars.copy_context().run, fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self._workers, call)

    # -- the public entry points --------------------------------------------------------------
    async def acomplete(
        self,
        messages: Sequence[Message],
        *,
        json_schema: dict[str, Any] | None = None,
        **options: Any,
    ) -> Completion:
        """Send chat `messages`; with `json_schema`, ask for (and where possible enforce) that JSON shape."""
        msgs = [{"role": str(m["role"]), "content": image.content(m["content"])} for m in messages]
        if not msgs:
            raise ValueError("acomplete needs at least one message")
        if image.has_images(msgs) and not self.supports_images:
            raise image.not_supported(self)
        opts = {"temperature": self.temperature, "max_tokens": self.max_tokens}
        opts.update(options)
        payload = {**self.cache_identity(), "messages": image.key_messages(msgs), "json_schema": json_schema, "options": opts}
        draw, key = self._draws.take(payload, sampled=float(opts.get("temperature") or 0) > 0)
        request = Request(messages=msgs, json_schema=json_schema, options=opts, draw=draw)
        if self.cache is not None:
            hit = self._cached(key)
            if hit is not None:
                self._account(request, hit)
                return hit

        await self._check_budget()
        self._check_reachable()
        completion = await run_on_textopt_loop(self._provider_call(request, key if self.cache is not None else None))
        self._account(request, completion)
        return completion

    complete = sync_twin(acomplete, "Sync `acomplete`: runs on the textopt loop (from any thread, notebooks included).")

    # -- internals (the provider side runs on the textopt loop) ------------------------------
    def _cached(self, key: str) -> Completion | None:
        assert self.cache is not None
        hit = self.cache.get(key)
        if hit is None or not isinstance(hit.get("text"), str):
            return None
        return Completion(
            text=hit["text"],
            prompt_tokens=int(hit.get("prompt_tokens", 0)),
            completion_tokens=int(hit.get("completion_tokens", 0)),
            cached=True,
            model=hit.get("model", self.model),
            cost_usd=0.0,
        )

    async def _provider_call(self, request: Request, key: str | None) -> Completion:
        if key is None:
            return await self._fresh(request, None)
        completion, shared = await self._inflight.run(key, lambda: self._fresh(request, key))
        if shared:  # another caller's identical request paid for it: like a cache hit
            return dataclasses.replace(completion, cached=True, cost_usd=0.0, seconds=0.0)
        return completion

    async def _fresh(self, request: Request, key: str | None) -> Completion:
        async with self._loop_semaphore():
            self._check_reachable()  # calls queued behind the ones that found the server gone don't try again
            started = time.perf_counter()
            try:
                completion = await call_with_retries(self, request)
            except EngineError as exc:
                if is_unreachable(exc):
                    self._dead_calls += 1
                    self._dead_reason = str(exc)
                else:
                    self._dead_calls = 0  # the server answered, if with an error
                raise
            self._dead_calls = 0
        completion.seconds = time.perf_counter() - started
        completion.cost_usd = await self._cost(completion)
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
        return completion

    def _check_reachable(self) -> None:
        if self._dead_calls >= self.unreachable_after:
            raise EngineUnavailable(
                f"{self.kind} engine {self.model!r} answered none of its last {self._dead_calls} calls, so the run "
                f"stops here (resume it once the cause is fixed); the last error: {self._dead_reason[:400]}")

    def _loop_semaphore(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._semaphore[0] is not loop:  # a new textopt loop only after a fork
            self._semaphore = (loop, asyncio.Semaphore(self.max_concurrency))
        return self._semaphore[1]

    async def _cost(self, completion: Completion) -> float | None:
        if self.free:
            return 0.0
        if not pricing.loaded():  # the first lookup reads a 3 MB file: keep the loop free meanwhile
            await self._in_worker(pricing.cost_map)
        return pricing.cost_usd(self.price_models(completion), completion.prompt_tokens, completion.completion_tokens)

    async def _check_budget(self) -> None:
        if self.budget_tokens is not None and self.usage.total_tokens >= self.budget_tokens:
            raise BudgetExceeded(
                f"token budget of {self.budget_tokens} reached on {self.kind} engine {self.model!r} "
                f"({self.usage.total_tokens} spent); raise budget_tokens to go on"
            )
        if self.budget_usd is None or self.free:
            return
        if not pricing.loaded():
            await self._in_worker(pricing.cost_map)
        if not self.usage.cost_known or pricing.cost_usd([self.model], 0, 0) is None:
            raise BudgetExceeded(
                f"budget_usd={self.budget_usd} can't be held on {self.kind} engine {self.model!r}: "
                f"{pricing.unknown_cost_reason()}; use budget_tokens instead"
            )
        if self.usage.cost_usd >= self.budget_usd:
            raise BudgetExceeded(
                f"dollar budget of ${self.budget_usd:g} reached on {self.kind} engine {self.model!r} "
                f"(${self.usage.cost_usd:.4f} spent); raise budget_usd to go on"
            )

    def _account(self, request: Request, completion: Completion) -> None:
        with _account_lock:  # callers on several threads may finish at once
            for usage in (self.usage, *active_trackers()):
                usage.add(completion.prompt_tokens, completion.completion_tokens, completion.cached, completion.cost_usd,
                          seconds=completion.seconds)
        self.history.append((request, completion))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"


#: Exception types (by name: provider SDKs are optional) meaning no server answered the call.
UNREACHABLE_TYPES = frozenset({"APIConnectionError", "ConnectionRefusedError", "ClientConnectorError", "ConnectError",
                               "ConnectionError", "ConnectionResetError", "ServerDisconnectedError"})


def _check_limits(max_concurrency: int, timeout: float | None, max_time: float | None) -> None:
    if max_concurrency < 1:
        raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
    for name, value in (("timeout", timeout), ("max_time", max_time)):
        if value is not None and value <= 0:
            raise ValueError(f"{name} must be a positive number of seconds or None, got {value!r}")


def _as_cache(cache: "bool | str | DiskCache | None") -> DiskCache | None:
    """cache=True: the default disk cache; False/None: none; a DiskCache as is; a path: a cache there."""
    if cache is True:
        return DiskCache()
    if cache is False or cache is None:
        return None
    return cache if isinstance(cache, DiskCache) else DiskCache(cache)


def is_unreachable(exc: BaseException) -> bool:
    """True for a failed call that says nothing answers (connection refused / reset) or the key is refused
    (401/403): a run that goes on would only record the same failure for every call."""
    if isinstance(exc, AuthenticationFailed) or getattr(exc, "status_code", None) in (401, 403):
        return True
    if getattr(exc, "unreachable", False):  # e.g. a local model whose worker process crashed
        return True
    return getattr(exc, "cause_type", None) in UNREACHABLE_TYPES
