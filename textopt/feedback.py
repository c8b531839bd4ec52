"""Textual feedback (a "textual gradient"): what a consumer says about a value, or the objective itself."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Feedback:
    """One piece of textual feedback: what it says and which consumer sent it.

    On a variable (`Variable.gradients`), `source` / `source_role` name the consumer whose op sent it.
    `is_objective` is textopt's one objective marker: the message says "this value *is* the objective", so
    `text` is the value itself and the task is to improve it, not to follow criticism of it. Backward hands
    an op's backward such a message about its output when nobody criticised the output: for the root it
    starts from, and for a loss's output (`Variable.is_loss`). An op's backward may return one for an input
    (Sum does when it is the objective): that input then receives the objective (its own text) in this pass.
    The marker lives only on the message, so a pass leaves no trace of it on the graph.
    """

    text: str
    source: str = ""  # name of the variable whose op produced this feedback
    source_role: str = ""
    is_objective: bool = False

    @classmethod
    def objective(cls, text: str) -> "Feedback":
        """The objective message about a value whose own text is `text` (the one way such a message is made)."""
        return cls(text=text, is_objective=True)
