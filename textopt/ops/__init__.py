"""Built-in ops. Each file holds one op: its forward and its textual backward together."""
from .formatted import FormattedLLMCall
from .llm import LLM, LLMCall
from .sum import Sum, aggregate

__all__ = ["FormattedLLMCall", "LLM", "LLMCall", "Sum", "aggregate"]
