"""Several servers behind one engine: litellm's Router spreads calls over endpoints and fails over.

    get_engine("router", endpoints=[{"model": "smollm2", "base_url": "http://10.0.0.1:8000/v1"},
                                    {"model": "smollm2", "base_url": "http://10.0.0.2:8000/v1"}])

Each endpoint is a dict: model, and optionally base_url (any OpenAI-compatible server: vLLM, SGLang,
llama.cpp, Ollama) and api_key. A model with a "/" is a litellm model string ("anthropic/...") as is;
with a base_url and no "/", it is served OpenAI-style. A call that fails on one endpoint is retried at
once on another (the Router's own failover); an endpoint that fails is cooled down for cooldown_time s.
Our retry policy (backoff, timeout, max_time) wraps the whole, as for every engine.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..image import openai_messages
from ..secrets import remember, scrub_url, url_credentials
from .litellm import LiteLLMEngine
from .openai import DEFAULT_MAX_TIME, DEFAULT_TIMEOUT
from .pricing import import_litellm
from .types import Completion, Request

GROUP = "textopt"


def _litellm_model(endpoint: Mapping[str, Any]) -> str:
    model = str(endpoint["model"])
    return model if "/" in model or not endpoint.get("base_url") else f"openai/{model}"


class RouterEngine(LiteLLMEngine):
    """litellm's Router over `endpoints` (load balancing with routing_strategy, failover, cooldowns)."""

    kind = "router"

    def __init__(
        self,
        endpoints: Sequence[Mapping[str, Any]],
        *,
        routing_strategy: str = "simple-shuffle",
        cooldown_time: float = 30.0,
        timeout: float | None = DEFAULT_TIMEOUT,
        max_time: float | None = DEFAULT_MAX_TIME,
        **kwargs: Any,
    ) -> None:
        eps = [dict(e) for e in endpoints]
        if not eps:
            raise ValueError("the router engine needs endpoints=[{'model': ..., 'base_url': ...}, ...]")
        for i, e in enumerate(eps):
            unknown = set(e) - {"model", "base_url", "api_key"}
            if not e.get("model") or unknown:
                raise ValueError(f"endpoints[{i}] must be a dict with 'model' and optional 'base_url', 'api_key'"
                                 + (f"; unknown keys {sorted(unknown)}" if unknown else ""))
        models = sorted({str(e["model"]) for e in eps})
        name = f"router[{len(eps)}]:{','.join(models)}"
        litellm = import_litellm("the router engine")
        # Not LiteLLMEngine.__init__: there is no single model, api_base or key.
        super(LiteLLMEngine, self).__init__(name, timeout=timeout, max_time=max_time, **kwargs)
        self._litellm = litellm
        self.api_base = None
        self._api_key = None
        self.endpoints = [{"model": _litellm_model(e), "base_url": e.get("base_url")} for e in eps]
        self._keys = [e.get("api_key") for e in eps]
        remember(*self._keys, *(c for e in eps for c in url_credentials(e.get("base_url"))))  # masked wherever textopt writes
        model_list = [
            {"model_name": GROUP, "litellm_params": {
                "model": _litellm_model(e),
                **({"api_base": e["base_url"]} if e.get("base_url") else {}),
                # keyless OpenAI-compatible servers still need some key for the SDK
                **({"api_key": e.get("api_key") or "none"} if e.get("base_url") or e.get("api_key") else {}),
            }}
            for e in eps
        ]
        self._router = self._litellm.Router(
            model_list=model_list,
            routing_strategy=routing_strategy,
            num_retries=len(eps) - 1,  # failover: try the other endpoints at once
            retry_after=0,
            allowed_fails=0,
            cooldown_time=cooldown_time,
        )

    def cache_identity(self) -> dict[str, Any]:
        # any endpoint may answer: the same request is the same question whichever one does
        return {"kind": self.kind, "endpoints": sorted((e["model"], scrub_url(e["base_url"]) or "") for e in self.endpoints)}

    def secrets(self) -> list[str]:
        return [k for k in self._keys if k]

    def price_models(self, completion: Completion) -> list[str]:
        return [completion.model, *(e["model"] for e in self.endpoints)]

    async def _acomplete(self, request: Request) -> Completion:
        kwargs = self._kwargs(request)
        resp = await self._router.acompletion(model=GROUP, messages=openai_messages(request.messages), **kwargs)
        return self._completion(resp)
