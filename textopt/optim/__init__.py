"""Optimizers: TGD (textual gradient descent), and the shared base."""
from .base import Optimizer, UpdateFailure
from .optoprime import OptoPrime
from .tgd import TGD

__all__ = ["Optimizer", "OptoPrime", "TGD", "UpdateFailure"]
