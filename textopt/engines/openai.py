"""OpenAI, and any OpenAI-compatible server (vLLM, SGLang, Ollama, llama.cpp's server) via base_url."""
from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import urllib.request
import weakref
from typing import Any
from urllib.parse import urlsplit

from .._sync import run_on_textopt_loop
from ..errors import EngineNotReady
from ..image import openai_messages
from ..secrets import remember, scrub_url, url_credentials
from .base import Engine
from .types import Completion, Request

#: Defaults for remote engines: one attempt may take DEFAULT_TIMEOUT s, and all attempts with their
#: backoff waits DEFAULT_MAX_TIME s, so a dead or hanging provider fails in under 2 minutes.
DEFAULT_TIMEOUT = 60.0
DEFAULT_MAX_TIME = 110.0
#: Seconds the readiness check (`aready`) waits for the server.
READY_TIMEOUT = 15.0


class OpenAIEngine(Engine):
    """Chat completions through the `openai` SDK (imported when the engine is built, not before).

    api_key defaults to $OPENAI_API_KEY (a placeholder is used for keyless local servers when
    base_url is given). json_mode says how a JSON schema is sent: "json_schema" (OpenAI structured
    outputs), "json_object" (`{"type": "json_object", "schema": ...}`, as llama.cpp's server wants),
    or "auto" (default): structured outputs first, and if the server rejects that request shape,
    the json_object form from then on. timeout (s, per attempt) and max_time (s, all attempts) default to
    60 and 110. One client (one connection pool) serves every call, on the textopt loop.

    transport picks the HTTP stack under the SDK: "aiohttp" (the SDK's `DefaultAioHttpClient`, from the
    `openai[aiohttp]` extra), "httpx" (the SDK's default), or "auto" (default): aiohttp when installed.
    Measured on 1,000 requests at 32 in flight, httpx's pool re-scans its connections for every queued
    request and took 2-4x the wall time of aiohttp's. Requests go through the SDK's own `post` (its auth,
    base URL, timeouts and error classes) with the body built here; the SDK's per-request transform of the
    typed parameters and its typed reply model, which change nothing for chat messages, are skipped.
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
        transport: str = "auto",
        **kwargs: Any,
    ) -> None:
        if json_mode not in ("auto", "json_schema", "json_object"):
            raise ValueError(f"json_mode must be 'auto', 'json_schema' or 'json_object', got {json_mode!r}")
        if transport not in ("auto", "aiohttp", "httpx"):
            raise ValueError(f"transport must be 'auto', 'aiohttp' or 'httpx', got {transport!r}")
        super().__init__(model, timeout=timeout, max_time=max_time, **kwargs)
        self.json_mode = json_mode
        import httpx  # the OpenAI SDK's HTTP stack loads only with an openai engine
        import openai  # the OpenAI SDK loads only when an openai engine is used

        self._openai = openai
        self._httpx = httpx
        if transport == "auto":
            # aiohttp refuses a URL with user:password@ next to the SDK's Authorization header (the request
            # fails before it is sent); httpx sends it as httpx always has, so such URLs keep httpx.
            transport = "aiohttp" if _has_aiohttp() and not _has_userinfo(base_url or os.environ.get("OPENAI_BASE_URL")) else "httpx"
        elif transport == "aiohttp" and not _has_aiohttp():
            raise ValueError("transport='aiohttp' needs the httpx-aiohttp package: pip install 'openai[aiohttp]'")
        self.transport = transport
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
        remember(key if key != "no-key" else None, *url_credentials(self.base_url))  # masked wherever textopt writes
        # Made here, off the event loop (building its SSL context takes a while); it binds to the textopt
        # loop at first use and is rebuilt only if that loop is ever replaced (after a fork).
        self._client_on: tuple[asyncio.AbstractEventLoop | None, Any] = (None, self._new_client())

    def _new_client(self) -> Any:
        # The SDK retries on its own too; ours (tenacity) is the one policy, so turn theirs off.
        http = self._openai.DefaultAioHttpClient() if self.transport == "aiohttp" else None
        client = self._openai.AsyncOpenAI(api_key=self._api_key, base_url=self.base_url, timeout=self.timeout, max_retries=0,
                                          http_client=http)
        self._direct = _DirectChat.for_client(client) if self.transport == "aiohttp" else None
        return client

    @property
    def _client(self) -> Any:
        """The one AsyncOpenAI client (one connection pool), used on the textopt loop only."""
        loop = asyncio.get_running_loop()
        bound, client = self._client_on
        if bound is None:
            self._client_on = (loop, client)
            # closed on the loop it ran on when the engine goes away or at exit (aiohttp warns about open sessions)
            weakref.finalize(self, _close_client, loop, client, self._direct)
        elif bound is not loop:
            self._client_on = (loop, self._new_client())
            weakref.finalize(self, _close_client, loop, self._client_on[1], self._direct)
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

    async def aready(self) -> None:
        """GET /models (no tokens spent): the key is accepted, the server answers, and it serves the model.
        A server without /models, or one whose list lacks the model, gets a 1-token completion instead."""
        await run_on_textopt_loop(self._ready())

    async def _ready(self) -> None:
        o = self._openai
        where = f"at {scrub_url(self.base_url)}" if self.base_url else "(api.openai.com)"
        head = f"openai engine {self.model!r} {where}"
        limit = min(self.timeout or READY_TIMEOUT, READY_TIMEOUT)
        probe, ids = "GET /models", []
        try:
            try:
                try:
                    resp = await self._client.get("/models", cast_to=self._httpx.Response, options={"timeout": limit})
                except o.APITimeoutError as exc:
                    raise self._connection_error(exc) from None
                ids = [m.get("id") for m in (resp.json().get("data") or []) if isinstance(m, dict)]
            except o.APIStatusError as exc:
                if exc.status_code in (401, 403):
                    raise
                ids = []  # no /models here: ask the model itself
            except ValueError:
                ids = []
            if self.model in ids:
                return
            if ids and self.base_url is None:
                raise EngineNotReady(f"{head}: OpenAI does not serve a model {self.model!r}; pick one it lists, "
                                     f"e.g. --engine openai:{sorted(i for i in ids if i)[0]}")
            probe = "a 1-token completion"
            body = {"model": self.model, "messages": [{"role": "user", "content": "ok"}], "max_tokens": 1}
            await self._post(body, limit)
        except EngineNotReady:
            raise
        except (o.AuthenticationError, o.PermissionDeniedError):
            fix = ("set OPENAI_API_KEY to a key this server accepts" if self.base_url else "set OPENAI_API_KEY to a valid key")
            raise EngineNotReady(f"{head}: the server refused the API key ({probe} answered 401/403); {fix}") from None
        except (o.APIConnectionError, ConnectionError, TimeoutError) as exc:
            cause = "no reply in time" if isinstance(exc, (o.APITimeoutError, TimeoutError)) else "connection failed"
            raise EngineNotReady(f"{head}: nothing answers ({cause}: {' '.join(str(exc).split())[:160]}); start the server, "
                                 "or fix the address with --base-url") from None
        except o.APIStatusError as exc:
            text = " ".join(str(exc).split())[:200]
            if exc.status_code == 404 or "model" in text.lower():
                listed = f"; it lists: {', '.join(str(i) for i in ids[:8])}" if ids else ""
                raise EngineNotReady(f"{head}: the server does not serve the model {self.model!r} ({exc.status_code}: "
                                     f"{text}){listed}; pick the model name with --engine openai:<model>") from None
            raise EngineNotReady(f"{head}: {probe} failed ({exc.status_code}: {text}); check the server and the "
                                 "model name") from None

    def _response_format(self, schema: dict[str, Any]) -> dict[str, Any]:
        if self.json_mode == "json_object":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": "reply", "schema": schema, "strict": True}}

    async def _post(self, body: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        """POST /chat/completions (auth, base URL, timeout, status errors as openai.APIError): straight on
        aiohttp where `_DirectChat` can send it as the SDK would, else through the SDK."""
        client = self._client
        if self._direct is not None:
            return await self._direct.post(client, body, timeout)
        options: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            resp = await client.post("/chat/completions", body=body, cast_to=self._httpx.Response, options=options)
        except self._openai.APITimeoutError as exc:
            raise self._connection_error(exc) from exc.__cause__
        try:
            data = resp.json()
        except ValueError:
            raise ValueError(f"the server sent a reply that is not JSON: {resp.text[:200]!r}") from None
        if not isinstance(data, dict):
            raise ValueError(f"the server sent a reply that is not a JSON object: {str(data)[:200]}")
        return data

    def _connection_error(self, exc: Any) -> Any:
        """httpx-aiohttp maps every aiohttp connection error (refused, reset, server gone) to ConnectTimeout:
        say what it was (an APIConnectionError). Both are transient; only the message changes."""
        root = exc.__cause__.__cause__ if exc.__cause__ is not None else None
        if root is None or isinstance(root, TimeoutError) or type(root).__module__.split(".")[0] != "aiohttp":
            return exc
        return self._openai.APIConnectionError(message=f"Connection error: {root}", request=exc.request)

    async def _acomplete(self, request: Request) -> Completion:
        body: dict[str, Any] = {"model": self.model, "messages": openai_messages(request.messages)}
        body.update((k, v) for k, v in request.options.items() if v is not None)
        if request.json_schema is not None:
            body["response_format"] = self._response_format(request.json_schema)
        try:
            data = await self._post(body, request.timeout)
        except self._openai.APIStatusError as exc:
            if not (request.json_schema is not None and self.json_mode == "auto" and "response_format" in str(exc)):
                raise
            self.json_mode = "json_object"  # this server wants the other shape; remember it
            body["response_format"] = self._response_format(request.json_schema)
            data = await self._post(body, request.timeout)
        choices = data.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            raise ValueError(f"the server sent a reply without choices: {json.dumps(data)[:200]}")
        text = (choices[0].get("message") or {}).get("content") or ""
        usage = data.get("usage") or {}
        return Completion(
            text=text if isinstance(text, str) else str(text),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            model=data.get("model") or self.model,
        )


def _has_userinfo(url: str | None) -> bool:
    return bool(url) and "@" in (urlsplit(url).netloc or "")


def _has_aiohttp() -> bool:
    """True when the SDK's aiohttp transport can be built (the `openai[aiohttp]` extra: httpx-aiohttp)."""
    if importlib.util.find_spec("httpx_aiohttp") is None:
        return False
    import openai  # the OpenAI SDK loads only when an openai engine is used

    return hasattr(openai, "DefaultAioHttpClient")  # openai >= 1.86 or so; older SDKs use httpx


