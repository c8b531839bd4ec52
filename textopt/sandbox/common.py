"""What every side of the sandbox shares: its limits, its errors and the worker's minimal environment."""
from __future__ import annotations

import os
import re
import time

from ..errors import TextoptError


#: Environment variables whose name contains one of these (case-insensitive) don't reach the worker.
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL")
_URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@", re.IGNORECASE)
#: Default address-space limit of a worker (bytes).
DEFAULT_MEMORY_LIMIT = 2 * 1024**3
#: Seconds a worker may take to start, and to import the function's module (user code, not LLM code).
START_TIMEOUT = 60.0
IMPORT_TIMEOUT = 60.0
#: Largest reply (bytes) the parent reads from a worker.
MAX_REPLY_BYTES = 256 * 1024**2
OPT_OUT = 'use @trace(trainable=True, isolation="thread") to run the code in this process with a time limit, or isolation="none"'

#: True inside a worker process (set by the worker's serve loop): a nested isolated call runs in place.
IN_WORKER = False


class IsolationError(TextoptError):
    """Isolated code couldn't run or ended the worker: an exit, a crash, a value that can't cross the process boundary."""


class IsolatedCodeError(Exception):
    """Stands in for an exception class of the isolated code that the parent doesn't rebuild (named like the original)."""


#: The variables a worker gets from os.environ by default (Sandbox(env=...) gives it others, less secrets).
MINIMAL_ENVIRON = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP", "TERM",
                   "PYTHONHOME", "PYTHONHASHSEED", "PYTHONIOENCODING", "PYTHONUTF8", "VIRTUAL_ENV", "LD_LIBRARY_PATH")


def minimal_environ(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The worker's default environment: only MINIMAL_ENVIRON and LC_* from `environ` (default os.environ),
    less anything that looks like a secret. Code gets nothing it wasn't meant to have, whatever its name."""
    env = os.environ if environ is None else environ
    return clean_environ({k: v for k, v in env.items() if k in MINIMAL_ENVIRON or k.startswith("LC_")})


def clean_environ(environ: dict[str, str] | None = None) -> dict[str, str]:
    """`environ` (default os.environ) without variables that look like secrets, by name or by a URL with credentials."""
    env = dict(os.environ if environ is None else environ)
    return {k: v for k, v in env.items()
            if not any(m in k.upper() for m in SECRET_MARKERS) and not _URL_CREDENTIALS.search(v)}


