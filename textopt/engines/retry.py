"""One provider call with the engine's policy: a time limit per attempt and overall, retries with backoff
on transient errors only, and a scrubbed EngineError when it fails for good."""
from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from typing import Any

from ..errors import AuthenticationFailed, EngineError
from ..secrets import scrub
from .types import Completion, Request


#: An attempt never gets less than this, even when the overall limit is nearly spent.
MIN_ATTEMPT_SECONDS = 0.5


def attempt_limit(engine: Any, started: float) -> float | None:
    """Seconds this attempt may take: the engine's timeout, cut to what is left of max_time."""
    limits = [t for t in (engine.timeout,) if t is not None]
    if engine.max_time is not None:
        limits.append(max(MIN_ATTEMPT_SECONDS, engine.max_time - (time.monotonic() - started)))
    return min(limits) if limits else None


def attempt_request(request: Request, limit: float | None) -> Request:
    """The request one attempt sends: a copy, so a provider that changes it can't change the caller's (whose
    messages are the cache key and the history). Text messages and plain options are copied one level, which
    for strings and numbers is all a deep copy would do; anything else (images, lists) is copied deeply."""
    messages = [m.copy() if _atoms(m) else copy.deepcopy(m) for m in request.messages]
    options = request.options.copy() if _atoms(request.options) else copy.deepcopy(request.options)
    schema = copy.deepcopy(request.json_schema) if request.json_schema is not None else None
    return dataclasses.replace(request, messages=messages, options=options, json_schema=schema, timeout=limit)


def _atoms(d: dict[str, Any]) -> bool:
    return all(v is None or type(v) in _ATOMS for v in d.values())


_ATOMS = (str, int, float, bool)


async def one_attempt(engine: Any, request: Request, limit: float | None) -> Completion:
    req = attempt_request(request, limit)
    if limit is None:
        return await engine._acomplete(req)
    try:
        async with asyncio.timeout(limit):
            return await engine._acomplete(req)
    except TimeoutError as exc:
        if str(exc):
            raise
        raise TimeoutError(f"no reply within {limit:g} s") from None


async def call_with_retries(engine: Any, request: Request) -> Completion:
    """`engine._acomplete(request)` under the engine's timeout, max_time and retry policy.

    The first attempt is made directly: setting up tenacity costs more CPU than the rest of a call's own
    bookkeeping, and most calls succeed at once. A first attempt that fails is handed to the same tenacity
    loop as its first attempt (re-raised there, not sent again), so which errors are retried, how often,
    how long it waits and when it stops are exactly as if tenacity had made it."""
    started = time.monotonic()
    try:
        return await one_attempt(engine, request, attempt_limit(engine, started))
    except Exception as exc:  # EngineError included: tenacity below decides, as it always did
        first: Exception | None = exc
    from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential, wait_random  # tenacity loads on the first provider call

    stop: Any = stop_after_attempt(engine.retries + 1)
    if engine.max_time is not None:
        max_time = engine.max_time
        stop = stop | (lambda rs: time.monotonic() - started + (getattr(rs, "upcoming_sleep", 0) or 0) >= max_time)
    attempts = 0
    try:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(engine.is_transient),
            stop=stop,
            wait=wait_exponential(multiplier=engine.retry_wait, max=30 * engine.retry_wait) + wait_random(0, engine.retry_wait),
            reraise=True,
        ):
            with attempt:
                attempts += 1
                if first is not None:  # the direct first attempt's failure, as tenacity's attempt 1
                    failed, first = first, None
                    raise failed
                return await one_attempt(engine, request, attempt_limit(engine, started))
    except EngineError:
        raise
    except Exception as exc:
        error = engine_error(engine, exc, attempts, time.monotonic() - started)
    raise error  # raised outside the except block: the provider's exception (which may echo a key) isn't chained


def engine_error(engine: Any, exc: BaseException, attempts: int, seconds: float) -> EngineError:
    """A one-paragraph, scrubbed EngineError saying what failed and what to do."""
    transient = engine.is_transient(exc)
    status = getattr(exc, "status_code", None)
    status = status if isinstance(status, int) else None
    auth = status in (401, 403)
    if transient:
        what = f"after {attempts} attempt{'s' * (attempts != 1)} in {seconds:.1f} s"
        advice = ("The provider looks unavailable or slow; check the server and its address (--base-url on the "
                  "command line), give it longer (timeout=/max_time= of the engine in Python), or try again later. "
                  "Nothing was lost: variables keep their last good values.")
    else:
        what = "(not retried: the same request would fail again)"
        advice = ("The provider refused the credentials: check the API key." if auth
                  else "Check the model name, credentials and request options.")
    message = f"{engine.kind} engine {engine.model!r} failed {what}: {type(exc).__name__}: {exc}. {advice}"
    cls = AuthenticationFailed if auth else EngineError
    return cls(scrub(message, engine.secrets()), cause_type=type(exc).__name__, status_code=status, transient=transient)
