"""Any provider litellm knows. litellm is imported only when this engine is built."""
from __future__ import annotations

from typing import Any

from ..secrets import remember, scrub_url, url_credentials
from ..image import openai_messages
from .base import Completion, Engine, Request
from .openai import DEFAULT_MAX_TIME, DEFAULT_TIMEOUT
from .pricing import import_litellm


class LiteLLMEngine(Engine):
    """`litellm.acompletion` with our retries (litellm's own are off). Extra kwargs (api_base, api_key)
    are passed through to litellm on every call and never enter the cache key. timeout (s, per attempt)
    and max_time (s, all attempts) default to 60 and 110."""

    kind = "litellm"
    supports_json_schema = True

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_time: float | None = DEFAULT_MAX_TIME,
        **kwargs: Any,
    ) -> None:
        litellm = import_litellm("the litellm engine")  # before anything else: a missing extra is one clear line
        super().__init__(model, timeout=timeout, max_time=max_time, **kwargs)
        self._litellm = litellm
        self.api_base = api_base
        self._api_key = api_key
        remember(api_key, *url_credentials(api_base))  # masked wherever textopt writes

    def cache_identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "api_base": scrub_url(self.api_base)}

    def secrets(self) -> list[str]:
        return [self._api_key] if self._api_key else []

    def images_by_default(self) -> bool:
        """What litellm's model map says about this model (unknown models: text only; supports_images=True overrides)."""
        try:
            return bool(self._litellm.supports_vision(model=self.model))
        except Exception:  # noqa: BLE001 - an unknown model or an older litellm: treat as text only
            return False

    def is_transient(self, exc: BaseException) -> bool:
        ll = self._litellm
        transient = tuple(
            t
            for t in (
                getattr(ll, "RateLimitError", None),
                getattr(ll, "Timeout", None),
                getattr(ll, "APIConnectionError", None),
                getattr(ll, "InternalServerError", None),
                getattr(ll, "ServiceUnavailableError", None),
            )
            if isinstance(t, type)
        )
        if transient and isinstance(exc, transient):
            return True
        status = getattr(exc, "status_code", None)
        if isinstance(status, int):
            return status >= 500 or status == 429
        return super().is_transient(exc)

    def _kwargs(self, request: Request) -> dict[str, Any]:
        kwargs: dict[str, Any] = {k: v for k, v in request.options.items() if v is not None}
        if self.api_base:
            kwargs["api_base"] = self.api_base
        if self._api_key:
            kwargs["api_key"] = self._api_key
        if request.timeout is not None:
            kwargs["timeout"] = request.timeout
        if request.json_schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": request.json_schema, "strict": True},
            }
        return kwargs

    async def _acomplete(self, request: Request) -> Completion:
        resp = await self._litellm.acompletion(model=self.model, messages=openai_messages(request.messages), num_retries=0,
                                               **self._kwargs(request))
        return self._completion(resp)

    def _completion(self, resp: Any) -> Completion:
        text = resp.choices[0].message.content or ""
        usage = getattr(resp, "usage", None)
        return Completion(
            text=text,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            model=getattr(resp, "model", None) or self.model,
        )
