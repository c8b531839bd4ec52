"""Build textopt's HTML API reference from its docstrings with pdoc.

    python docs/build_api.py [OUT]        # default OUT: docs/api (git-ignored)

Exits 1 if pdoc warned about anything (an import that failed, an annotation it could not resolve, ...),
so CI (tests/test_docs.py) catches a reference that would render broken. Needs no network and no model:
pdoc only imports the modules, and importing textopt loads no provider or model.
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

# What a user imports: the package (its `__all__`: ops, losses, optimizers, engines, training, evaluation,
# search) plus the submodules whose names are public import paths (subclassing contracts, the run layer).
MODULES = [
    "textopt",
    "textopt.engines",
    "textopt.optim",
    "textopt.run",
    "textopt.search",
    "textopt.recipes",
]


def build(out: Path) -> list[str]:
    """Render MODULES into `out`; return pdoc's warnings (empty when the build is clean)."""
    try:
        import pdoc
        import pdoc.render
    except ModuleNotFoundError as exc:
        if exc.name != "pdoc":
            raise
        raise SystemExit("docs: pdoc is not installed; it comes with the dev extra: pip install -e '.[dev]' "
                         "(or pip install 'pdoc>=15')") from None

    # Docstrings here are Markdown (`code`, *emphasis*); source links are left out to keep the build fast.
    pdoc.render.configure(docformat="markdown", show_source=False, footer_text="textopt API reference")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pdoc.pdoc(*MODULES, output_directory=out)
    return [f"{w.category.__name__}: {w.message}" for w in caught]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else Path(__file__).resolve().parent / "api"
    start = time.perf_counter()
    problems = build(out)
    for line in problems:
        print(f"docs: {line}", file=sys.stderr)
    if problems:
        print(f"docs: {len(problems)} warning(s); the reference in {out} may be incomplete", file=sys.stderr)
        return 1
    print(f"API reference: {out / 'index.html'} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
