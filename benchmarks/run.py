"""Side-by-side benchmarks: textopt (this checkout) against TextGrad 0.1.8 and Trace (trace-opt), one command.

    python benchmarks/run.py            # full: every workload, peers in their own virtual environments
    python benchmarks/run.py --quick    # the same workloads, smaller (a few minutes plus the model's time)
    python benchmarks/run.py --only textopt --tiny --out DIR   # seconds, no peers, no model (what the test runs)
    python benchmarks/run.py --workloads g --gguf MODEL.gguf --out DIR   # (g) on another local GGUF model
    python benchmarks/run.py --workloads g --reflect-gguf reflect --out DIR  # (g): optimizers on the 1.5B, task on SmolLM2

Peers are pip-installed into virtual environments under benchmarks/.cache/venvs/ (git-ignored), never into
the project's environment. Every framework reaches the engines through its own OpenAI-compatible path:
- a latency engine (benchmarks/bench_servers.py: a fake OpenAI server on 127.0.0.1, 50 ms per request,
  canned replies) for timing and prompt sizes, so the model's speed is taken out;
- llama.cpp's OpenAI-compatible server serving the embedded SmolLM2 model (started and stopped here),
  behind a counting proxy, for valid updates, end to end accuracy, tokens and cache re-runs;
- with --reflect-gguf, a second llama.cpp server with a reflection model (e.g. the installed
  Qwen2.5-Coder-1.5B-Instruct, `--reflect-gguf reflect`) behind its own counting proxy: in (d) and (g) every
  optimizer's calls go there, the task model's calls stay on the first server.
Calls, prompt characters and tokens are counted at the servers, the same way for everyone.
Writes benchmarks/results.json and the harness section of BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench_servers import CountingProxy, LatencyServer, LlamaServer  # noqa: E402

FRAMEWORKS = ("textopt", "textgrad", "trace", "gepa", "dspy")
PEERS = {
    "textgrad": {"requirement": "textgrad==0.1.8", "dist": "textgrad", "script": HERE / "peers" / "textgrad_bench.py",
                 "import": "import textgrad"},
    "trace": {"requirement": "trace-opt", "dist": "trace-opt", "script": HERE / "peers" / "trace_bench.py",
              "import": "from opto import trace; from opto.optimizers import OptoPrime"},
    # GEPA's default adapter reaches the task model through litellm (pinned like the project's own)
    "gepa": {"requirement": "gepa==0.1.4 litellm<1.107", "dist": "gepa", "script": HERE / "peers" / "gepa_bench.py",
             "import": "import gepa"},
    "dspy": {"requirement": "dspy==3.4.1 litellm<1.107", "dist": "dspy", "script": HERE / "peers" / "dspy_bench.py",
             "import": "import dspy"},
}
TEXTOPT_IMPORT = "import textopt"
#: Workers that run on the project's own Python (no venv): textopt, and (h)'s raw-client floor (bench_raw.py).
OWN_SCRIPTS = {"textopt": HERE / "bench_textopt.py", "raw": HERE / "bench_raw.py"}
LABEL = {"textopt": "textopt", "textgrad": "TextGrad", "trace": "Trace", "gepa": "GEPA", "dspy": "DSPy"}
WORKLOADS = "abcdefgh"
MARK_START, MARK_END = "<!-- harness:start -->", "<!-- harness:end -->"

MODES: dict[str, dict[str, Any]] = {
    # timing_reps: runs per timing graph; import_reps: fresh processes per import; nodes: traced chain sizes;
    # valid_steps: optimizer steps for (d); e2e: (e) sizes; max_tokens: completion cap for every framework.
    # throughput_n: examples per level for (h); quality: (g) tasks, seeds, budget of task-model calls, split sizes.
    "full": {"timing_reps": 9, "import_reps": 9, "nodes": [10, 100, 2000], "valid_steps": 30,
             "e2e": {"eval": 20, "steps": 5, "batch": 3}, "max_tokens": 256, "real_model": True, "throughput_n": 1000,
             "quality": {"tasks": ["sentiment", "categories"], "seeds": [0, 1, 2], "budget": 60, "train": 30, "val": 10,
                         "test": 100, "batch": 3}},
    "quick": {"timing_reps": 5, "import_reps": 5, "nodes": [10, 100, 2000], "valid_steps": 3,
              "e2e": {"eval": 3, "steps": 2, "batch": 1}, "max_tokens": 128, "real_model": True, "throughput_n": 1000,
              "quality": {"tasks": ["sentiment"], "seeds": [0], "budget": 20, "train": 12, "val": 4, "test": 20, "batch": 2}},
    "tiny": {"timing_reps": 2, "import_reps": 3, "nodes": [10, 100], "valid_steps": 3,
             "e2e": {"eval": 3, "steps": 2, "batch": 1}, "max_tokens": 64, "real_model": False, "throughput_n": 40,
             "quality": {"tasks": ["sentiment"], "seeds": [0], "budget": 12, "train": 6, "val": 2, "test": 6, "batch": 2,
                         "optimizers": ["textopt TGD (Trainer)", "textopt Search"]}},
}
LATENCY = 0.05
#: The name the reflection model's server answers to (--reflect-gguf); every optimizer asks for it.
REFLECT_ALIAS = "reflect"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


# -- environments -------------------------------------------------------------------------------------------


class Frameworks:
    """Where each framework's Python is, how its venv was made, and the env its workers get."""

    def __init__(self, cache: Path, only: list[str]) -> None:
        self.cache = cache
        self.only = only
        self.python: dict[str, str] = {"textopt": sys.executable, "raw": sys.executable}
        self.info: dict[str, dict[str, Any]] = {"textopt": {"version": _textopt_version(), "python": sys.executable}}
        self.errors: dict[str, str] = {}

    def ensure(self, name: str) -> bool:
        """Create the peer's venv and pip-install it there (once; a marker file records what was installed)."""
        if name == "textopt":
            return True
        peer = PEERS[name]
        venv = self.cache / "venvs" / name
        py = venv / "bin" / "python"
        marker = venv / ".bench-installed"
        cmds = [[sys.executable, "-m", "venv", str(venv)], [str(py), "-m", "pip", "install", "-q", *peer["requirement"].split()]]
        if not (marker.is_file() and marker.read_text() == peer["requirement"] and py.exists()):
            log(f"installing {peer['requirement']} into {venv} (first time only)")
            for cmd in cmds:
                p = subprocess.run(cmd, capture_output=True, text=True)
                if p.returncode != 0:
                    self.errors[name] = f"{shlex.join(cmd)} failed: {p.stderr[-1500:]}"
                    log(self.errors[name])
                    return False
            marker.write_text(peer["requirement"])
        version = subprocess.run(
            [str(py), "-c", f"import importlib.metadata as m; print(m.version({peer['dist']!r}))"], capture_output=True, text=True
        ).stdout.strip()
        self.python[name] = str(py)
        self.info[name] = {
            "version": version,
            "requirement": peer["requirement"],
            "python": str(py.relative_to(ROOT)) if py.is_relative_to(ROOT) else str(py),
            "install_commands": [shlex.join(c).replace(str(ROOT) + "/", "") for c in cmds],
        }
        return True

    def available(self, name: str) -> bool:
        return name in self.only and name in self.python


