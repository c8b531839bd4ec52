"""Exceptions that name what went wrong and what to do about it."""
from __future__ import annotations

import re
from typing import Any


class TextoptError(Exception):
    """Base class of every textopt error."""


class GraphError(TextoptError):
    """The computation graph can't be used as it is (a cycle, a value an op can't take)."""


class EngineError(TextoptError):
    """A provider call failed for good (after retries where retrying made sense).

    The message is scrubbed of keys and URL credentials, and the provider's exception is not chained
    (it may echo the key): `cause_type`, `status_code` and `transient` say what it was.
    """

    def __init__(
        self,
        message: str = "",
        *,
        cause_type: str | None = None,
        status_code: int | None = None,
        transient: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.cause_type = cause_type
        self.status_code = status_code
        self.transient = transient


class AuthenticationFailed(EngineError):
    """The provider refused the credentials (401/403): every further call would fail the same way, so a run
    stops instead of spending on calls that can't help."""


class EngineNotReady(TextoptError):
    """An engine's readiness check (`Engine.aready`) failed before a run spent anything: no key, nothing
    listening at the address, a refused key or an unknown model. The message is one line: engine, cause, fix."""


class EngineUnavailable(TextoptError):
    """The provider answered none of an engine's last few calls (connection refused, key refused), so the
    run stops instead of scoring failures as results. Not an EngineError on purpose: code that records an
    EngineError as one failed call and goes on (optimizers, evaluation) must let this one through. (A local
    model's crashed worker is both: one EngineError to an interactive caller, a stop to a run, so that a
    resumed run gives the result an uncrashed one would have.)"""


class BudgetExceeded(TextoptError):
    """A token or call budget was reached; the run should stop cleanly."""


class ParseError(TextoptError):
    """An LLM reply could not be turned into the structure we asked for."""

    def __init__(self, message: str, reply: str = "") -> None:
        super().__init__(message)
        self.reply = reply


class UpdateError(TextoptError):
    """An optimizer could not produce a usable new value (raised only in strict mode)."""


class RunError(TextoptError):
    """A run directory can't be used as asked (in use, corrupt, not a run). The message says what to do."""


class RunLocked(RunError):
    """Another run holds the directory's lock."""


class CodeNeeded(RunError, TypeError):
    """A run made in Python was resumed without its code (forward, loss, optimizer, data): only the caller has it."""


class CheckpointError(RunError):
    """No readable checkpoint (neither the newest nor its backup)."""


def is_auth_error(error: Any) -> bool:
    """True for a provider's 401/403 (an exception, its cause, or the text of a recorded failure)."""
    seen = 0
    while isinstance(error, BaseException) and seen < 5:
        if isinstance(error, AuthenticationFailed):
            return True
        for attr in ("status", "status_code", "http_status"):
            if getattr(error, attr, None) in (401, 403):
                return True
        if type(error).__name__ in ("AuthenticationError", "PermissionDeniedError"):
            return True
        nxt = error.__cause__ or error.__context__
        if nxt is None:
            error = str(error)
            break
        error, seen = nxt, seen + 1
    text = str(getattr(error, "error", error))
    return bool(re.search(r"AuthenticationError|PermissionDeniedError|\b(?:Error code|status(?: code)?|HTTP)\W{0,3}(?:401|403)\b"
                          r"|\b401 Unauthorized\b|\b403 Forbidden\b|[Ii]ncorrect API key|[Ii]nvalid API key", text))
