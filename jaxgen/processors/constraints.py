"""Constraints on which tokens may come next (transformers semantics).

Length constraints on the eos set (MinLength, MinNewTokensLength), forced tokens
(ForcedBOSToken, ForcedEOSToken), suppression (SuppressTokens, SuppressTokensAtBegin),
allowed-token masks (PrefixConstrained) and score hygiene (InfNanRemove,
LogitNormalization). Token ids are ``pad_ids`` vectors (padded with -1) and positions
are int32 leaves, so changing them never recompiles. Lengths (``min_length``,
``min_new_tokens``, ...) may be one per row (``[rows]``), and every processor works with
a per-row ``ctx.cur`` / ``ctx.start``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool, Int

from jaxgen.ops import (
    NEG_INF,
    as_column,
    as_leaf,
    check_int,
    check_number,
    eos_ids,
    id_mask,
    pad_ids,
    set_leaves,
    token_mask,
)
from jaxgen.processors.base import Context, LogitsProcessor, pytree_dataclass


def _ids_leaf(name: str, ids: Any, *, none_ok: bool = False, required: bool = False) -> Any:
    """Token ids (an int; a list, tuple, set or range of them; numpy; torch) -> a
    ``pad_ids`` vector; jax arrays pass through. ``none_ok``: None is no id;
    ``required``: at least one id."""
    if isinstance(ids, jax.Array):
        return ids
    if (ids is None and not none_ok) or isinstance(ids, (bool, float, str)):
        raise ValueError(f"{name} must be a token id or a list of token ids, got {ids!r}")
    parsed = eos_ids(sorted(ids) if isinstance(ids, (set, frozenset, range)) else ids, name)
    if required and not parsed:
        raise ValueError(f"{name} is required")
    return pad_ids(parsed)


def _ban(logits: Array, ids: Any, when: Any) -> Array:
    """-inf on ``ids`` in the rows where ``when`` (a scalar or ``[rows]`` bool)."""
    ban = id_mask(jnp.asarray(ids, jnp.int32), logits.shape[-1])[None, :] & as_column(when)
    return jnp.where(ban, NEG_INF, logits)


def _force(logits: Array, ids: Int[Array, " n"], when: Any) -> Array:
    """Where ``when`` (scalar or ``[rows]``): the row becomes -inf except 0 at ``ids``."""
    forced = jnp.where(id_mask(ids, logits.shape[-1]), 0.0, NEG_INF).astype(logits.dtype)
    return jnp.where(as_column(when), forced[None, :], logits)


# --- length -----------------------------------------------------------------------------

@pytree_dataclass
class MinLength(LogitsProcessor):
    """Forbid eos while the sequence (prompt included) is shorter than ``min_length``
    (an int, or one per row)."""

    min_length: Any = 0
    eos_token_id: Any = ()

    def __post_init__(self):
        check_int("MinLength.min_length", self.min_length)
        set_leaves(self, jnp.int32, "min_length")
        object.__setattr__(self, "eos_token_id",
                           _ids_leaf("MinLength.eos_token_id", self.eos_token_id, none_ok=True))

    def __call__(self, logits, state, ctx):
        return _ban(logits, self.eos_token_id, ctx.cur_len < self.min_length), state


@pytree_dataclass
class MinNewTokensLength(LogitsProcessor):
    """Forbid eos until ``min_new_tokens`` tokens follow the first ``prompt_length_to_skip``
    (ints, or one per row)."""

    prompt_length_to_skip: Any = 0
    min_new_tokens: Any = 0
    eos_token_id: Any = ()

    def __post_init__(self):
        check_int("MinNewTokensLength.prompt_length_to_skip", self.prompt_length_to_skip)
        check_int("MinNewTokensLength.min_new_tokens", self.min_new_tokens)
        set_leaves(self, jnp.int32, "prompt_length_to_skip", "min_new_tokens")
        object.__setattr__(self, "eos_token_id",
                           _ids_leaf("MinNewTokensLength.eos_token_id", self.eos_token_id,
                                     none_ok=True))

    def __call__(self, logits, state, ctx):
        new_tokens = ctx.cur_len - self.prompt_length_to_skip
        return _ban(logits, self.eos_token_id, new_tokens < self.min_new_tokens), state


@pytree_dataclass
class ExponentialDecayLengthPenalty(LogitsProcessor):
    """After ``start_index`` new tokens, raise the eos logits exponentially:
    ``eos += |eos| * (decay_factor ** (cur_len - start) - 1)`` with
    ``start = start_index + input_ids_seq_length`` and
    ``exponential_decay_length_penalty = (start_index, decay_factor)``."""

    exponential_decay_length_penalty: Any
    eos_token_id: Any
    input_ids_seq_length: Any

    def __post_init__(self):
        name = "ExponentialDecayLengthPenalty"
        pen = self.exponential_decay_length_penalty
        if not isinstance(pen, (tuple, list)) or len(pen) != 2:
            raise ValueError(f"{name}.exponential_decay_length_penalty must be "
                             f"(start_index, decay_factor), got {pen!r}")
        check_int(f"{name}.exponential_decay_length_penalty[0] (start_index)", pen[0],
                  per_row=False)
        check_number(f"{name}.exponential_decay_length_penalty[1] (decay_factor)", pen[1],
                     np.isfinite, "a finite number", per_row=False)
        object.__setattr__(self, "exponential_decay_length_penalty",
                           (as_leaf(pen[0], jnp.int32), as_leaf(pen[1], jnp.float32)))
        object.__setattr__(self, "eos_token_id",
                           _ids_leaf(f"{name}.eos_token_id", self.eos_token_id, none_ok=True,
                                     required=True))
        check_int(f"{name}.input_ids_seq_length", self.input_ids_seq_length)
        set_leaves(self, jnp.int32, "input_ids_seq_length")

    def __call__(self, logits, state, ctx):
        start_index, factor = self.exponential_decay_length_penalty
        idx = as_column(ctx.cur_len - (start_index + self.input_ids_seq_length))
        scale = jnp.power(factor, idx.astype(jnp.float32)) - 1.0
        eos = id_mask(jnp.asarray(self.eos_token_id), logits.shape[-1])[None, :]
        hit = eos & (idx > 0) & jnp.isfinite(logits)
        return jnp.where(hit, logits + jnp.abs(logits) * scale, logits), state


# --- forced tokens ----------------------------------------------------------------------

@pytree_dataclass
class ForcedBOSToken(LogitsProcessor):
    """At the first step (``cur_len == 1``) force ``bos_token_id``: its score becomes 0
    and every other one -inf. Other steps are unchanged."""

    bos_token_id: Any

    def __post_init__(self):
        check_int("ForcedBOSToken.bos_token_id", self.bos_token_id, per_row=False)
        set_leaves(self, jnp.int32, "bos_token_id")

    def __call__(self, logits, state, ctx):
        ids = jnp.reshape(jnp.asarray(self.bos_token_id, jnp.int32), (1,))
        return _force(logits, ids, ctx.cur_len == 1), state


@pytree_dataclass
class ForcedEOSToken(LogitsProcessor):
    """When ``cur_len == max_length - 1`` force an eos token: the ``eos_token_id`` scores
    (one id or several) become 0 and every other one -inf."""

    max_length: Any
    eos_token_id: Any

    def __post_init__(self):
        check_int("ForcedEOSToken.max_length", self.max_length)
        set_leaves(self, jnp.int32, "max_length")
        object.__setattr__(self, "eos_token_id",
                           _ids_leaf("ForcedEOSToken.eos_token_id", self.eos_token_id))

    def __call__(self, logits, state, ctx):
        when = ctx.cur_len == self.max_length - 1
        return _force(logits, jnp.asarray(self.eos_token_id, jnp.int32), when), state


# --- suppression ------------------------------------------------------------------------

@pytree_dataclass
class SuppressTokens(LogitsProcessor):
    """Set the scores of ``suppress_tokens`` to -inf at every step (ids outside the
    vocabulary are ignored, as in transformers)."""

    suppress_tokens: Any

    def __post_init__(self):
        object.__setattr__(self, "suppress_tokens",
                           _ids_leaf("SuppressTokens.suppress_tokens", self.suppress_tokens))

    def __call__(self, logits, state, ctx):
        ban = id_mask(jnp.asarray(self.suppress_tokens, jnp.int32), logits.shape[-1])
        return jnp.where(ban[None, :], NEG_INF, logits), state


@pytree_dataclass
class SuppressTokensAtBegin(LogitsProcessor):
    """Set the scores of ``begin_suppress_tokens`` to -inf at the one step where
    ``cur_len == begin_index`` (transformers' ``input_ids.shape[-1]``)."""

    begin_suppress_tokens: Any
    begin_index: Any

    def __post_init__(self):
        object.__setattr__(self, "begin_suppress_tokens",
                           _ids_leaf("SuppressTokensAtBegin.begin_suppress_tokens",
                                     self.begin_suppress_tokens))
        check_int("SuppressTokensAtBegin.begin_index", self.begin_index)
        set_leaves(self, jnp.int32, "begin_index")

    def set_begin_index(self, begin_index: Any) -> SuppressTokensAtBegin:
        """A copy with another ``begin_index`` (transformers mutates in place)."""
        return self.replace(begin_index=begin_index)

    def __call__(self, logits, state, ctx):
        return _ban(logits, self.begin_suppress_tokens,
                        ctx.cur_len == self.begin_index), state


# --- score hygiene ----------------------------------------------------------------------

@pytree_dataclass
class InfNanRemove(LogitsProcessor):
    """NaN -> 0, +inf -> ``finfo(dtype).max``, -inf -> ``finfo(dtype).min`` (so generation
    never sees non-finite scores). Apply it last if you use it."""

    def __call__(self, logits, state, ctx):
        info = jnp.finfo(logits.dtype)
        out = jnp.where(jnp.isnan(logits), jnp.zeros((), logits.dtype), logits)
        out = jnp.where(logits == jnp.inf, jnp.asarray(info.max, logits.dtype), out)
        out = jnp.where(logits == -jnp.inf, jnp.asarray(info.min, logits.dtype), out)
        return out, state


@pytree_dataclass
class LogitNormalization(LogitsProcessor):
    """``log_softmax`` over the vocabulary; transformers applies it last, after the
    sampling warpers, when ``renormalize_logits=True``."""

    def __call__(self, logits, state, ctx):
        return jax.nn.log_softmax(logits, axis=-1), state


# --- allowed-token masks ----------------------------------------------------------------

AllowedTokensFn = Callable[[Int[Array, " rows"], Context], Bool[Array, "rows vocab"]]


@pytree_dataclass
class PrefixConstrained(LogitsProcessor):
    """Only allow the tokens ``prefix_allowed_tokens_fn`` allows; rows are grouped by
    ``num_beams`` like transformers (row ``r`` belongs to batch item ``r // num_beams``).

    jaxgen's ``prefix_allowed_tokens_fn(batch_id, ctx) -> allowed`` is jittable:

    - ``batch_id``: int32 ``[rows]``, ``arange(rows) // num_beams``;
    - ``ctx``: the step's `Context`; row ``r`` of ``ctx.sequences[:, ctx.start:ctx.cur]``
      is transformers' ``input_ids[r]`` (``ctx.last_tokens``, ``ctx.cur_len`` help);
    - returns ``allowed``: bool ``[rows, vocab]`` (or broadcastable to it).

    (transformers' version takes ``(batch_id: int, input_ids: 1-D tensor)`` and returns
    a list of ids.) Like transformers, when every beam of a batch item has -inf on all
    its allowed tokens, those rows get 0 on the allowed tokens and -inf elsewhere.
    An empty allowed set cannot raise inside jit (transformers raises): the row becomes
    all -inf. The function is a static field: pass the same function object to reuse
    compiled code. For a fixed allowed set per batch item use `from_token_lists`.

    Example, only even token ids after the first generated token::

        def even_only(batch_id, ctx):
            vocab = jnp.arange(VOCAB)
            return (vocab % 2 == 0)[None, :] | (ctx.cur_len < 6)
        P.PrefixConstrained(even_only, num_beams=1)
    """

    prefix_allowed_tokens_fn: AllowedTokensFn | None = struct.field(pytree_node=False)
    num_beams: int = struct.field(pytree_node=False)
    # [batch, n] int32 ids padded with -1, set by `from_token_lists` (fn is None then)
    allowed_ids: Int[Array, "batch n"] | None = None

    def __post_init__(self):
        fn = self.prefix_allowed_tokens_fn
        if fn is not None and not callable(fn):
            raise TypeError("PrefixConstrained.prefix_allowed_tokens_fn must be callable, "
                            f"got {type(fn).__name__}")
        if fn is None and self.allowed_ids is None:
            raise ValueError("PrefixConstrained.prefix_allowed_tokens_fn is required "
                             "(or use PrefixConstrained.from_token_lists)")
        check_int("PrefixConstrained.num_beams", self.num_beams, 1, static=True)

    @classmethod
    def from_token_lists(cls, table: Sequence[Iterable[int]],
                         num_beams: int = 1) -> PrefixConstrained:
        """Allow, for batch item ``i``, only the ids in ``table[i]`` (at every step).

        The ids are a leaf padded to a power-of-two width: a new table of the same
        batch size (and width bucket) does not recompile.
        """
        lists = [list(t) for t in table]
        if not lists or any(not t for t in lists):
            raise ValueError("PrefixConstrained.from_token_lists: table needs a non-empty "
                             f"list of ids per batch item, got {table!r}")
        for t in lists:
            _ids_leaf("PrefixConstrained.from_token_lists table", t)
        width = max(len(pad_ids(t)) for t in lists)
        ids = np.stack([pad_ids(t, width) for t in lists])
        return cls(None, num_beams, ids)

    def _allowed(self, batch_id: Int[Array, " rows"], ctx: Context,
                 vocab: int) -> Bool[Array, "rows vocab"]:
        if self.prefix_allowed_tokens_fn is not None:
            return jnp.asarray(self.prefix_allowed_tokens_fn(batch_id, ctx), bool)
        table = jnp.asarray(self.allowed_ids, jnp.int32)
        if table.shape[0] < batch_id.shape[0] // self.num_beams:
            raise ValueError(f"PrefixConstrained: the table has {table.shape[0]} batch items, "
                             f"the logits {batch_id.shape[0] // self.num_beams}")
        return token_mask(table[batch_id], vocab)               # [rows, n] -> [rows, vocab]

    def __call__(self, logits, state, ctx):
        rows, vocab = logits.shape
        if rows % self.num_beams:
            raise ValueError(f"PrefixConstrained: {rows} rows is not a multiple of "
                             f"num_beams={self.num_beams}")
        batch_id = jnp.arange(rows, dtype=jnp.int32) // self.num_beams
        allowed = jnp.broadcast_to(self._allowed(batch_id, ctx, vocab), logits.shape)
        mask = jnp.where(allowed, 0.0, NEG_INF).astype(logits.dtype)
        out = jnp.where(allowed, logits, NEG_INF)
        # every beam of an item has -inf on all allowed tokens: force the constraint
        dead = (jnp.max(out, axis=-1) == NEG_INF).reshape(-1, self.num_beams).all(axis=-1)
        dead = jnp.repeat(dead, self.num_beams)                 # [batch] -> [rows]
        return jnp.where(dead[:, None], mask, out), state
