"""Any provider litellm knows. litellm is imported only when this engine is built."""
from __future__ import annotations

from typing import Any

from ..errors import EngineNotReady
from ..image import openai_messages
from ..secrets import remember, scrub_url, url_credentials
from .base import Engine
from .openai import DEFAULT_MAX_TIME, DEFAULT_TIMEOUT
from .pricing import import_litellm
from .types import Completion, Request


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

    async def aready(self) -> None:
        """No call: litellm knows the model's provider, and the key that provider needs is set (or passed).
        A key that is set but wrong shows on the first calls (the run stops after a few refused ones)."""
        head = f"litellm engine {self.model!r}"
        try:
            self._litellm.get_llm_provider(self.model, api_base=self.api_base)
        except Exception as exc:  # noqa: BLE001 - litellm raises its own BadRequestError here
            raise EngineNotReady(f"{head}: litellm can't tell the provider of this model ({' '.join(str(exc).split())[:160]}); "
                                 "name it as --engine litellm:<provider>/<model>, e.g. "
                                 "litellm:anthropic/claude-3-5-haiku-latest") from None
        if self._api_key or self.api_base:
            return
        try:
            env = self._litellm.validate_environment(model=self.model)
        except Exception:  # noqa: BLE001 - an older litellm or an unusual provider: the first call will tell
            return
        missing = [k for k in (env or {}).get("missing_keys") or [] if isinstance(k, str)]
        if missing and not (env or {}).get("keys_in_environment"):
            raise EngineNotReady(f"{head}: no API key for this provider: set {' and '.join(missing)} in the environment")

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
