"""Count-based penalties: repetition, presence/frequency, encoder repetition.

Semantics and constructor arguments follow transformers 5.24 (``logits_process.py``);
``PresenceFrequencyPenalty`` follows OpenAI / vLLM. The n-gram bans, bad words and
sequence / logit biases live in ``jaxgen.processors.sequences`` and the exponential
length penalty in ``jaxgen.processors.constraints``; they are re-exported here.

Count-based penalties keep a per-row token-count state (``TokenCounts``): ``[batch, vocab]``
int32 counts built by scatter-add from the buffer and advanced by one scatter-add of
``ctx.last_tokens`` per step, never a ``[batch, length, vocab]`` one-hot. Penalties may
be one per row (``[rows]``), and ``ctx.cur`` / ``ctx.start`` may be per row.

Buffer slots before ``ctx.start`` (bucket padding) never count as tokens. Slots with
``attention_mask == 0`` (left padding) are never penalised, as transformers' ``generate``
does (it passes the padding lengths as ``prompt_ignore_length``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float, Int

from jaxgen.ops import (
    as_column,
    as_leaf,
    check_int,
    check_number,
    ids_table,
    repeat_rows,
    row_index,
    set_leaves,
    token_mask,
)
from jaxgen.processors.base import Context, LogitsProcessor, pytree_dataclass
from jaxgen.processors.constraints import ExponentialDecayLengthPenalty
from jaxgen.processors.sequences import (
    EncoderNoRepeatNGram,
    LogitBias,
    NoBadWords,
    NoRepeatNGram,
    SequenceBias,
    SequenceTable,
)

__all__ = ["EncoderNoRepeatNGram", "EncoderRepetitionPenalty", "ExponentialDecayLengthPenalty",
           "LogitBias", "NoBadWords", "NoRepeatNGram", "PresenceFrequencyPenalty",
           "RepetitionPenalty", "SequenceBias", "SequenceTable", "TokenCounts", "init_counts",
           "token_mask", "update_counts"]


def _penalise(logits: Array, where: Array, penalty: Any) -> Array:
    """transformers' repetition rule: negative logits times ``penalty``, others divided
    (``penalty``: a scalar or one per row)."""
    penalty = as_column(penalty)
    hit = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(where, hit, logits)


def _check_penalty(name: str, value: Any) -> None:
    check_number(name, value, lambda v: v > 0, "a float > 0")


# --- token counts, shared by RepetitionPenalty and PresenceFrequencyPenalty --------------

@struct.dataclass
class TokenCounts:
    """Per-row token counts over the buffer slots from a first slot on (state).

    counts: [batch, vocab] int32, occurrences of each token in the counted slots.
        ``[batch, 0]`` until the first call when the vocabulary size is not known at
        ``init`` (the processor's ``vocab_size`` is None): the first call then counts
        the whole window at once.
    upto: [batch] int32, slots ``< upto`` are accounted for (counted, or before the row's
        first counted slot); the next update counts slots ``upto .. cur - 1``. Keeping it
        per row (not the prompt end as a scalar) keeps the leading-axis convention and
        makes the first step after the prompt count nothing twice.
    """

    counts: Int[Array, "batch vocab"]
    upto: Int[Array, " batch"]


def init_counts(ctx: Context, first_slot: Any, vocab: int | None) -> TokenCounts:
    """Counts of the tokens in slots ``first_slot .. ctx.cur - 1`` (``first_slot``: scalar
    or [batch]); slots with attention_mask 0 are skipped."""
    b = ctx.rows
    upto = jnp.broadcast_to(repeat_rows(jnp.asarray(first_slot, jnp.int32), b), (b,))
    state = TokenCounts(counts=jnp.zeros((b, vocab or 0), jnp.int32), upto=upto)
    return state if vocab is None else _count_window(state, ctx)


def update_counts(state: TokenCounts, ctx: Context, vocab: int) -> TokenCounts:
    """Add the tokens written since the last update (one scatter-add per step)."""
    if state.counts.shape[1] != vocab:
        if state.counts.shape[1]:
            raise ValueError(f"token counts for vocab {state.counts.shape[1]} used with "
                             f"logits of vocab {vocab} (check vocab_size)")
        state = state.replace(counts=jnp.zeros((state.counts.shape[0], vocab), jnp.int32))
    new = ctx.cur - state.upto                                  # [batch] slots to count
    return jax.lax.cond(jnp.all(new <= 1), _count_last, _count_window, state, ctx)


def _count_last(state: TokenCounts, ctx: Context) -> TokenCounts:
    """The decode loop's case: at most the slot ``cur - 1`` is new."""
    vocab = state.counts.shape[1]
    mask = row_index(ctx.attention_mask, ctx.cur - 1)
    tok = ctx.last_tokens
    ok = (ctx.cur - state.upto == 1) & (mask != 0) & (tok >= 0)
    rows = jnp.arange(tok.shape[0])
    counts = state.counts.at[rows, jnp.where(ok, tok, vocab)].add(1, mode="drop")
    return TokenCounts(counts=counts, upto=jnp.maximum(state.upto, ctx.cur))


def _count_window(state: TokenCounts, ctx: Context) -> TokenCounts:
    """Any case: a masked scatter-add of the slots ``upto .. cur - 1`` of the buffer."""
    vocab = state.counts.shape[1]
    seq = ctx.sequences
    slots = jnp.arange(seq.shape[1])[None, :]
    ok = (slots >= state.upto[:, None]) & (slots < ctx.cur_col) & (
        ctx.attention_mask != 0) & (seq >= 0)
    rows = jnp.arange(seq.shape[0])[:, None]
    counts = state.counts.at[rows, jnp.where(ok, seq, vocab)].add(1, mode="drop")
    return TokenCounts(counts=counts, upto=jnp.maximum(state.upto, ctx.cur))


# --- repetition penalties ---------------------------------------------------------------

@pytree_dataclass
class RepetitionPenalty(LogitsProcessor):
    """Penalise every token already in the sequence, once (CTRL's rule).

    Seen tokens' logits are multiplied by ``penalty`` (a float, or one per row) when
    negative and divided by it otherwise. The first ``prompt_ignore_length`` tokens of
    the caller's ``input_ids`` (an int, or one per row) are not counted, nor is left
    padding (attention_mask 0). The state is a ``TokenCounts`` ``[batch, vocab]``;
    ``vocab_size`` (optional, not a transformers argument) lets ``init`` build it at its
    final shape.
    """

    penalty: Any
    prompt_ignore_length: Any = None
    vocab_size: int | None = struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        _check_penalty("RepetitionPenalty.penalty", self.penalty)
        set_leaves(self, jnp.float32, "penalty")
        n = 0 if self.prompt_ignore_length is None else self.prompt_ignore_length
        check_int("RepetitionPenalty.prompt_ignore_length", n)
        object.__setattr__(self, "prompt_ignore_length", as_leaf(n, jnp.int32))

    def init(self, ctx: Context) -> TokenCounts:
        return init_counts(ctx, ctx.start + jnp.asarray(self.prompt_ignore_length),
                           self.vocab_size)

    def __call__(self, logits: Float[Array, "batch vocab"], state: TokenCounts,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], TokenCounts]:
        state = update_counts(state, ctx, logits.shape[-1])
        return _penalise(logits, state.counts > 0, self.penalty), state


