"""AEGIS: co-evolution of attack and defense prompts for prompt-injection detection.

    from textopt import aegis
    examples = aegis.load_corpus("bastion")
    report = aegis.evaluate_detector(aegis.DEFAULT_DEFENSE, examples, engine="local")
    result = aegis.coevolve(list(aegis.DEFAULT_ATTACKS), aegis.DEFAULT_DEFENSE, benign=list(aegis.ESSAYS))

Imported on demand (`textopt.aegis`), never at `import textopt`.
"""
from __future__ import annotations

from .buffer import GradientBuffer
from .corpus import CorpusError, Example, load_corpus, read_corpus_file, split
from .judge import Decision, Judge, parse_detection, parse_grade
from .loop import CoEvolution, acoevolve, aevaluate_detector, coevolve, evaluate_detector
from .outputs import history_csv, plot_rounds, write_outputs
from .state import CoevolutionState, Result
from .metrics import AttackCase, AttackReport, Case, DetectorReport, combine, relative_gain
from .pool import Candidate, Pool
from .scenario import DEFAULT_ATTACKS, DEFAULT_DEFENSE, ESSAYS, EssayGrading, Scenario

__all__ = [
    "AttackCase", "AttackReport", "Candidate", "Case", "CorpusError", "DEFAULT_ATTACKS", "DEFAULT_DEFENSE",
    "Decision", "DetectorReport", "ESSAYS", "EssayGrading", "Example", "GradientBuffer", "Judge", "Pool", "Result",
    "Scenario", "acoevolve", "aevaluate_detector", "coevolve", "combine", "evaluate_detector", "load_corpus",
    "parse_detection", "parse_grade", "read_corpus_file", "relative_gain", "split", "write_outputs", "history_csv",
    "plot_rounds", "CoevolutionState", "CoEvolution",
]
