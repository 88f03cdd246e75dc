"""Length constraints on the eos set: MinLength and MinNewTokensLength."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import struct

from jaxgen.processors.base import LogitsProcessor, as_leaf, id_mask, pad_ids

NEG_INF = -float("inf")


def _eos_leaf(eos_token_id: Any) -> Any:
    if isinstance(eos_token_id, (int, list, tuple)):
        ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        if any(not isinstance(i, int) or i < 0 for i in ids):
            raise ValueError(f"eos_token_id must be non-negative ints, got {eos_token_id!r}")
        return pad_ids(ids)
    return eos_token_id


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or (isinstance(value, int) and value < 0):
        raise ValueError(f"{name} must be an int >= 0, got {value!r}")


@struct.dataclass
class MinLength(LogitsProcessor):
    """Forbid eos while the sequence (prompt included) is shorter than ``min_length``."""

    min_length: Any = 0
    eos_token_id: Any = ()

    def __post_init__(self):
        _check_count("MinLength.min_length", self.min_length)
        object.__setattr__(self, "min_length", as_leaf(self.min_length, jnp.int32))
        object.__setattr__(self, "eos_token_id", _eos_leaf(self.eos_token_id))

    def __call__(self, logits, state, ctx):
        ban = id_mask(jnp.asarray(self.eos_token_id), logits.shape[-1]) & (
            ctx.cur_len < self.min_length)
        return jnp.where(ban[None, :], NEG_INF, logits), state


@struct.dataclass
class MinNewTokensLength(LogitsProcessor):
    """Forbid eos until ``min_new_tokens`` tokens follow the first ``prompt_length_to_skip``."""

    prompt_length_to_skip: Any = 0
    min_new_tokens: Any = 0
    eos_token_id: Any = ()

    def __post_init__(self):
        _check_count("MinNewTokensLength.prompt_length_to_skip", self.prompt_length_to_skip)
        _check_count("MinNewTokensLength.min_new_tokens", self.min_new_tokens)
        object.__setattr__(self, "prompt_length_to_skip",
                           as_leaf(self.prompt_length_to_skip, jnp.int32))
        object.__setattr__(self, "min_new_tokens", as_leaf(self.min_new_tokens, jnp.int32))
        object.__setattr__(self, "eos_token_id", _eos_leaf(self.eos_token_id))

    def __call__(self, logits, state, ctx):
        new_tokens = ctx.cur_len - self.prompt_length_to_skip
        ban = id_mask(jnp.asarray(self.eos_token_id), logits.shape[-1]) & (
            new_tokens < self.min_new_tokens)
        return jnp.where(ban[None, :], NEG_INF, logits), state
