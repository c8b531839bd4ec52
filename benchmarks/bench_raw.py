"""The raw-client floor of workload (h): the requests textopt's evaluation sends, sent by a bare aiohttp client.

    python benchmarks/bench_raw.py throughput CONFIG.json

prints one line `BENCH_RESULT {json}`, like bench_textopt.py (its sibling: the runner calls this one for the
name "raw"). No framework: one `aiohttp.ClientSession` per level, a semaphore of c, a JSON POST to
/v1/chat/completions with the body textopt's openai engine sends for the same example (model, one user
message, temperature, max_tokens), the reply text read from `choices[0].message.content`, and the same
label check every framework is scored with (benchmarks/peers/_labels.py). Same warm-up rule and the same
clock as textopt's row: the session is made before the clock starts, its connections are opened inside it.
What this takes on the latency server is the practical floor of the machine: the server's own CPU, the
kernel's loopback and one minimal client, on the same 2 cores.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))

HOW = "aiohttp.ClientSession + asyncio.Semaphore(c), json POST /v1/chat/completions"


async def throughput(cfg: dict[str, Any]) -> dict[str, Any]:
    """Each level (after one untimed warm-up request on its own route) as textopt's worker runs it."""
    import aiohttp
    from _labels import render, score

    labels = cfg["labels"]
    runs = []
    for run in [{"concurrency": 1, "base_url": cfg["warmup_url"], "warmup": True, "label": "warm-up"}] + cfg["runs"]:
        c = run["concurrency"]
        url = run["base_url"].rstrip("/") + "/chat/completions"
        examples = cfg["examples"][:1] if run.get("warmup") else cfg["examples"]
        sem = asyncio.Semaphore(c)
        # the timeout textopt's worker gives its engine; Authorization as any OpenAI client sends it
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer no-key"},
                                         timeout=aiohttp.ClientTimeout(total=120.0)) as session:

            async def one(ex: dict[str, str]) -> float:
                async with sem:
                    body = {"model": cfg["model"],
                            "messages": [{"role": "user", "content": render(cfg["template"], f"(level {run.get('label', c)}) {ex['question']}")}],
                            "temperature": 0.0}
                    if cfg.get("max_tokens") is not None:
                        body["max_tokens"] = cfg["max_tokens"]
                    async with session.post(url, json=body) as resp:
                        resp.raise_for_status()
                        data = await resp.json()
                    text = data["choices"][0]["message"]["content"] or ""
                    return score(text, ex["answer"], labels)[0]

            t0 = time.perf_counter()
            results = await asyncio.gather(*(one(ex) for ex in examples), return_exceptions=True)
            seconds = time.perf_counter() - t0
        failed = [r for r in results if isinstance(r, BaseException)]
        if not run.get("warmup"):
            runs.append({"concurrency": c, "seconds": seconds, "scored": len(results) - len(failed), "errors": len(failed),
                         **({"first_error": f"{type(failed[0]).__name__}: {failed[0]}"[:300]} if failed else {})})
    return {"available": True, "how": HOW, "runs": runs}


WORKLOADS = {"throughput": throughput}


def main() -> None:
    workload, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    print("BENCH_RESULT " + json.dumps(asyncio.run(WORKLOADS[workload](cfg))), flush=True)


if __name__ == "__main__":
    main()