def reflect_model(value: str) -> tuple[Path, str]:
    """(path, description) of --reflect-gguf's model: a .gguf file, or a registered local model name such as
    "reflect" (the installed Qwen2.5-Coder-1.5B-Instruct, assembled from its packages by textopt.engines.models
    on first use). ValueError with the reason when there is no such file or model."""
    path = Path(value).expanduser()
    if path.is_file():
        return path.resolve(), path.name
    if "/" not in value and not value.endswith(".gguf"):
        from textopt.engines.models import ModelFileError, find_model, model_path

        found = find_model(value)
        if found is not None:
            try:
                return model_path(value), found.upstream
            except ModelFileError as exc:
                raise ValueError(f"--reflect-gguf {value}: {exc}") from None
    raise ValueError(f"--reflect-gguf: no file {value!r}; give the path of a .gguf model file, or 'reflect' for the "
                     "installed Qwen2.5-Coder-1.5B-Instruct")


def _textopt_version() -> str:
    import textopt

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "textopt", "prompts"], capture_output=True, text=True).stdout.strip()
    return f"{textopt.__version__} (git {commit or '?'}{', with uncommitted changes' if dirty else ''})"


class Runner:
    """Runs one workload of one framework in a fresh process with its own cache folders."""

    def __init__(self, fw: Frameworks, scratch: Path) -> None:
        self.fw = fw
        self.scratch = scratch
        self.commands: list[str] = []
        self._n = 0

    def env(self, name: str, base_url: str | None, model: str, cache_dir: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "PYTHONPATH": str(ROOT) if name == "textopt" else "",
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no network at import, for every framework
                "TEXTOPT_CACHE_DIR": str(cache_dir / "textopt"),
                "XDG_CACHE_HOME": str(cache_dir / "xdg"),  # TextGrad's diskcache lives here
                "TEXTGRAD_LOG_DIR": str(cache_dir / "textgrad-logs"),
                "TRACE_DEFAULT_LLM_BACKEND": "CustomLLM",
                "TRACE_CUSTOMLLM_MODEL": model,
                "TRACE_CUSTOMLLM_API_KEY": "bench",
                "DSPY_CACHEDIR": str(cache_dir / "dspy"),  # DSPy's disk cache, per run like everyone's
                "PYTHONHASHSEED": env.get("PYTHONHASHSEED", ""),
            }
        )
        if base_url:
            env["TRACE_CUSTOMLLM_URL"] = base_url
        return {k: v for k, v in env.items() if v != "" or k == "PYTHONPATH"}

    def cache_dir(self, tag: str) -> Path:
        self._n += 1
        d = self.scratch / f"{self._n:03d}-{tag}"
        d.mkdir(parents=True)
        return d

    def run(self, name: str, workload: str, cfg: dict[str, Any], cache_dir: Path | None = None, timeout: float = 3600) -> dict[str, Any]:
        cache_dir = cache_dir or self.cache_dir(f"{name}-{workload}")
        cfg_path = cache_dir / f"config-{workload}-{self._n}.json"
        cfg_path.write_text(json.dumps(cfg))
        script = OWN_SCRIPTS[name] if name in OWN_SCRIPTS else PEERS[name]["script"]
        cmd = [self.fw.python[name], str(script), workload, str(cfg_path)]
        self.commands.append(_show(cmd))
        # Trace's backend (the optimizer's LLM) is configured by environment: the optimizer route and model.
        env = self.env(name, cfg.get("base_url"), cfg.get("opt_model") or cfg.get("model", ""), cache_dir)
        t0 = time.perf_counter()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cache_dir, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        wall = time.perf_counter() - t0
        for line in reversed(p.stdout.splitlines()):
            if line.startswith("BENCH_RESULT "):
                out = json.loads(line[len("BENCH_RESULT "):])
                out["wall_seconds"] = round(wall, 2)
                return out
        lines = [ln for ln in (p.stderr or p.stdout).splitlines() if ln.strip()]
        tail = " / ".join(ln.strip() for ln in lines[-3:])
        log(f"{name} {workload} failed (exit {p.returncode}): {tail}")
        return {"error": f"exit {p.returncode}: {tail[-600:]}"}


def _show(cmd: list[str]) -> str:
    """A command line as a reader can re-run it: repo-relative paths, `python` for the project's Python."""
    parts = ["python" if c == sys.executable else c for c in cmd]
    parts = ["<config.json>" if c.endswith(".json") and "scratch-" in c else c for c in parts]
    return shlex.join(parts).replace(str(ROOT) + "/", "")


# -- workloads ----------------------------------------------------------------------------------------------


def wl_timing(r: Runner, lat: LatencyServer, mode: dict[str, Any]) -> dict[str, Any]:
    """(a) backward + step wall time, 8-way fan-in and 10-deep chain, 50 ms per call: textopt vs TextGrad."""
    rows: dict[str, Any] = {}
    for name in ("textopt", "textgrad"):
        if not r.fw.available(name):
            continue
        for graph in ("fanin", "chain"):
            run_id = f"timing-{graph}-{name}-{r._n}"
            cfg = {"base_url": lat.base_url(run_id), "model": "latency", "max_tokens": mode["max_tokens"], "graph": graph,
                   "reps": mode["timing_reps"], "width": 8, "depth": 10}
            out = r.run(name, "timing", cfg)
            stats = lat.stats(run_id)
            secs = out.get("seconds", [])
            rows.setdefault(name, {})[graph] = {
                "median_s": median(secs), "runs_s": [round(s, 4) for s in secs], "all_updated": all(out.get("updated", [False])),
                "calls_per_run": stats.calls / max(1, len(secs)), "max_in_flight": stats.max_in_flight,
                **({"error": out["error"]} if "error" in out else {}),
            }
            log(f"(a) {name} {graph}: median {rows[name][graph]['median_s']}")
    res: dict[str, Any] = {"latency_s": LATENCY, "reps": mode["timing_reps"], "frameworks": rows}
    if "textopt" in rows and "textgrad" in rows:
        t, g = rows["textopt"], rows["textgrad"]
        if t["fanin"]["median_s"] and g["fanin"]["median_s"] and t["chain"]["median_s"] and g["chain"]["median_s"]:
            res["speedup_fanin"] = g["fanin"]["median_s"] / t["fanin"]["median_s"]
            res["speedup_chain"] = g["chain"]["median_s"] / t["chain"]["median_s"]
            res["target"] = "fan-in >= 5x faster than TextGrad; chain no slower (speedup >= 1, within 5% noise)"
            res["met_fanin"] = res["speedup_fanin"] >= 5
            res["met_chain"] = res["speedup_chain"] >= 0.95
    return res


