"""Exceptions that name what went wrong and what to do about it."""
from __future__ import annotations


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


class EngineAuthError(EngineError):
    """The provider refused the credentials (401/403): every further call would fail the same way."""


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
