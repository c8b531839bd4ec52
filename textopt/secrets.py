"""Mask secrets in text before it reaches an error, a log line, a checkpoint or a spec.

Two strengths, for two kinds of text:
- `mask(text, extra=())`, for everything a run writes (checkpoints, logs, results): masks secrets by *value*
  only, the values of environment variables whose names look secret (KEY, TOKEN, SECRET, PASSWORD, ...), the
  user:password of URLs in the environment, the keys engines were configured with (`remember`) and the `extra`
  values given. Ordinary text, such as a prompt that says "sk-learn-compatible" or "Bearer token", or
  "Clone ssh://git@host/repo", comes back unchanged.
- `scrub(text, extra=())`, for a provider's error text: `mask`, plus patterns for what may be a key nobody
  configured here: the user:password part of URLs (`http://user:pw@host` -> `http://***@host`),
  `Bearer <token>` and OpenAI-style `sk-...` keys.
"""
from __future__ import annotations

import os
import re
from typing import Iterable

MASK = "***"
#: Environment variable names whose values are treated as secrets.
SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL", re.IGNORECASE)
#: Shorter values are not masked: they are not secrets worth the name, and masking them would garble text.
MIN_SECRET_CHARS = 8

_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@'\"<>]+@")
_BEARER = re.compile(r"(?P<word>\bBearer\s+)[A-Za-z0-9._~+/=\-]+", re.IGNORECASE)
_KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_\-]{16,}")


def secret_env_names(environ: os._Environ[str] | dict[str, str] | None = None) -> list[str]:
    """Names of the environment variables that look like they hold a key, token, secret or password."""
    env = os.environ if environ is None else environ
    return [name for name in env if SECRET_NAME.search(name)]


_remembered: set[str] = set()
_URL_PASSWORD = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://(?P<info>[^/\s@'\"<>:]+:[^/\s@'\"<>]+)@")


def remember(*values: str | None) -> None:
    """Mask these values from now on, wherever textopt writes (engines call it with their configured key and
    the user:password of their URL). Values shorter than MIN_SECRET_CHARS are left alone."""
    for value in values:
        if isinstance(value, str) and len(value) >= MIN_SECRET_CHARS:
            _remembered.add(value)


def url_credentials(url: str | None) -> list[str]:
    """The user:password parts of the URLs in `url` (text), for `remember`."""
    return [m.group("info") for m in _URL_PASSWORD.finditer(url or "")]


def secret_values(extra: Iterable[str | None] = ()) -> list[str]:
    """The values `mask` masks (longest first, so a key inside a longer key is masked whole)."""
    values = {os.environ[name] for name in secret_env_names()}
    for value in os.environ.values():
        values.update(url_credentials(value))
    values.update(_remembered)
    values.update(v for v in extra if v)
    return sorted((v for v in values if len(v) >= MIN_SECRET_CHARS), key=len, reverse=True)


def mask(text: str, extra: Iterable[str | None] = ()) -> str:
    """`text` with every known secret value replaced by `***`; nothing else is touched."""
    if not text:
        return text
    for value in secret_values(extra):
        if value in text:
            text = text.replace(value, MASK)
    return text


def scrub(text: str, extra: Iterable[str | None] = ()) -> str:
    """Error text with every known secret, every credential in a URL, `Bearer` tokens and `sk-...` keys
    replaced by `***` (for a provider's errors; a run's files use `mask`)."""
    if not text:
        return text
    text = mask(text, extra)
    text = _URL_USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", text)
    text = _BEARER.sub(lambda m: m.group("word") + MASK, text)
    return _KEY_LIKE.sub(MASK, text)


def scrub_url(url: str | None) -> str | None:
    """A URL without its user:password part (None stays None)."""
    return None if url is None else _URL_USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", url)
