"""Optimizers: TGD (textual gradient descent), and the shared base."""
from .base import Optimizer, UpdateFailure
from .tgd import TGD

__all__ = ["Optimizer", "TGD", "UpdateFailure"]
