"""textopt: PyTorch-style textual autodiff for the text inside LLM pipelines.

Variables hold prompts, code and answers; running a pipeline records a graph; `loss.backward()`
asks an LLM for natural-language gradients; optimizers rewrite the trainable variables.
Importing textopt is cheap and side-effect free: providers, networkx and jinja2 load on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

from .context import using
from .engines import Completion, Engine, ScriptedEngine, Usage, get_engine, track_usage
from .errors import BudgetExceeded, EngineError, GraphError, ParseError, TextoptError, UpdateError
from .evaluate import EvalReport, Score, aevaluate, evaluate  # eager on purpose (stdlib only): `import textopt.evaluate` would otherwise shadow the function with the module
from .function import Feedback, Function, OpContext, OpDescription, OpError
from .graph import graph  # eager on purpose: `import textopt.graph` would otherwise shadow the function with the module (networkx stays lazy)
from .module import Module
from .image import Image, ImagesNotSupported
from .loss import TextLoss
from .ops import LLM, FormattedLLMCall, LLMCall, aggregate
from .optim import TGD, Optimizer, OptoPrime, Proposal, StepReport, UpdateFailure
from .trace import TraceError, trace
from .usercall import nonblocking
from .variable import Gradient, Variable  # noqa: F401  (Gradient: the old name of Feedback)

__version__ = "0.1.0"

__all__ = [
    # the graph: values, ops and their textual backward
    "Variable", "Feedback", "Function", "OpContext", "OpDescription", "OpError", "LLM", "LLMCall", "FormattedLLMCall",
    "TextLoss", "aggregate", "trace", "TraceError", "graph", "Image", "ImagesNotSupported",
    # engines: every model behind one Request -> Completion interface
    "Engine", "ScriptedEngine", "Completion", "Usage", "get_engine", "track_usage", "using",
    # optimizers: Optimizer.step() for hand-written loops
    "Optimizer", "TGD", "OptoPrime", "Proposal", "StepReport", "UpdateFailure",
    # composing: a pipeline whose trainable text is found, saved and loaded as one
    "Module",
    # evaluation and the runners (fit() / afit() -> result with .best, .history, .run_dir)
    "evaluate", "aevaluate", "EvalReport", "Score", "nonblocking", "Trainer", "History", "Search", "resume", "save", "load",
    # errors
    "TextoptError", "GraphError", "EngineError", "ParseError", "UpdateError", "BudgetExceeded",
    # submodules, loaded on first touch: data sets, AEGIS co-evolution, the HumanEval code task ([code] extra)
    "datasets", "aegis", "humaneval",
]

#: Names loaded on first touch (PEP 562), so `import textopt` stays light: the run layer (filelock, tqdm),
#: the recipes and the optional parts are imported only when used.
_LAZY: dict[str, tuple[str, str | None]] = {
    "graph": ("textopt.graph", "graph"),
    "Trainer": ("textopt.train", "Trainer"),
    "History": ("textopt.train", "History"),
    "resume": ("textopt.recipes", "resume_trainer"),
    "save": ("textopt.checkpoint", "save"),
    "load": ("textopt.checkpoint", "load"),
    "datasets": ("textopt.datasets", None),
    "aegis": ("textopt.aegis", None),
    "Search": ("textopt.search", "Search"),
    "humaneval": ("textopt.humaneval", None),
}


def __getattr__(name: str) -> Any:  # PEP 562: heavy parts load on first touch
    if name in _LAZY:
        module, attr = _LAZY[name]
        mod = importlib.import_module(module)
        value = mod if attr is None else getattr(mod, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'textopt' has no attribute {name!r}")