def _close_client(loop: asyncio.AbstractEventLoop, client: Any, direct: "_DirectChat | None" = None) -> None:
    """Close an AsyncOpenAI client (and the direct session beside it) on the loop it served (from any
    thread; at exit, waits up to 2 s)."""
    if loop.is_closed() or not loop.is_running():
        return
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None

    async def close() -> None:
        try:
            await client.close()
        finally:
            if direct is not None:
                await direct.close()

    if running is loop:
        loop.create_task(close())
        return
    with contextlib.suppress(Exception):
        asyncio.run_coroutine_threadsafe(close(), loop).result(timeout=2)


class _DirectChat:
    """The chat POST on a bare aiohttp session, sending what the SDK's `post` would send and raising what it
    would raise, without its per-request machinery (options model, httpx Request/Response, cookie jar).

    What is the SDK's: the headers (`default_headers` and `auth_headers` of the client, read once on the loop,
    plus its retry-count and read-timeout headers), the URL (the client's `base_url` + chat/completions), the
    JSON encoding (compact, UTF-8, no NaN), the time limits (connect / read / pool, as its aiohttp transport
    maps them) and every error: a non-2xx reply becomes the SDK's own status error (same class and message),
    a timeout `APITimeoutError`, a failed connection `APIConnectionError`. The session has the SDK's
    connection limits. Used only where the SDK's path has nothing more to do: no proxy in the environment,
    no query string in the base URL, no underscore in its host (the SDK's SNI work-around)."""

    def __init__(self, client: Any) -> None:
        import openai  # the OpenAI SDK loads only when an openai engine is used

        self._openai = openai
        self.url = str(client.base_url) + "chat/completions"
        self._ssl: Any = None
        if self.url.startswith("https:"):  # built here, off the loop, as the SDK's transport does
            import httpx  # the OpenAI SDK's HTTP stack loads only with an openai engine

            self._ssl = httpx.create_ssl_context()
        self._session: Any = None
        self._headers: dict[str, str] | None = None

    @classmethod
    def for_client(cls, client: Any) -> "_DirectChat | None":
        parts = urlsplit(str(client.base_url))
        proxies = urllib.request.getproxies()
        if any(k in proxies for k in ("http", "https", "all")) or parts.query or "_" in (parts.hostname or ""):
            return None
        return cls(client)

    def _session_and_headers(self, client: Any) -> tuple[Any, dict[str, str]]:
        if self._session is None:  # on the textopt loop, at the first call (aiohttp binds it to that loop)
            import aiohttp  # optional HTTP transport, only with an openai engine

            limits = self._openai.DEFAULT_CONNECTION_LIMITS
            connector = aiohttp.TCPConnector(limit=limits.max_connections, keepalive_timeout=limits.keepalive_expiry,
                                             ssl=self._ssl if self._ssl is not None else True)
            self._session = aiohttp.ClientSession(connector=connector)
            # the SDK's order (defaults win over auth), then the one header httpx adds that aiohttp doesn't
            merged = {**client.auth_headers, **client.default_headers}
            self._headers = {k: v for k, v in merged.items() if isinstance(v, str)}  # Omit() drops a header
            self._headers.setdefault("Connection", "keep-alive")
        assert self._headers is not None
        return self._session, self._headers

    async def post(self, client: Any, body: dict[str, Any], timeout: float | None) -> dict[str, Any]:
        import aiohttp  # optional HTTP transport, only with an openai engine
        import httpx  # the OpenAI SDK's HTTP stack loads only with an openai engine

        o = self._openai
        session, headers = self._session_and_headers(client)
        limit = httpx.Timeout(timeout if timeout is not None else client.timeout)
        headers = {**headers, "x-stainless-retry-count": "0"}
        if limit.read is not None:
            headers["x-stainless-read-timeout"] = str(limit.read)
        data = _dumps(body)
        try:
            async with session.post(self.url, data=data, headers=headers, timeout=aiohttp.ClientTimeout(
                    sock_connect=limit.connect, sock_read=limit.read, connect=limit.pool)) as resp:
                status, reply_headers, raw = resp.status, resp.headers, await resp.read()
        except (asyncio.TimeoutError, aiohttp.ServerTimeoutError):
            raise o.APITimeoutError(request=httpx.Request("POST", self.url)) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise o.APIConnectionError(message=f"Connection error: {exc}", request=httpx.Request("POST", self.url)) from exc
        if not 200 <= status < 300:
            # the body is already decoded: the headers that describe its encoding on the wire are left out
            kept = [(k, v) for k, v in reply_headers.items()
                    if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
            response = httpx.Response(status, headers=kept, content=raw, request=httpx.Request("POST", self.url))
            raise client._make_status_error_from_response(response)
        try:
            data_out = json.loads(raw)
        except ValueError:
            raise ValueError(f"the server sent a reply that is not JSON: {raw.decode('utf-8', 'replace')[:200]!r}") from None
        if not isinstance(data_out, dict):
            raise ValueError(f"the server sent a reply that is not a JSON object: {str(data_out)[:200]}")
        return data_out

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _dumps(body: dict[str, Any]) -> bytes:
    """The request body as the SDK encodes it (its own encoder where it has one: the same bytes)."""
    try:
        from openai._utils._json import openapi_dumps  # the OpenAI SDK loads only when an openai engine is used
    except ImportError:  # another SDK layout: the same settings (httpx's), without the SDK's extra types
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
    return openapi_dumps(body)
