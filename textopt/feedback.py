"""Textual feedback (a "textual gradient"): what a consumer says about a value, or the objective itself."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Feedback:
    """One piece of textual feedback: what it says and which consumer sent it.

    On a variable (`Variable.gradients`), `source` / `source_role` name the consumer whose op sent it. Handed
    to an op's backward about its output, `is_objective` says the output *is* the objective (a loss), so `text`
    is the output itself and the task is to improve it, not to follow further feedback. An op's backward may
    also return a Feedback with is_objective=True for an input (as Sum does when it is the objective): that
    input then counts as an objective itself in this backward pass.
    """

    text: str
    source: str = ""  # name of the variable whose op produced this feedback
    source_role: str = ""
    is_objective: bool = False
