"""Images as values: `to.Image(path | bytes | url)` goes into a Variable like any value and reaches a model as
image content where the engine can take it (openai, litellm); elsewhere it is one clear error before any call.

A chat message's content is text, an Image, or a list of parts (str or Image). Engines send parts in the
OpenAI shape (`{"type": "image_url", "image_url": {"url": ...}}`, a data URL for files and bytes, the URL as
is otherwise). Cache keys hold an image's sha256 (of its bytes; of the URL for a URL), never the bytes.
Stdlib only, and nothing is read before it is needed.
"""
from __future__ import annotations

import base64
import hashlib
import mimetypes
import os
from pathlib import Path
from typing import Any, Sequence

from .errors import EngineError

#: Image formats by their first bytes (used when the file name says nothing).
_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"GIF87a", "image/gif"),
          (b"GIF89a", "image/gif"), (b"RIFF", "image/webp"), (b"BM", "image/bmp"))


class ImagesNotSupported(EngineError, ValueError):
    """The engine (or its model) can't take images: raised before any call, so nothing is spent."""


class Image:
    """An image for a model to look at: a file path, raw bytes, or an http(s)/data URL.

    Files are read when first needed (sending, hashing), not when the Image is made; a missing file is an
    error at once. mime_type defaults to what the name or the bytes say (PNG when nothing does)."""

    def __init__(self, source: str | os.PathLike[str] | bytes, *, mime_type: str | None = None) -> None:
        self.url: str | None = None
        self.path: Path | None = None
        self._bytes: bytes | None = None
        if isinstance(source, (bytes, bytearray, memoryview)):
            self._bytes = bytes(source)
            if not self._bytes:
                raise ValueError("to.Image got empty bytes")
        elif isinstance(source, str) and source.startswith(("http://", "https://", "data:")):
            self.url = source
        elif isinstance(source, (str, os.PathLike)):
            self.path = Path(source)
            if not self.path.is_file():
                raise FileNotFoundError(f"to.Image: no image file at {self.path}")
        else:
            raise TypeError(f"to.Image takes a path, bytes or a URL, got {type(source).__name__}")
        self._mime = mime_type
        self._sha: str | None = None

    # -- content --------------------------------------------------------------------------------
    def data(self) -> bytes | None:
        """The image bytes (None for an http(s) URL, which the provider fetches itself)."""
        if self._bytes is None and self.path is not None:
            self._bytes = self.path.read_bytes()
        if self._bytes is None and self.url is not None and self.url.startswith("data:"):
            self._bytes = base64.b64decode(self.url.split(",", 1)[1])
        return self._bytes

    @property
    def mime_type(self) -> str:
        if self._mime:
            return self._mime
        if self.url is not None and self.url.startswith("data:"):
            return self.url[5:].split(";", 1)[0].split(",", 1)[0] or "image/png"
        if self.path is not None:
            guess = mimetypes.guess_type(self.path.name)[0]
            if guess and guess.startswith("image/"):
                return guess
        head = (self.data() or b"")[:12]
        return next((m for magic, m in _MAGIC if head.startswith(magic)), "image/png")

    @property
    def sha256(self) -> str:
        """Content hash: of the bytes (file, bytes, data URL), else of the URL. What cache keys hold."""
        if self._sha is None:
            raw = self.data()
            self._sha = hashlib.sha256(raw if raw is not None else (self.url or "").encode("utf-8")).hexdigest()
        return self._sha

    def to_url(self) -> str:
        """What the provider gets: the http(s) URL as is, else a base64 data URL of the bytes."""
        if self.url is not None and not self.url.startswith("data:"):
            return self.url
        return f"data:{self.mime_type};base64," + base64.b64encode(self.data() or b"").decode("ascii")

    def describe(self) -> str:
        """How the image reads wherever text is needed (traces, gradients, reprs): never its bytes."""
        where = self.url if self.url is not None and not self.url.startswith("data:") else (
            self.path.name if self.path is not None else "bytes")
        if len(where) > 80:
            where = where[:77] + "..."
        return f"[image {where}, sha256 {self.sha256[:12]}]"

    def key(self) -> dict[str, str]:
        """The image's part of a cache key."""
        return {"image_sha256": self.sha256}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Image) and other.sha256 == self.sha256

    def __hash__(self) -> int:
        return hash(self.sha256)

    def __str__(self) -> str:
        return self.describe()

    def __repr__(self) -> str:
        return f"Image({self.describe()})"


# -- chat content: str | Image | list of parts ----------------------------------------------------
def content(value: Any) -> str | list[Any]:
    """A message's content, normalised: str as is; an Image or a list becomes a list of str/Image parts."""
    if isinstance(value, Image):
        return [value]
    if isinstance(value, (list, tuple)):
        parts: list[Any] = []
        for part in value:
            if isinstance(part, dict) and part.get("type") == "text":
                part = part.get("text", "")
            elif isinstance(part, dict) and part.get("type") == "image_url":  # an OpenAI-shaped part given by hand
                url = part.get("image_url")
                part = Image(url.get("url", "") if isinstance(url, dict) else str(url))
            parts.append(part if isinstance(part, Image) else str(part))
        return parts
    return str(value)


def has_images(messages: Sequence[dict[str, Any]]) -> bool:
    return any(isinstance(m["content"], list) and any(isinstance(p, Image) for p in m["content"]) for m in messages)


def key_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as they enter a cache key: an image is its hash."""
    if not has_images(messages):
        return list(messages)
    return [{**m, "content": [p.key() if isinstance(p, Image) else p for p in m["content"]]}
            if isinstance(m["content"], list) else m for m in messages]


def openai_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages in the OpenAI chat shape (litellm takes it too): parts become text/image_url content parts."""
    out = []
    for m in messages:
        c = m["content"]
        if isinstance(c, list):
            c = [{"type": "image_url", "image_url": {"url": p.to_url()}} if isinstance(p, Image)
                 else {"type": "text", "text": p} for p in c]
        out.append({**m, "content": c})
    return out


def not_supported(engine: Any) -> ImagesNotSupported:
    """The one error for an image sent to an engine that can't take it."""
    if engine.kind == "local":
        how = "the local engine runs a text-only model; use an openai or litellm engine with a vision model"
    else:
        how = ("use a vision model; if this model does take images (e.g. a vision model behind an OpenAI-compatible "
               "server), build the engine with supports_images=True")
    return ImagesNotSupported(f"{engine.kind} engine {engine.model!r} can't take images (a message holds one): {how}")
