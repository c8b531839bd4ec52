"""Mask secrets in text before it reaches an error, a log line, a checkpoint or a spec.

`scrub(text, extra=())` masks: the values of environment variables whose names look secret (KEY, TOKEN,
SECRET, PASSWORD, ...), the `extra` values given (e.g. an engine's configured api key), the user:password
part of URLs (`http://user:pw@host` -> `http://***@host`), `Bearer <token>` and OpenAI-style `sk-...` keys.
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


def secret_values(extra: Iterable[str | None] = ()) -> list[str]:
    """The values `scrub` masks (longest first, so a key inside a longer key is masked whole)."""
    values = {os.environ[name] for name in secret_env_names()}
    values.update(v for v in extra if v)
    return sorted((v for v in values if len(v) >= MIN_SECRET_CHARS), key=len, reverse=True)


def scrub(text: str, extra: Iterable[str | None] = ()) -> str:
    """`text` with every known secret and every credential in a URL replaced by `***`."""
    if not text:
        return text
    for value in secret_values(extra):
        if value in text:
            text = text.replace(value, MASK)
    text = _URL_USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", text)
    text = _BEARER.sub(lambda m: m.group("word") + MASK, text)
    return _KEY_LIKE.sub(MASK, text)


def scrub_url(url: str | None) -> str | None:
    """A URL without its user:password part (None stays None)."""
    return None if url is None else _URL_USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", url)