def wl_prompt_size(r: Runner, lat: LatencyServer, mode: dict[str, Any]) -> dict[str, Any]:
    """(b) step prompt characters for traced chains: textopt OptoPrime vs Trace OptoPrime."""
    rows: dict[str, dict[str, Any]] = {}
    for name in ("textopt", "trace"):
        if not r.fw.available(name):
            continue
        for n in mode["nodes"]:
            run_id = f"prompt-{name}-{n}-{r._n}"
            cfg = {"base_url": lat.base_url(run_id), "model": "latency", "max_tokens": mode["max_tokens"], "nodes": n}
            out = r.run(name, "prompt_size", cfg, timeout=1800)
            stats = lat.stats(run_id)
            if "error" in out:
                row = {"available": False, "reason": out["error"]}
            elif not out.get("available"):
                row = {"available": False, "reason": out.get("reason", "")}
            else:
                # Trace's backward makes no call: the one call is the step. textopt reports its step calls itself.
                chars = out.get("client_prompt_chars") or stats.prompt_chars
                row = {"available": True, "step_prompt_chars": max(chars) if chars else None, "step_calls": len(chars),
                       "seconds": out.get("wall_seconds")}
            rows.setdefault(name, {})[str(n)] = row
            log(f"(b) {name} {n} nodes: {row.get('step_prompt_chars', row.get('reason'))}")
    res: dict[str, Any] = {"nodes": mode["nodes"], "frameworks": rows,
                           "target": "textopt <= 40% of Trace's prompt at 100 nodes; bounded at 2,000 (<= 2x its 100-node prompt)"}
    t, tr = rows.get("textopt", {}), rows.get("trace", {})
    if t.get("100", {}).get("available") and tr.get("100", {}).get("available"):
        res["ratio_100"] = t["100"]["step_prompt_chars"] / tr["100"]["step_prompt_chars"]
        res["met_100"] = res["ratio_100"] <= 0.40
    if t.get("2000", {}).get("available") and t.get("100", {}).get("available"):
        res["growth_100_to_2000"] = t["2000"]["step_prompt_chars"] / t["100"]["step_prompt_chars"]
        res["met_2000"] = res["growth_100_to_2000"] <= 2
    return res


def wl_import(r: Runner, mode: dict[str, Any]) -> dict[str, Any]:
    """(c) import time in a fresh process (median), measured inside the process around the import."""
    rows: dict[str, Any] = {}
    for name in FRAMEWORKS:
        if not r.fw.available(name):
            continue
        stmt = TEXTOPT_IMPORT if name == "textopt" else PEERS[name]["import"]
        code = f"import time; t = time.perf_counter(); {stmt}; print('BENCH_IMPORT', time.perf_counter() - t)"
        cmd = [r.fw.python[name], "-c", code]
        env = r.env(name, None, "", r.cache_dir(f"{name}-import"))
        times, err = [], ""
        for _ in range(mode["import_reps"]):
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=r.scratch)
            vals = [ln.split()[1] for ln in p.stdout.splitlines() if ln.startswith("BENCH_IMPORT")]
            if not vals:
                err = p.stderr[-800:]
                break
            times.append(float(vals[0]))
        r.commands.append(_show(cmd))
        rows[name] = {"statement": stmt, "median_s": median(times), "runs_s": [round(t, 4) for t in times],
                      **({"error": err} if err else {})}
        log(f"(c) {name}: {rows[name]['median_s']}")
    res: dict[str, Any] = {"frameworks": rows, "target": "import textopt < 0.5 s"}
    if rows.get("textopt", {}).get("median_s") is not None:
        res["met"] = rows["textopt"]["median_s"] < 0.5
    return res


def _examples(n: int, seed: int = 0) -> list[dict[str, str]]:
    from textopt.datasets import object_counting

    return [{"question": e.question, "answer": e.answer} for e in object_counting(n, seed=seed)]


OPTIMIZERS = [("textopt", "tgd", "textopt TGD"), ("textopt", "optoprime", "textopt OptoPrime"),
              ("textgrad", "tgd", "TextGrad TGD"), ("trace", "optoprime", "Trace OptoPrime")]
#: (d) also counts Search's proposals (one mutation per step); (e)/(f) keep the Trainer-style optimizers.
VALID_OPTIMIZERS = OPTIMIZERS[:2] + [("textopt", "search", "textopt Search")] + OPTIMIZERS[2:]


def valid_config(server: Any, model: str, run_id: str, mode: dict[str, Any], kind: str, train: list[dict[str, str]],
                 opt_server: Any = None, opt_model: str | None = None) -> dict[str, Any]:
    """One (d) run's config. With one model, every call goes to route `run_id` of `server` (as before). With a
    reflection model (opt_server, opt_model), the task model's calls (the system prompt's answers) go to route
    `<run_id>-task` of `server` as `model`, and the optimizer's calls (losses, gradients, updates, proposals) to
    route `run_id` of `opt_server` as `opt_model`; `base_url` is that optimizer route (Trace's backend reads it)."""
    cfg: dict[str, Any] = {"base_url": server.base_url(run_id), "model": model, "max_tokens": mode["max_tokens"],
                           "optimizer": kind, "steps": mode["valid_steps"], "batch": 1, "train": train, "eval": []}
    if opt_server is not None:
        cfg.update(base_url=opt_server.base_url(run_id), opt_url=opt_server.base_url(run_id),
                   task_url=server.base_url(run_id + "-task"), opt_model=opt_model or model)
    return cfg


