"""OptoPrime step prompt size (system + user characters) on chains of traced calls.

    python benchmarks/trace_prompt_size.py [10 100 2000]

Same workload as benchmarks/peers/trace_bench.py (`prompt_size`): a trainable text rotated by one
character per traced call, feedback on the last value. A second row per size uses 2,000-character
values to show the elision of long intermediates. The engine is scripted (the size of what would be
sent is what is measured; the reply does not matter), and the request it recorded is measured.
"""
from __future__ import annotations

import json
import sys

sys.path.insert(0, str(__import__('pathlib').Path(__file__).resolve().parents[1]))  # run from a checkout
import textopt as to  # noqa: E402


@to.trace
def rotate(s: str) -> str:
    """Rotate the text by one character."""
    return s[1:] + s[:1]


def measure(nodes: int, text: str) -> int:
    x = to.Variable(text, role="text to transform", requires_grad=True, name="text")
    v = x
    for _ in range(nodes):
        v = rotate(v)
    engine = to.ScriptedEngine(json.dumps({"reasoning": "r", "suggestion": {"text": "The " + text}}))
    opt = to.OptoPrime([x], engine=engine)
    opt.zero_grad()
    opt.backward(v, "The final text should start with 'The'.")
    opt.step()
    assert len(engine.calls) == 1
    return sum(len(m["content"]) for m in engine.calls[0])


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10, 100, 2000]
    short = "the quick brown fox jumps over the lazy dog"
    long = (short + " ") * 46  # ~2,000 chars per value
    print(f"{'nodes':>6} {'short values':>14} {'2k-char values':>15}")
    for n in sizes:
        print(f"{n:>6} {measure(n, short):>14,} {measure(n, long):>15,}")


if __name__ == "__main__":
    main()
