"""The decode state: one typed common ``LoopState`` plus a small strategy sub-state.

Every strategy carries the same ``LoopState`` (token buffer, mask, cursor, done flags,
rng streams, knobs, processor state, scores) and adds only what it needs in ``sub``::

    DecodeState(loop=LoopState(...), sub=None)            # greedy / sampling
    DecodeState(loop=LoopState(...), sub=BeamSub(...))     # beam search

Buffer layout, one row (``P`` = prompt bucket, ``start`` = bucket padding)::

    slot:  0 .. start-1 | start .. P-1      | P .. cur-1 | cur .. buffer-1
           bucket pad   | caller's prompt   | generated  | pad (not yet written)

``cur`` is an int32 scalar when every row writes the same slot (greedy, sampling,
beams) and an int32 ``[rows]`` vector when rows advance at their own pace (speculative
decoding accepts a different number of tokens per row).
"""

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
    penalty_alpha: float32 scalar (contrastive search), None elsewhere.
    confidence: float32 scalar, a draft model's ``assistant_confidence_threshold``
        (speculative decoding), None elsewhere.
    """

    processors: Chain
    warpers: Chain
    eos: Int[Array, " n_eos"]
    pad: Int[Array, ""]
    length_penalty: Float[Array, ""]
    diversity_penalty: Float[Array, ""]
    stopping: tuple[Any, ...] = ()
    penalty_alpha: Float[Array, ""] | None = None
    confidence: Float[Array, ""] | None = None


@struct.dataclass
class LoopState:
    """What every strategy shares (see the module docstring for the buffer layout)."""

    sequences: Int[Array, "rows buffer"]       # token buffer
    attention_mask: Int[Array, "rows buffer"]  # 1 on real prompt tokens and written slots
    position: Int[Array, " rows"]              # position id of the token in slot cur - 1
    cache: Any                                 # model cache; holds slots < cur - 1
    cur: Int[Array, "*rows"]                   # next slot to write (scalar or per row)
    start: Int[Array, ""]                      # first slot of the caller's input_ids
    max_len: Int[Array, ""]                    # stop before writing this slot
    elapsed: Float[Array, ""]                  # host wall clock before this chunk (s)
    done: Bool[Array, " rows"]                 # row finished (then it writes pad)
    rng: Any                                   # [rows] typed keys, one stream per row
    knobs: Knobs
    proc_state: Any                            # (processor states, warper states)
    scores: Float[Array, "rows new vocab"] | None  # recorded scores when output_scores
    prompt_end: int = struct.field(pytree_node=False)  # P: slot of the first new token
    model: Any = struct.field(pytree_node=False, default=None)  # the CausalLM (static)
    trace: Any = None                          # `record.Trace` when raw logits, hidden states
                                               # or attentions are asked for, else None

    @property
    def new_tokens(self) -> Int[Array, "*rows"]:
        """Tokens generated so far (slots since the prompt bucket), scalar or per row."""
        return self.cur - self.prompt_end

    @property
    def rows(self) -> int:
        return self.sequences.shape[0]

    def context(self, sequences: Any = None, attention_mask: Any = None,
                cur: Any = None) -> Context:
        """The processors' view of the buffer at slot ``cur`` (defaults: this state's)."""
        return Context(sequences=self.sequences if sequences is None else sequences,
                       attention_mask=(self.attention_mask if attention_mask is None
                                       else attention_mask),
                       cur=self.cur if cur is None else cur, start=self.start,
                       elapsed=self.elapsed)


@struct.dataclass
class DecodeState:
    """The state ``run_steps`` carries: the common loop state and the strategy's own."""

    loop: LoopState
    sub: Any = None                            # strategy sub-state (None: greedy/sampling)

    def replace_loop(self, **changes: Any) -> DecodeState:
        return self.replace(loop=self.loop.replace(**changes))


def all_done(loop: LoopState) -> Bool[Array, ""]:
    """True once every row is finished or out of slots."""
    return jnp.all(loop.done | (loop.cur >= loop.max_len))
