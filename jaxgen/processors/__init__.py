"""Logits processors: pure, composable, jit-friendly pytrees (see ``base``)."""

from jaxgen.processors.base import (
    Chain,
    Context,
    LogitsProcessor,
    Stateless,
    apply,
    chain,
    stateless,
)
from jaxgen.processors.constraints import MinLength, MinNewTokensLength
from jaxgen.processors.sampling import MinP, Temperature, TopK, TopP

__all__ = [
    "Chain", "Context", "LogitsProcessor", "Stateless", "apply", "chain", "stateless",
    "MinLength", "MinNewTokensLength", "MinP", "Temperature", "TopK", "TopP",
]
