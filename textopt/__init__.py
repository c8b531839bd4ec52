"""textopt: PyTorch-style textual autodiff for the text inside LLM pipelines.

Variables hold prompts, code and answers; running a pipeline records a graph; `loss.backward()`
asks an LLM for natural-language gradients; optimizers rewrite the trainable variables.
Importing textopt is cheap and side-effect free: providers, networkx and jinja2 load on first use.
"""
from __future__ import annotations

from typing import Any

from .context import using
from .engines import Completion, Engine, ScriptedEngine, Usage, get_engine, track_usage
from .errors import BudgetExceeded, EngineError, GraphError, ParseError, TextoptError, UpdateError
from .evaluate import EvalReport, Score, aevaluate, evaluate  # eager on purpose (stdlib only): `import textopt.evaluate` would otherwise shadow the function with the module
from .function import Feedback, Function, OpContext, OpDescription, OpError
from .graph import graph  # eager on purpose: `import textopt.graph` would otherwise shadow the function with the module (networkx stays lazy)
from .loss import TextLoss
from .image import Image, ImagesNotSupported
from .ops import LLM, FormattedLLMCall, LLMCall, sum
from .optim import TGD, OptoPrime, Optimizer, Proposal, StepReport, UpdateFailure
from .trace import TraceError, trace
from .variable import Gradient, Variable

__version__ = "0.1.0"

__all__ = [
    "LLM", "LLMCall", "OptoPrime", "TGD", "TraceError", "BudgetExceeded", "Completion", "Engine", "EngineError", "Feedback",
    "Function", "Gradient", "GraphError", "OpContext", "OpDescription", "OpError", "Optimizer", "ParseError", "Proposal", "StepReport", "ScriptedEngine", "TextLoss",
    "TextoptError", "UpdateError", "UpdateFailure", "Usage", "Variable", "get_engine", "sum",
    "trace", "graph", "track_usage", "using",
    "Trainer", "History", "resume", "save", "load", "datasets", "aegis",  # lazy (see _LAZY)
    "evaluate", "aevaluate", "EvalReport", "Score",
    "Search",  # lazy: candidate search (issue 10)
    "FormattedLLMCall", "Image", "ImagesNotSupported",  # several fields, images (issue 15)
    "humaneval",  # lazy: the HumanEval code task (issue 26; its data needs the [code] extra)
]

_LAZY: dict[str, tuple[str, str | None]] = {
    "graph": ("textopt.graph", "graph"),
    # training runs (issue 5): loaded on first touch
    "Trainer": ("textopt.train", "Trainer"),
    "History": ("textopt.train", "History"),
    "resume": ("textopt.recipes", "resume_trainer"),
    "save": ("textopt.checkpoint", "save"),
    "load": ("textopt.checkpoint", "load"),
    "datasets": ("textopt.datasets", None),
    "aegis": ("textopt.aegis", None),  # attack/defense co-evolution (issue 4)
    "Search": ("textopt.search", "Search"),  # candidate search (issue 10)
    "humaneval": ("textopt.humaneval", None),  # code task: HumanEval problems, tests in the sandbox (issue 26)
}


def __getattr__(name: str) -> Any:  # PEP 562: heavy parts load on first touch
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        value = mod if attr is None else getattr(mod, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'textopt' has no attribute {name!r}")
