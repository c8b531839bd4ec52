"""Optimizers: TGD (textual gradient descent), OptoPrime (trace-based), and the contract they share."""
from .base import Optimizer, PastStep, Proposal, StepReport, UpdateFailure
from .optoprime import OptoPrime
from .tgd import TGD

__all__ = ["Optimizer", "OptoPrime", "PastStep", "Proposal", "StepReport", "TGD", "UpdateFailure"]
