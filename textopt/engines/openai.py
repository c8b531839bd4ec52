"""OpenAI, and any OpenAI-compatible server (vLLM, SGLang, Ollama, llama.cpp's server) via base_url."""
from __future__ import annotations

import asyncio
import os
from typing import Any

from ..secrets import scrub_url
from ..image import openai_messages
from .base import Completion, Engine, Request

#: Defaults for remote engines: one attempt may take DEFAULT_TIMEOUT s, and all attempts with their
#: backoff waits DEFAULT_MAX_TIME s, so a dead or hanging provider fails in under 2 minutes.
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_TIME = 110.0


class OpenAIEngine(Engine):
    """Chat completions through the `openai` SDK (imported when the engine is built, not before).

    api_key defaults to $OPENAI_API_KEY (a placeholder is used for keyless local servers when
    base_url is given). json_mode says how a JSON schema is sent: "json_schema" (OpenAI structured
    outputs), "json_object" (`{"type": "json_object", "schema": ...}`, as llama.cpp's server wants),
    or "auto" (default): structured outputs first, and if the server rejects that request shape,
    the json_object form from then on. timeout (s, per attempt) and max_time (s, all attempts) default to
    60 and 110. One client (one connection pool) serves every call, on the textopt loop.
    """

    kind = "openai"
    supports_json_schema = True

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_time: float | None = DEFAULT_MAX_TIME,
        json_mode: str = "auto",
        **kwargs: Any,
    ) -> None:
        if json_mode not in ("auto", "json_schema", "json_object"):
            raise ValueError(f"json_mode must be 'auto', 'json_schema' or 'json_object', got {json_mode!r}")
        super().__init__(model, timeout=timeout, max_time=max_time, **kwargs)
        self.json_mode = json_mode
        import openai

        self._openai = openai
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if key is None:
            if self.base_url is None:
                raise ValueError(
                    "openai engine needs an API key: set OPENAI_API_KEY or pass api_key=..., "
                    "or pass base_url=... for a keyless OpenAI-compatible server"
                )
            key = "no-key"
        self._api_key = key
        # Made here, off the event loop (building its SSL context takes a while); it binds to the textopt
        # loop at first use and is rebuilt only if that loop is ever replaced (after a fork).
        self._client_on: tuple[asyncio.AbstractEventLoop | None, Any] = (None, self._new_client())

    def _new_client(self) -> Any:
        # The SDK retries on its own too; ours (tenacity) is the one policy, so turn theirs off.
        return self._openai.AsyncOpenAI(api_key=self._api_key, base_url=self.base_url, timeout=self.timeout, max_retries=0)

    @property
    def _client(self) -> Any:
        """The one AsyncOpenAI client (one connection pool), used on the textopt loop only."""
        loop = asyncio.get_running_loop()
        bound, client = self._client_on
        if bound is None:
            self._client_on = (loop, client)
        elif bound is not loop:
            self._client_on = (loop, self._new_client())
        return self._client_on[1]

    def cache_identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "base_url": scrub_url(self.base_url)}

    def secrets(self) -> list[str]:
        return [self._api_key] if self._api_key != "no-key" else []

    def images_by_default(self) -> bool:
        """OpenAI's own API takes images; another server at base_url only when built with supports_images=True."""
        return self.base_url is None

    def is_transient(self, exc: BaseException) -> bool:
        o = self._openai
        if isinstance(exc, (o.RateLimitError, o.APITimeoutError, o.APIConnectionError, o.InternalServerError)):
            return True
        if isinstance(exc, o.APIStatusError):
            return exc.status_code >= 500 or exc.status_code == 429
        return super().is_transient(exc)

    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self.json_mode == "json_object":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}}

    async def _acomplete(self, request: Request) -> Completion:
        kwargs: dict[str, Any] = {k: v for k, v in request.options.items() if v is not None}
        if request.json_schema is not None:
            kwargs["response_format"] = self._response_format(request.json_schema)
        if request.timeout is not None:
            kwargs["timeout"] = request.timeout
        try:
            resp = await self._client.chat.completions.create(model=self.model, messages=openai_messages(request.messages), **kwargs)
        except self._openai.APIStatusError as exc:
            if not (request.json_schema is not None and self.json_mode == "auto" and "response_format" in str(exc)):
                raise
            self.json_mode = "json_object"  # this server wants the other shape; remember it
            kwargs["response_format"] = self._response_format(request.json_schema)
            resp = await self._client.chat.completions.create(model=self.model, messages=openai_messages(request.messages), **kwargs)
        if not resp.choices:
            raise ValueError(f"the server sent a reply without choices: {str(resp)[:200]}")
        text = resp.choices[0].message.content or ""
        usage = resp.usage
        return Completion(
            text=text,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            model=resp.model or self.model,
        )
