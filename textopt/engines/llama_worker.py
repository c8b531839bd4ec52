"""The child process that runs llama.cpp for `LocalEngine`: a native crash, abort or hang here never
takes the caller down, and the parent can always stop it (kill) and start a new one.

Run as a script (`python llama_worker.py`), not imported from textopt, so it starts fast and loads only
llama_cpp. Protocol: frames of a 4-byte big-endian length and a UTF-8 JSON body. The parent writes
requests on our stdin; we answer on the descriptor that was stdout, after pointing fd 1 at stderr so
anything llama.cpp prints can't corrupt a frame. The first frame we send says the model is loaded.
"""
from __future__ import annotations

import json
import os
import struct
import sys
from typing import Any

MAX_FRAME = 64 * 2**20


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the parent dies, so an abandoned worker never keeps computing."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: the parent's atexit hook and the closed stdin still end us
        pass


def _read_exact(fd: int, n: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _read(fd: int) -> Any:
    (size,) = struct.unpack("!I", _read_exact(fd, 4))
    if size > MAX_FRAME:
        raise ValueError(f"request frame of {size} bytes is over the {MAX_FRAME}-byte cap")
    return json.loads(_read_exact(fd, size))


def _write(fd: int, message: Any) -> None:
    body = json.dumps(message).encode("utf-8")
    data = struct.pack("!I", len(body)) + body
    while data:
        data = data[os.write(fd, data):]


def _count_prompt(llama: Any, messages: list[dict[str, Any]]) -> int:
    text = "".join(m["content"] if isinstance(m["content"], str) else json.dumps(m["content"]) for m in messages)
    return len(llama.tokenize(text.encode("utf-8"), add_bos=True)) + 8 * len(messages)


def _complete(llama: Any, n_ctx: int, seed: int, reuse_prefix: bool, req: dict[str, Any]) -> dict[str, Any]:
    opts = {k: v for k, v in (req.get("options") or {}).items() if v is not None}
    kwargs: dict[str, Any] = {
        "messages": req["messages"],
        "temperature": opts.pop("temperature", 0.0),
        "max_tokens": opts.pop("max_tokens", None),
        "seed": seed + int(req.get("draw") or 0),  # the n-th identical sampled request gets its own seed
    }
    kwargs.update(opts)
    if req.get("json_schema") is not None:
        kwargs["response_format"] = {"type": "json_object", "schema": req["json_schema"]}
    prompt_tokens = _count_prompt(llama, req["messages"])
    if prompt_tokens >= n_ctx - 16:
        return {"error": "ValueError", "message": (
            f"prompt of {prompt_tokens} tokens does not fit the local model's {n_ctx}-token window; "
            "shorten the variables or use a larger model")}
    if kwargs["max_tokens"] is None or prompt_tokens + kwargs["max_tokens"] > n_ctx:
        kwargs["max_tokens"] = max(16, n_ctx - prompt_tokens - 8)
    if not reuse_prefix:
        llama.reset()
    out = llama.create_chat_completion(**kwargs)
    usage = out.get("usage") or {}
    return {"text": out["choices"][0]["message"].get("content") or "",
            "prompt_tokens": int(usage.get("prompt_tokens", prompt_tokens)),
            "completion_tokens": int(usage.get("completion_tokens", 0))}


def probe(model_path: str, n_threads: int, tokens: int) -> int:
    """`textopt doctor`: load the model, read a batched prompt (the path that crashes a build with
    kernels the host can't run), generate `tokens` tokens; print one JSON line of speeds."""
    import time

    from llama_cpp import Llama, llama_print_system_info  # llama.cpp loads only in the local model's worker process

    started = time.perf_counter()
    llama = Llama(model_path=model_path, n_ctx=512, n_threads=n_threads, seed=0, verbose=False)
    loaded = time.perf_counter()
    prompt = ("Here is a short list of facts about rivers, mountains and the weather in spring. Rivers flow downhill "
              "to the sea, mountains are high, and spring brings rain. Write one more sentence:")
    ids = llama.tokenize(prompt.encode("utf-8"), add_bos=True)
    llama.reset()
    t0 = time.perf_counter()
    llama.eval(ids)
    t1 = time.perf_counter()
    made = 0
    for _ in range(tokens):
        token = llama.sample(temp=0.0)
        llama.eval([token])
        made += 1
    t2 = time.perf_counter()
    info = llama_print_system_info()
    print(json.dumps({"load_s": round(loaded - started, 3), "prompt_tokens": len(ids),
                      "prompt_tps": round(len(ids) / (t1 - t0), 1), "gen_tokens": made,
                      "gen_tps": round(made / (t2 - t1), 1) if made else None,
                      "system_info": info.decode() if isinstance(info, bytes) else str(info)}), flush=True)
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        return probe(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    _die_with_parent()
    reply_fd = os.dup(1)
    os.dup2(2, 1)  # llama.cpp's prints go to stderr, never into a reply frame
    sys.stdout = sys.stderr
    try:
        config = _read(0)
    except EOFError:  # the caller went away before sending the model to load
        return 0
    try:
        from llama_cpp import Llama  # llama.cpp loads only in the local model's worker process

        llama = Llama(model_path=config["model_path"], n_ctx=int(config["n_ctx"]), n_threads=int(config["n_threads"]),
                      n_batch=int(config.get("n_batch") or 512), seed=int(config["seed"]), verbose=False)
    except Exception as exc:  # a load failure is one frame, then we exit
        _write(reply_fd, {"error": type(exc).__name__, "message": str(exc)[:2000]})
        return 3
    _write(reply_fd, {"ready": True, "pid": os.getpid()})
    while True:
        try:
            req = _read(0)
        except EOFError:
            return 0
        if req.get("op") == "ping":
            _write(reply_fd, {"pong": True})
            continue
        try:
            reply = _complete(llama, int(config["n_ctx"]), int(config["seed"]), bool(config.get("reuse_prefix")), req)
        except Exception as exc:
            reply = {"error": type(exc).__name__, "message": str(exc)[:2000]}
        _write(reply_fd, reply)


if __name__ == "__main__":
    sys.exit(main())