@pytree_dataclass
class PresenceFrequencyPenalty(LogitsProcessor):
    """OpenAI / vLLM penalties over the GENERATED tokens (the prompt is not counted)::

        logits[t] -= frequency_penalty * count[t] + presence_penalty * (count[t] > 0)

    Both in [-2, 2] (as OpenAI and vLLM), floats or one per row; 0 disables. State:
    ``TokenCounts``.
    """

    presence_penalty: Any = 0.0
    frequency_penalty: Any = 0.0
    vocab_size: int | None = struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            check_number(f"PresenceFrequencyPenalty.{name}", v, lambda x: abs(x) <= 2.0,
                         "in [-2, 2]")
            object.__setattr__(self, name, as_leaf(v, jnp.float32))

    def init(self, ctx: Context) -> TokenCounts:
        return init_counts(ctx, ctx.cur, self.vocab_size)       # nothing generated yet

    def __call__(self, logits: Float[Array, "batch vocab"], state: TokenCounts,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], TokenCounts]:
        state = update_counts(state, ctx, logits.shape[-1])
        counts = state.counts
        hit = (logits - as_column(self.frequency_penalty) * counts.astype(logits.dtype)
               - as_column(self.presence_penalty))
        return jnp.where(counts > 0, hit, logits), state    # one fused pass over the vocab


@pytree_dataclass
class EncoderRepetitionPenalty(LogitsProcessor):
    """The inverse rule on the tokens of ``encoder_input_ids`` ``[batch, n]``: a penalty
    above 1 makes them MORE likely (hallucination penalty). Ids < 0 are padding."""

    penalty: Any
    encoder_input_ids: Any

    def __post_init__(self):
        _check_penalty("EncoderRepetitionPenalty.penalty", self.penalty)
        set_leaves(self, jnp.float32, "penalty")
        object.__setattr__(self, "encoder_input_ids", ids_table(
            self.encoder_input_ids, "EncoderRepetitionPenalty.encoder_input_ids"))

    def __call__(self, logits, state, ctx):
        ids = repeat_rows(jnp.asarray(self.encoder_input_ids), logits.shape[0])
        seen = token_mask(ids, logits.shape[-1])
        return _penalise(logits, seen, 1.0 / self.penalty), state
