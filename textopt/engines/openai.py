"""OpenAI, and any OpenAI-compatible server (vLLM, SGLang, Ollama, llama.cpp's server) via base_url."""
from __future__ import annotations

import os
from typing import Any

from .base import Completion, Engine, Request


class OpenAIEngine(Engine):
    """Chat completions through the `openai` SDK (imported when the engine is built, not before).

    api_key defaults to $OPENAI_API_KEY (a placeholder is used for keyless local servers when
    base_url is given). JSON schemas go out as structured outputs (`response_format=json_schema`).
    """

    kind = "openai"
    supports_json_schema = True

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
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
        # The SDK retries on its own too; ours (tenacity) is the one policy, so turn theirs off.
        self._client = openai.AsyncOpenAI(api_key=key, base_url=self.base_url, timeout=timeout, max_retries=0)

    def cache_identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "base_url": self.base_url}

    def is_transient(self, exc: BaseException) -> bool:
        o = self._openai
        if isinstance(exc, (o.RateLimitError, o.APITimeoutError, o.APIConnectionError, o.InternalServerError)):
            return True
        if isinstance(exc, o.APIStatusError):
            return exc.status_code >= 500 or exc.status_code == 429
        return super().is_transient(exc)

    async def _acomplete(self, request: Request) -> Completion:
        kwargs: dict[str, Any] = {k: v for k, v in request.options.items() if v is not None}
        if request.json_schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "reply", "schema": request.json_schema, "strict": True},
            }
        resp = await self._client.chat.completions.create(model=self.model, messages=request.messages, **kwargs)
        text = resp.choices[0].message.content or ""
        usage = resp.usage
        return Completion(
            text=text,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            model=resp.model or self.model,
        )