def wl_valid_updates(r: Runner, server: Any, model: str, mode: dict[str, Any], engine_desc: str, publish: Any = None, *,
                     opt_server: Any = None, opt_model: str | None = None) -> dict[str, Any]:
    """(d) fraction of optimizer steps that yield a usable new value (non-empty, changed, no crash). With
    opt_server/opt_model (a reflection model), the optimizer's calls go there and are the row's usage; the
    task model's are counted apart (task_usage)."""
    train = _examples(max(mode["valid_steps"], 3), seed=1)
    rows: dict[str, Any] = {}
    for name, kind, label in VALID_OPTIMIZERS:
        if not r.fw.available(name) or (mode.get("optimizers") and label not in mode["optimizers"]):
            continue
        run_id = f"valid-{name}-{kind}-{r._n}"
        cfg = valid_config(server, model, run_id, mode, kind, train, opt_server, opt_model)
        out = r.run(name, "optimize", cfg)
        if "error" in out or not out.get("available", True):
            rows[label] = {"available": False, "reason": out.get("error") or out.get("reason", "")}
        else:
            steps = out["steps"]
            valid = sum(s["valid"] for s in steps)
            counts = Counter(s["error"][:160] for s in steps if s["error"])
            errors = sorted(counts)
            rows[label] = {"available": True, "steps": len(steps), "valid": valid, "rate": valid / len(steps),
                           "changed": sum(s["changed"] for s in steps), "errors": errors[:4],
                           "error_counts": dict(counts.most_common(6)),
                           "usage": {k: v for k, v in (opt_server or server).stats(run_id).to_dict().items() if k != "prompt_chars"},
                           "seconds": out.get("wall_seconds"),
                           "checkout": r.fw.info["textopt"]["version"],  # which code the row ran on, once rows are merged
                           # each step's outcome and, where the framework gives them, the optimizer model's replies
                           "per_step": [{k: s[k] for k in ("valid", "changed", "error", "replies") if k in s} for s in steps]}
            if opt_server is not None:  # the optimizer's calls are the reflection server's; the task model's apart
                rows[label]["task_usage"] = {k: v for k, v in server.stats(run_id + "-task").to_dict().items() if k != "prompt_chars"}
        log(f"(d) {label}: {rows[label].get('rate', rows[label].get('reason'))}")
        if publish is not None:
            publish(_valid_results(rows, mode, engine_desc))
    return _valid_results(rows, mode, engine_desc)


def merge_valid(earlier: dict[str, Any], now: dict[str, Any], mode: dict[str, Any]) -> dict[str, Any]:
    """(d) of this run with the rows of optimizers not run now (e.g. `--only textopt` after the peers) kept
    from an earlier run of the same number of steps."""
    if not earlier or earlier.get("steps") != now.get("steps") or earlier.get("engine") != now.get("engine"):
        return now  # another length, or other models (e.g. with/without a reflection model): never mixed
    rows = {**{k: v for k, v in earlier.get("optimizers", {}).items() if k not in now["optimizers"]}, **now["optimizers"]}
    return _valid_results(rows, mode, now["engine"])


def _valid_results(rows: dict[str, Any], mode: dict[str, Any], engine_desc: str) -> dict[str, Any]:
    res: dict[str, Any] = {"engine": engine_desc, "steps": mode["valid_steps"], "optimizers": rows,
                           "target": "textopt >= 95% of steps yield a usable new value"}
    ours = [row for label, row in rows.items() if label.startswith("textopt") and row.get("available")]
    if ours:
        res["met"] = all(row["rate"] >= 0.95 for row in ours)
    return res


