"""The decode state pytree carried through the ``lax.while_loop``."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxgen.processors.base import Chain, Context


@struct.dataclass
class Knobs:
    """Everything a user tunes between calls, as array leaves (no recompiles).

    processors: the chain applied to every step's logits (transformers' order).
    warpers: sampling warpers applied after ``processors`` (empty for greedy).
    eos: [n_eos] int32 eos ids padded with -1.
    pad: int32 scalar written by finished rows.
    length_penalty: float32 scalar (beam search).
    diversity_penalty: float32 scalar (group beam search).
    stopping: in-loop stopping criteria (``jaxgen.stopping``), OR-ed after every token.
    """

    processors: Chain
    warpers: Chain
    eos: Int[Array, " n_eos"]
    pad: Int[Array, ""]
    length_penalty: Float[Array, ""]
    diversity_penalty: Float[Array, ""]
    stopping: tuple[Any, ...] = ()


class LoopState:
    """What every decode state shares: the token buffer, its mask and the write slot."""

    sequences: Any
    attention_mask: Any
    cur: Any
    start: Any
    elapsed: Any
    prompt_end: int

    @property
    def new_tokens(self) -> Int[Array, ""]:
        """Number of tokens generated so far (slots since the prompt bucket)."""
        return self.cur - self.prompt_end

    def context(self) -> Context:
        """The processors' view of the buffer at the slot being chosen."""
        return Context(sequences=self.sequences, attention_mask=self.attention_mask,
                       cur=self.cur, start=self.start, elapsed=self.elapsed)


@struct.dataclass
class DecodeState(LoopState):
    """Fixed-shape state of greedy / sampling decoding.

    Buffer layout, one row (``P`` = prompt bucket, ``start`` = bucket padding)::

        slot:  0 .. start-1 | start .. P-1      | P .. cur-1 | cur .. buffer-1
               bucket pad   | caller's prompt   | generated  | pad (not yet written)
    """

    sequences: Int[Array, "batch buffer"]      # token buffer, see layout above
    attention_mask: Int[Array, "batch buffer"]  # 1 on real prompt tokens and written slots
    position: Int[Array, " batch"]              # position id of the token in slot cur - 1
    cache: Any                                  # model KV cache, index == cur - 1 in the loop
    cur: Int[Array, ""]                         # next slot to write
    start: Int[Array, ""]                       # first slot of the caller's input_ids
    max_len: Int[Array, ""]                     # stop before writing this slot
    elapsed: Float[Array, ""]                   # host wall clock before this chunk (s)
    done: Bool[Array, " batch"]                 # row has produced eos (then writes pad)
    rng: Any                                    # [batch] typed keys, one stream per row
    knobs: Knobs
    proc_state: Any                             # (processors state, warpers state)
    scores: Float[Array, "batch new vocab"] | None  # processed scores when output_scores
    prompt_end: int = struct.field(pytree_node=False)  # P: slot of the first new token

    def running(self) -> Bool[Array, ""]:
        """True while a token can still be written and some row is unfinished."""
        return (self.cur < self.max_len) & ~jnp.all(self.done)