def wl_end_to_end(r: Runner, server: Any, model: str, mode: dict[str, Any], engine_desc: str, wls: set[str],
                  publish: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(e) accuracy before/after optimizing the system prompt, tokens spent; (f) the identical re-run."""
    from textopt.datasets import exact_match

    e = mode["e2e"]
    data = _examples(e["eval"] + e["steps"] * e["batch"] + 5, seed=0)
    evals, train = data[: e["eval"]], data[e["eval"]:]
    rows: dict[str, Any] = {}
    reruns: dict[str, Any] = {}
    for name, kind, label in OPTIMIZERS:
        if not r.fw.available(name):
            continue
        cache_dir = r.cache_dir(f"{name}-{kind}-e2e")
        outs = []
        # The second, identical run reuses the first one's cache folders and base URL (textopt's cache key
        # includes the base URL), so the server's counts for the run are split by taking a difference.
        run_id = f"e2e-{name}-{kind}-{r._n}"
        cfg = {"base_url": server.base_url(run_id), "model": model, "max_tokens": mode["max_tokens"], "optimizer": kind,
               "steps": e["steps"], "batch": e["batch"], "train": train, "eval": evals}
        for attempt in (1, 2):
            if attempt == 2 and "f" not in wls:
                break
            prev = server.stats(run_id).to_dict()
            out = r.run(name, "optimize", cfg, cache_dir=cache_dir)
            now = server.stats(run_id).to_dict()
            outs.append((out, {k: now[k] - prev[k] for k in ("calls", "prompt_tokens", "completion_tokens", "total_tokens")}))
            if "error" in out or not out.get("available", True):
                break
        out, usage = outs[0]
        if "error" in out or not out.get("available", True):
            rows[label] = {"available": False, "reason": out.get("error") or out.get("reason", "")}
            reruns[label] = dict(rows[label])
            log(f"(e) {label}: {rows[label]['reason'][:200]}")
            continue
        acc = lambda replies: sum(exact_match(t, x["answer"]) for t, x in zip(replies, evals)) / len(evals)  # noqa: E731
        rows[label] = {"available": True, "accuracy_before": acc(out["before"]), "accuracy_after": acc(out["after"]),
                       "valid_steps": sum(s["valid"] for s in out["steps"]), "steps": len(out["steps"]),
                       "tokens": usage, "seconds": out.get("wall_seconds"), "final_prompt": out["final_prompt"][:500]}
        if len(outs) == 2 and "error" not in outs[1][0]:
            second, usage2 = outs[1]
            same = all(second.get(k) == out.get(k) for k in ("before", "after", "final_prompt", "steps"))
            reruns[label] = {"available": True, "calls_first": usage["calls"], "calls_second": usage2["calls"],
                             "identical": same, "seconds_first": out.get("wall_seconds"), "seconds_second": second.get("wall_seconds")}
        else:
            reruns[label] = {"available": False, "reason": outs[-1][0].get("error", "second run failed")}
        log(f"(e) {label}: {rows[label]['accuracy_before']:.2f} -> {rows[label]['accuracy_after']:.2f}; "
            f"(f) second run calls {reruns[label].get('calls_second')}")
        if publish is not None:  # save after every optimizer, so a run cut short keeps its rows
            publish(*_e2e_results(rows, reruns, evals, e, engine_desc))
    return _e2e_results(rows, reruns, evals, e, engine_desc)


def _e2e_results(rows: dict[str, Any], reruns: dict[str, Any], evals: list[Any], e: dict[str, Any], engine_desc: str) -> tuple[dict[str, Any], dict[str, Any]]:
    e2e = {"engine": engine_desc, "eval_size": len(evals), "steps": e["steps"], "batch": e["batch"], "optimizers": rows,
           "data": "textopt.datasets.object_counting(seed=0): first eval_size held out, the rest for training"}
    f = {"engine": engine_desc, "optimizers": reruns, "target": "0 engine calls on the second identical run; identical results"}
    ours = [row for label, row in reruns.items() if label.startswith("textopt") and row.get("available")]
    if ours:
        f["met"] = all(row["calls_second"] == 0 and row["identical"] for row in ours)
    return e2e, f


# -- output -------------------------------------------------------------------------------------------------


def _fmt(x: Any, unit: str = "", nd: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{nd}f}{unit}"
    return f"{x}{unit}"


def _met(flag: Any) -> str:
    return "—" if flag is None else ("**met**" if flag else "**missed**")


def render_markdown(res: dict[str, Any]) -> str:
    m, w = res["meta"], res["workloads"]
    L: list[str] = [MARK_START, "", f"## Side-by-side results ({m['mode']} run, {m['finished']})", ""]
    L.append("Command" + ("s" if len(m.get("runs", [])) > 1 else "") + ": " + " then ".join(f"`{c}`" for c in m.get("runs", [m["command"]]))
             + f". Machine: {m['machine']}. Versions: "
             + "; ".join(f"{LABEL[k]} {v['version']}" for k, v in m["frameworks"].items()) + ".")
    L.append("")
    L.append("**Noise.** " + m["noise"])
    L.append("")
    if "timing" in w:
        a = w["timing"]
        L += ["### (a) backward + step wall time (latency engine, 50 ms per call)", "",
              f"Median of {a['reps']} runs per graph, each run in the same process with fresh prompts (no cache hits).", "",
              "| framework | 8-way fan-in | calls / run | peak concurrency | 10-deep chain | calls / run |", "|---|---|---|---|---|---|"]
        for name, row in a["frameworks"].items():
            f_, c_ = row["fanin"], row["chain"]
            L.append(f"| {LABEL[name]} | {_fmt(f_['median_s'], ' s', 3)} | {f_['calls_per_run']:.0f} | {f_['max_in_flight']} | "
                     f"{_fmt(c_['median_s'], ' s', 3)} | {c_['calls_per_run']:.0f} |")
        if "speedup_fanin" in a:
            L += ["", f"textopt vs TextGrad: fan-in {a['speedup_fanin']:.2f}× faster (target ≥ 5×: {_met(a['met_fanin'])}); "
                      f"chain {a['speedup_chain']:.2f}× (target: no slower: {_met(a['met_chain'])})."]
        L.append("")
    if "prompt_size" in w:
        b = w["prompt_size"]
        L += ["### (b) OptoPrime step prompt on a traced chain (characters sent in the update call)", "",
              "| nodes | " + " | ".join(LABEL[k] for k in b["frameworks"]) + " |", "|---" * (1 + len(b["frameworks"])) + "|"]
        for n in b["nodes"]:
            cells = []
            for row in b["frameworks"].values():
                x = row.get(str(n), {})
                cells.append(f"{x['step_prompt_chars']:,}" if x.get("available") else "not available")
            L.append(f"| {n:,} | " + " | ".join(cells) + " |")
        reasons = {r.get("reason") for row in b["frameworks"].values() for r in row.values() if not r.get("available")}
        for reason in sorted(x for x in reasons if x):
            L.append(f"\nNot available: {reason}.")
        L += ["", f"Target: {b['target']}: at 100 nodes {_met(b.get('met_100'))}"
              + (f" ({b['ratio_100']:.0%} of Trace)" if "ratio_100" in b else " (no textopt figure)")
              + f"; at 2,000 {_met(b.get('met_2000'))}.", ""]
    if "import" in w:
        c = w["import"]
        L += ["### (c) import time (fresh process, median)", "", "| framework | statement | median | runs |", "|---|---|---|---|"]
        for name, row in c["frameworks"].items():
            L.append(f"| {LABEL[name]} | `{row['statement']}` | {_fmt(row['median_s'], ' s', 3)} | {len(row['runs_s'])} |")
        L += ["", f"Target: {c['target']}: {_met(c.get('met'))}.", ""]
    if "valid_updates" in w:
        d = w["valid_updates"]
        split = any("task_usage" in row for row in d["optimizers"].values())  # a separate reflection model
        L += [f"### (d) valid-update rate ({d['engine']}, {d['steps']} steps each)", ""]
        if split:
            L += ["Tokens and calls are the optimizer's, counted at the reflection model's server; the task model's "
                  "calls (the system prompt's answers) are counted at its own server, in the last column.", "",
                  "| optimizer | valid / steps | rate | optimizer tokens | optimizer calls | seconds | failures (counted, where recorded) "
                  "| task calls |", "|---|---|---|---|---|---|---|---|"]
        else:
            L += ["| optimizer | valid / steps | rate | tokens | calls | seconds | failures (counted, where recorded) |", "|---|---|---|---|---|---|---|"]
        for label, row in d["optimizers"].items():
            if row.get("available"):
                if row.get("error_counts"):  # failure reasons, counted (runs before the counts list them only)
                    err = "; ".join(f"{n} × {e[:90]}" for e, n in row["error_counts"].items())
                else:
                    err = (row["errors"][0] if row["errors"] else "")[:110]
                err = err.replace("|", "/").replace("\n", " ")[:300]
                L.append(f"| {label} | {row['valid']}/{row['steps']} | {row['rate']:.0%} | {row['usage']['total_tokens']:,} | "
                         f"{row['usage']['calls']} | {_fmt(row['seconds'], '', 0)} | {err or '—'} |"
                         + (f" {row['task_usage']['calls'] if 'task_usage' in row else '—'} |" if split else ""))
            else:
                L.append(f"| {label} | not available | — | — | — | — | {row['reason'][:110]} |" + (" — |" if split else ""))
        from quality import checkout_line

        L += ["", checkout_line([row for row in d["optimizers"].values() if row.get("available")]), "",
              f"Target: {d['target']}: {_met(d.get('met'))}.", ""]
    if "end_to_end" in w:
        e = w["end_to_end"]
        L += [f"### (e) end to end: object counting ({e['engine']})", "",
              f"{e['eval_size']} held-out questions scored before and after {e['steps']} steps of batch {e['batch']}; "
              f"the same examples for everyone ({e['data']}). Tokens and calls counted at the server.", "",
              "| optimizer | accuracy before | after | valid steps | tokens | calls | seconds |", "|---|---|---|---|---|---|---|"]
        for label, row in e["optimizers"].items():
            if row.get("available"):
                L.append(f"| {label} | {row['accuracy_before']:.0%} | {row['accuracy_after']:.0%} | {row['valid_steps']}/{row['steps']} | "
                         f"{row['tokens']['total_tokens']:,} | {row['tokens']['calls']} | {_fmt(row['seconds'], '', 0)} |")
            else:
                L.append(f"| {label} | not available | — | — | — | — | {row['reason'][:100]} |")
        L.append("")
    if "cache_rerun" in w:
        f = w["cache_rerun"]
        L += ["### (f) the same end-to-end run again, same cache folders", "",
              "| optimizer | calls, first run | calls, second run | identical results | seconds, second run |", "|---|---|---|---|---|"]
        for label, row in f["optimizers"].items():
            if row.get("available"):
                L.append(f"| {label} | {row['calls_first']} | {row['calls_second']} | {'yes' if row['identical'] else 'no'} | "
                         f"{_fmt(row['seconds_second'], '', 1)} |")
            else:
                L.append(f"| {label} | not available | — | — | — |")
        L += ["", f"Target: {f['target']}: {_met(f.get('met'))}.", ""]
    if "quality" in w:
        from quality import markdown as quality_md

        L += quality_md(w["quality"], w["quality"].get("plot"))
    if "throughput" in w:
        from throughput import markdown as throughput_md

        L += throughput_md(w["throughput"], w["throughput"].get("plot"))
    if res.get("notes"):
        L += ["### Targets missed, and why", ""] + [f"- {n}" for n in res["notes"]] + [""]
    L += ["### Exact command lines", "", "```"] + [c for fw in m["frameworks"].values() for c in fw.get("install_commands", [])]
    L += m["commands"][:40] + ["```", "", MARK_END]
    return "\n".join(L)


HEADER = """# Benchmarks

textopt side by side with [TextGrad](https://github.com/zou-group/textgrad) 0.1.8 and
[Trace](https://github.com/microsoft/Trace) (`trace-opt`, OptoPrime), on the same workloads and the same
engines, in one command:

```bash
python benchmarks/run.py            # full comparison (the local model makes it long on 2 cores)
python benchmarks/run.py --quick    # the same workloads, smaller
python benchmarks/run.py --workloads g --gguf MODEL.gguf --out DIR   # (g) with another local model
python benchmarks/run.py --workloads g --reflect-gguf reflect --out DIR   # (g): every optimizer on the 1.5B
```

The harness pip-installs each peer into its own virtual environment under `benchmarks/.cache/venvs/`
(git-ignored; never into the project's environment), starts llama.cpp's OpenAI-compatible server with the
embedded SmolLM2-135M model and a latency engine (a fake OpenAI server on 127.0.0.1, 50 ms per request,
canned replies), runs every framework through its own OpenAI-compatible client, and writes
`benchmarks/results.json` and the section below. Calls, prompt characters and tokens are counted at the
servers, identically for every framework. The section between the harness markers is regenerated on
each run; sections after it belong to other engineers.

"""


def write_markdown(path: Path, section: str) -> None:
    if path.exists():
        text = path.read_text(encoding="utf-8")
        if MARK_START in text and MARK_END in text:
            pre, rest = text.split(MARK_START, 1)
            _, post = rest.split(MARK_END, 1)
            text = pre + section + post
        else:  # keep whatever others wrote, after our section (their title line gives way to ours)
            lines = text.splitlines(keepends=True)
            if lines and lines[0].startswith("# "):
                lines = lines[1:]
            text = HEADER + section + "\n\n" + "".join(lines).lstrip("\n")
    else:
        text = HEADER + section + "\n"
    path.write_text(text, encoding="utf-8")


def missed_notes(res: dict[str, Any]) -> list[str]:
    """One line per missed or unmeasured target, with the reason the figures show."""
    w, notes = res["workloads"], []
    a = w.get("timing", {})
    if a.get("met_fanin") is False:
        t = a["frameworks"]["textopt"]["fanin"]
        g = a["frameworks"]["textgrad"]["fanin"]
        notes.append(
            f"(a) fan-in is {a['speedup_fanin']:.1f}×, not 5×. textopt's backward is concurrent (peak "
            f"{t['max_in_flight']} calls in flight) and its critical path is 3 rounds of calls (8 loss gradients, then 8 "
            "prompt gradients, then the update; short gradients are joined without a condensing call), against "
            "TextGrad's 17 calls one after another: 0.15 s against 0.85 s at 50 ms per call, a 5.7× ceiling. The rest "
            f"(measured {t['median_s']:.2f} s vs {g['median_s']:.2f} s) is client-side overhead per round: 8 concurrent "
            "requests through the openai SDK's async client take about 70 ms against 56 ms for one, on 2 cores. "
            "Reaching 5× needs that overhead cut (a leaner HTTP path), not a different schedule.")
    if a.get("met_chain") is False:
        notes.append(f"(a) chain is {a['speedup_chain']:.2f}× TextGrad: a chain is sequential in both; the difference is "
                     "per-call overhead in textopt's async path (and noise on a shared 2-core machine).")
    b = w.get("prompt_size", {})
    t_rows = b.get("frameworks", {}).get("textopt", {})
    if any(not row.get("available") for row in t_rows.values()):
        why = next(row.get("reason", "") for row in t_rows.values() if not row.get("available"))
        notes.append(f"(b) textopt's OptoPrime prompt was not measured ({why[:200]}); the row reads 'not available' "
                     "(no numbers are made up).")
    elif b.get("met_100") is False or b.get("met_2000") is False:
        notes.append("(b) textopt's OptoPrime prompt misses the size target (see the table).")
    c = w.get("import", {})
    if c.get("met") is False:
        notes.append("(c) `import textopt` took longer than 0.5 s on this run.")
    d = w.get("valid_updates", {})
    for label, row in d.get("optimizers", {}).items():
        if label.startswith("textopt") and row.get("available") and row["rate"] < 0.95:
            notes.append(f"(d) {label}: {row['rate']:.0%} valid ({row['valid']}/{row['steps']}); "
                         f"failures: {'; '.join(row['errors'])[:400] or 'the value did not change'}")
    h = w.get("throughput", {})
    if h.get("met") is False:
        t = h["frameworks"]["textopt"]["levels"]
        raw = (h.get("raw") or {}).get("levels", {})
        notes.append("(h) textopt evaluation: " + ", ".join(
            f"c={c}: {v['seconds']:.2f} s = " + (f"{v['x_raw']:.2f}× the raw client ({raw[c]['seconds']:.2f} s), " if "x_raw" in v else "")
            + f"{v['x_limit']:.2f}× n × 50 ms / c" for c, v in t.items())
            + "".join(f"; {k}: " + ", ".join(f"c={c}: {v['seconds']:.2f} s" for c, v in row["levels"].items())
                      for k, row in h["frameworks"].items() if k != "textopt" and row.get("available"))
            + ". Where the rest goes (profile in BENCHMARKS.md, 'Where textopt's time goes in (h)'): about 2 ms of CPU "
            "per call against the raw client's 0.7-0.9, all under one GIL on 2 cores shared with the server. Beside "
            "aiohttp itself (as much as in the raw client): the disk cache (lookup, atomic write), the hand-over "
            "from the caller's loop to the textopt loop and back, the sync metric on a worker thread, the event "
            "loops' own work. The SDK's request layer and tenacity's set-up are off the success path.")
    if w.get("quality"):
        from quality import missed as quality_missed

        notes += quality_missed(w["quality"])
    f = w.get("cache_rerun", {})
    for label, row in f.get("optimizers", {}).items():
        if label.startswith("textopt") and row.get("available") and not (row["calls_second"] == 0 and row["identical"]):
            notes.append(f"(f) {label}: the second run made {row['calls_second']} calls; identical: {row['identical']}.")
    return notes


# -- main ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="smaller workloads (a few minutes plus the model's time)")
    g.add_argument("--tiny", action="store_true", help="seconds: latency engine only, no model (for the test)")
    ap.add_argument("--only", default=",".join(FRAMEWORKS), help="comma-separated frameworks: " + ",".join(FRAMEWORKS))
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help="comma-separated subset of a-h (a-f: speed and robustness; g: quality at equal budget; h: evaluation throughput)")
    ap.add_argument("--tasks", default=None, help="(g) comma-separated subset of the mode's tasks; results for the other "
                    "tasks from an earlier run of the same mode are kept (so a long (g) can run one task at a time)")
    ap.add_argument("--optimizers", default=None,
                    help="(d, g) comma-separated optimizer labels to run, e.g. 'textopt OptoPrime,Trace OptoPrime' "
                         "(d) or 'textopt OptoPrime (Trainer)' (g); the other rows of an earlier run are kept")
    ap.add_argument("--levels", default=None, help="(h) comma-separated concurrency levels instead of 1,8,32,64 "
                    "(e.g. 8,32,64 for repeated measurements without the 50 s serial level)")
    ap.add_argument("--seeds", default=None, help="(g) comma-separated seeds instead of the mode's (e.g. 0 for a first look)")
    ap.add_argument("--out", default=None, help="folder for results.json and BENCHMARKS.md (default: the repo's)")
    ap.add_argument("--gguf", default=None,
                    help="(d-g) serve this GGUF model file with llama.cpp instead of the embedded SmolLM2-135M, as task "
                         "model and every optimizer's model (e.g. a 1B+ instruction model: the 135M one can't write "
                         "instructions, so (g) can't tell optimizers apart on it); needs --out, so figures of two models "
                         "never share a table")
    ap.add_argument("--reflect-gguf", default=None, metavar="PATH|reflect",
                    help="(d, g) start a second llama.cpp server with this GGUF model ('reflect': the installed "
                         "Qwen2.5-Coder-1.5B-Instruct) and send every optimizer's calls (losses, gradients, updates, "
                         "proposals, reflections) to it, counted at its own proxy, while the task model stays "
                         "SmolLM2-135M (or --gguf); needs --out, so figures of other models never share the repo's tables")
    ap.add_argument("--cache", default=str(HERE / ".cache"), help="folder for the peer venvs and scratch files")
    args = ap.parse_args(argv)

    only = [x.strip() for x in args.only.split(",") if x.strip()]
    bad = [x for x in only if x not in FRAMEWORKS]
    if bad:
        ap.error(f"unknown framework(s) {bad}; choose from {', '.join(FRAMEWORKS)}")
    wls = {x.strip() for x in args.workloads.split(",") if x.strip()}
    if wls - set(WORKLOADS):
        ap.error(f"unknown workload(s) {sorted(wls - set(WORKLOADS))}; choose from {','.join(WORKLOADS)}")
    mode_name = "tiny" if args.tiny else "quick" if args.quick else "full"
    mode = MODES[mode_name]
    if args.tasks:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        if not tasks or set(tasks) - set(mode["quality"]["tasks"]):
            ap.error(f"--tasks: choose from {', '.join(mode['quality']['tasks'])}")
        mode = {**mode, "quality": {**mode["quality"], "tasks": tasks}}
    if args.optimizers:
        labels = [x.strip() for x in args.optimizers.split(",") if x.strip()]
        from quality import OPTIMIZERS as G_OPTIMIZERS

        known = [label for _, _, label in VALID_OPTIMIZERS] + [label for _, _, label in G_OPTIMIZERS]
        unknown = [x for x in labels if x not in known]
        if not labels or unknown:
            ap.error(f"--optimizers: unknown {unknown or labels}; choose from {', '.join(dict.fromkeys(known))}")
        mode = {**mode, "optimizers": labels, "quality": {**mode["quality"], "optimizers": labels}}
    if args.seeds:
        try:
            seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
        except ValueError:
            ap.error(f"--seeds: comma-separated integers, got {args.seeds!r}")
        mode = {**mode, "quality": {**mode["quality"], "seeds": seeds}}
    if args.levels:
        try:
            levels = [int(x) for x in args.levels.split(",") if x.strip()]
        except ValueError:
            levels = []
        if not levels or min(levels) < 1:
            ap.error(f"--levels: comma-separated integers >= 1, got {args.levels!r}")
        mode = {**mode, "throughput_levels": levels}
    if args.gguf:
        if not Path(args.gguf).is_file():
            ap.error(f"--gguf: no file {args.gguf!r}; give the path of a .gguf model file")
        if not args.out:
            ap.error("--gguf needs --out DIR: figures of another model must not be merged into the repo's tables")
    reflect: tuple[Path, str] | None = None
    if args.reflect_gguf:
        if not args.out:
            ap.error("--reflect-gguf needs --out DIR: figures of another optimizer model must not be merged into the repo's tables")
        if args.tiny:
            ap.error("--reflect-gguf runs real models; it does not go with --tiny (the latency engine)")
        if wls & set("ef"):
            ap.error("--reflect-gguf applies to (d) and (g) (and leaves a, b, c, h as they are); (e) and (f) run one "
                     "model: choose --workloads among a,b,c,d,g,h")
        try:
            reflect = reflect_model(args.reflect_gguf)
        except ValueError as exc:
            ap.error(str(exc))
    out_json = Path(args.out) / "results.json" if args.out else HERE / "results.json"
    out_md = Path(args.out) / "BENCHMARKS.md" if args.out else ROOT / "BENCHMARKS.md"
    cache = Path(args.cache).resolve()
    cache.mkdir(parents=True, exist_ok=True)

    # Earlier results of the same mode are kept for workloads not run now (e.g. `--workloads a,b,c` after d,e,f).
    res: dict[str, Any] = {"meta": {}, "workloads": {}}
    previous: dict[str, Any] = {}
    if out_json.exists() and wls != set(WORKLOADS):
        try:
            previous = json.loads(out_json.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            previous = {}
        if previous.get("meta", {}).get("mode") == mode_name:
            res["workloads"] = previous.get("workloads", {})
        else:
            previous = {}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so servers and workers are stopped on kill

    opt_server: Any = None  # the reflection model's proxy (--reflect-gguf); None: optimizers use the task model
    opt_model: str | None = None
    models: dict[str, str] | None = None
    fw = Frameworks(cache, only)
    for name in only:
        fw.ensure(name)
    started = _dt.datetime.now(_dt.timezone.utc)
    command = "python benchmarks/run.py" + ("" if argv is None and len(sys.argv) == 1 else " " + shlex.join(argv if argv is not None else sys.argv[1:]))
    with ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="scratch-", dir=cache)))
        r = Runner(fw, scratch)

        def save(final: bool = False) -> None:
            _save(res, previous, out_json, out_md, mode_name, mode, command, started, fw, only, r.commands)

        lat = stack.enter_context(LatencyServer(LATENCY))
        if "a" in wls:
            res["workloads"]["timing"] = wl_timing(r, lat, mode)
            save()
        if "b" in wls:
            res["workloads"]["prompt_size"] = wl_prompt_size(r, lat, mode)
            save()
        if "c" in wls:
            res["workloads"]["import"] = wl_import(r, mode)
            save()
        if "h" in wls:
            from throughput import wl_throughput

            def publish_h(h: dict[str, Any]) -> None:
                res["workloads"]["throughput"] = h
                save()

            earlier_h = res["workloads"].get("throughput") or {}
            publish_h(wl_throughput(r, lat, mode, publish_h, earlier=earlier_h))
        if wls & set("defg"):
            if mode["real_model"]:
                from textopt.engines.local import smollm2_path

                gguf = Path(args.gguf).resolve() if args.gguf else smollm2_path()
                model = Path(args.gguf).stem if args.gguf else "smollm2"
                llama = stack.enter_context(LlamaServer(gguf, cache / "llama-server.log", alias=model))
                server: Any = stack.enter_context(CountingProxy(llama.base_url))
                task_name = gguf.name if args.gguf else "SmolLM2-135M-Instruct Q4_1"
                desc = f"{task_name} via llama.cpp's OpenAI-compatible server"
                r.commands.append(_show(llama.cmd))
                if reflect is not None:  # every optimizer's calls go to a second server, with its own model and proxy
                    rllama = stack.enter_context(LlamaServer(reflect[0], cache / "llama-reflect-server.log", alias=REFLECT_ALIAS))
                    opt_server = stack.enter_context(CountingProxy(rllama.base_url))
                    opt_model = REFLECT_ALIAS
                    models = {"task": task_name, "optimizer": reflect[1]}
                    desc = (f"task model {task_name}, optimizer/reflection model {reflect[1]}, each via its own llama.cpp "
                            "OpenAI-compatible server")
                    r.commands.append(_show(rllama.cmd))
            else:
                server, model, desc = lat, "latency", "latency engine (tiny mode: exercises the code path, not the model)"
            if "d" in wls:
                earlier_d = res["workloads"].get("valid_updates") or {}

                def publish_d(d: dict[str, Any]) -> None:
                    res["workloads"]["valid_updates"] = merge_valid(earlier_d, d, mode)
                    save()

                publish_d(wl_valid_updates(r, server, model, mode, desc, publish_d, opt_server=opt_server, opt_model=opt_model))
            if wls & set("ef"):
                def publish(e2e: dict[str, Any], rerun: dict[str, Any]) -> None:
                    if "e" in wls:
                        res["workloads"]["end_to_end"] = e2e
                    if "f" in wls:
                        res["workloads"]["cache_rerun"] = rerun
                    save()

                publish(*wl_end_to_end(r, server, model, mode, desc, wls, publish))
            if "g" in wls:
                from quality import _aggregate, merge_quality, wl_quality

                prev_g = res["workloads"].get("quality") or {}
                # Rows of other models (another task model, with or without a reflection model) are never merged in.
                earlier = prev_g.get("tasks", {}) if prev_g.get("engine") == desc else {}

                def publish_g(g: dict[str, Any]) -> None:
                    for t in g["tasks"].values():  # which code each row ran on, once rows of several runs are merged
                        for row in t.get("runs", []):
                            row.setdefault("checkout", fw.info["textopt"]["version"])
                    out = g
                    if args.tasks or args.seeds or args.optimizers:
                        # Tasks not (yet) run now are kept too, so an interrupted --seeds run loses nothing.
                        out = merge_quality(earlier, g, keep_tasks=True)
                        _aggregate(out)
                    res["workloads"]["quality"] = out
                    save()

                publish_g(wl_quality(r, server, model, mode, desc, publish_g, opt_server=opt_server, opt_model=opt_model,
                                     models=models))
        save(final=True)
    log(f"wrote {out_json} and {out_md} in {res['meta']['seconds']} s")
    return 0


def _save(res: dict[str, Any], previous: dict[str, Any], out_json: Path, out_md: Path, mode_name: str, mode: dict[str, Any],
          command: str, started: _dt.datetime, fw: Frameworks, only: list[str], commands: list[str]) -> None:
    """Write results.json and the markdown section (called after every workload, so a long run that is cut
    short keeps what it measured)."""
    finished = _dt.datetime.now(_dt.timezone.utc)
    prev_meta = previous.get("meta", {})
    runs = list(prev_meta.get("runs", [])) + [command]
    frameworks = dict(prev_meta.get("frameworks", {}))
    frameworks.update({k: v for k, v in fw.info.items() if k in only})
    res["meta"] = {
        "mode": mode_name, "mode_settings": mode, "command": command, "started": started.strftime("%Y-%m-%d %H:%M UTC"),
        "finished": finished.strftime("%Y-%m-%d %H:%M UTC"), "seconds": round((finished - started).total_seconds(), 1),
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "noise": ("timings come from a 2-core machine whose load varied between the runs merged here (other work at times): "
                  "expect ±20% between runs; ratios are taken within one run. Timing uses the latency engine, not the model. "
                  "Every framework gets the same completion cap "
                  f"({mode['max_tokens']} tokens) so the 135M model's rambling doesn't dominate."),
        "frameworks": frameworks, "install_errors": fw.errors, "runs": runs,
        "commands": sorted(set(prev_meta.get("commands", [])) | set(commands)),
    }
    for key, mod, png in (("throughput", "throughput", "throughput.png"), ("quality", "quality", "quality.png")):
        if key in res["workloads"] and (res["workloads"][key].get("frameworks") or res["workloads"][key].get("tasks")):
            plotted = __import__(mod).plot(res["workloads"][key], out_json.parent / png)
            if plotted is not None:
                res["workloads"][key]["plot"] = os.path.relpath(plotted, out_md.parent)
    res["notes"] = missed_notes(res)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(res, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    write_markdown(out_md, render_markdown(res))


if __name__ == "__main__":
    sys.exit(main())
