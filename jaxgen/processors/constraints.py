"""Constraints on which tokens may come next (transformers semantics).

Length constraints on the eos set (MinLength, MinNewTokensLength), forced tokens
(ForcedBOSToken, ForcedEOSToken), suppression (SuppressTokens, SuppressTokensAtBegin),
allowed-token masks (PrefixConstrained) and score hygiene (InfNanRemove,
LogitNormalization). Token ids are ``pad_ids`` vectors (padded with -1) and positions
are int32 leaves, so changing them never recompiles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool, Int

from jaxgen.processors.base import Context, LogitsProcessor, as_leaf, id_mask, pad_ids

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


# --- helpers ----------------------------------------------------------------------------

_ID_CONTAINERS = (list, tuple, set, frozenset, range)


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_int(name: str, value: Any, minimum: int = 0) -> None:
    """Validate a Python/numpy scalar; arrays and tracers (pytree unflatten) pass through."""
    if value is None or isinstance(value, (bool, float, str)) or (
            _is_int(value) and value < minimum):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _ids_leaf(name: str, ids: Any) -> Any:
    """An int or an iterable of ints -> ``pad_ids`` vector; arrays/tracers pass through."""
    if _is_int(ids):
        ids = [ids]
    if isinstance(ids, _ID_CONTAINERS):
        ids = list(ids)
        if any(not _is_int(i) or i < 0 for i in ids):
            raise ValueError(f"{name} must be non-negative token ids, got {ids!r}")
        return pad_ids(ids)
    if isinstance(ids, (bool, float, str)) or ids is None:
        raise ValueError(f"{name} must be a token id or a list of token ids, got {ids!r}")
    return ids


def _force(logits: Array, ids: Int[Array, " n"], when: Any) -> Array:
    """Where ``when``: every row becomes -inf except 0 at ``ids``; else ``logits``."""
    forced = jnp.where(id_mask(ids, logits.shape[-1]), 0.0, NEG_INF).astype(logits.dtype)
    return jnp.where(when, forced[None, :], logits)


# --- forced tokens ----------------------------------------------------------------------

@struct.dataclass
class ForcedBOSToken(LogitsProcessor):
    """At the first step (``cur_len == 1``) force ``bos_token_id``: its score becomes 0
    and every other one -inf. Other steps are unchanged."""

    bos_token_id: Any

    def __post_init__(self):
        _check_int("ForcedBOSToken.bos_token_id", self.bos_token_id)
        object.__setattr__(self, "bos_token_id", as_leaf(self.bos_token_id, jnp.int32))

    def __call__(self, logits, state, ctx):
        ids = jnp.reshape(jnp.asarray(self.bos_token_id, jnp.int32), (1,))
        return _force(logits, ids, ctx.cur_len == 1), state


@struct.dataclass
class ForcedEOSToken(LogitsProcessor):
    """When ``cur_len == max_length - 1`` force an eos token: the ``eos_token_id`` scores
    (one id or several) become 0 and every other one -inf."""

    max_length: Any
    eos_token_id: Any

    def __post_init__(self):
        _check_int("ForcedEOSToken.max_length", self.max_length)
        object.__setattr__(self, "max_length", as_leaf(self.max_length, jnp.int32))
        object.__setattr__(self, "eos_token_id",
                           _ids_leaf("ForcedEOSToken.eos_token_id", self.eos_token_id))

    def __call__(self, logits, state, ctx):
        when = ctx.cur_len == self.max_length - 1
        return _force(logits, jnp.asarray(self.eos_token_id, jnp.int32), when), state


# --- suppression ------------------------------------------------------------------------

@struct.dataclass
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


@struct.dataclass
class SuppressTokensAtBegin(LogitsProcessor):
    """Set the scores of ``begin_suppress_tokens`` to -inf at the one step where
    ``cur_len == begin_index`` (transformers' ``input_ids.shape[-1]``)."""

    begin_suppress_tokens: Any
    begin_index: Any

    def __post_init__(self):
        object.__setattr__(self, "begin_suppress_tokens",
                           _ids_leaf("SuppressTokensAtBegin.begin_suppress_tokens",
                                     self.begin_suppress_tokens))
        _check_int("SuppressTokensAtBegin.begin_index", self.begin_index)
        object.__setattr__(self, "begin_index", as_leaf(self.begin_index, jnp.int32))

    def set_begin_index(self, begin_index: Any) -> SuppressTokensAtBegin:
        """A copy with another ``begin_index`` (transformers mutates in place)."""
        return self.replace(begin_index=begin_index)

    def __call__(self, logits, state, ctx):
        ban = id_mask(jnp.asarray(self.begin_suppress_tokens, jnp.int32), logits.shape[-1])
        ban = ban[None, :] & (ctx.cur_len == self.begin_index)
        return jnp.where(ban, NEG_INF, logits), state


# --- score hygiene ----------------------------------------------------------------------

@struct.dataclass
class InfNanRemove(LogitsProcessor):
    """NaN -> 0, +inf -> ``finfo(dtype).max``, -inf -> ``finfo(dtype).min`` (so generation
    never sees non-finite scores). Apply it last if you use it."""

    def __call__(self, logits, state, ctx):
        info = jnp.finfo(logits.dtype)
        out = jnp.where(jnp.isnan(logits), jnp.zeros((), logits.dtype), logits)
        out = jnp.where(logits == jnp.inf, jnp.asarray(info.max, logits.dtype), out)
        out = jnp.where(logits == -jnp.inf, jnp.asarray(info.min, logits.dtype), out)
        return out, state


@struct.dataclass
class LogitNormalization(LogitsProcessor):
    """``log_softmax`` over the vocabulary; transformers applies it last, after the
    sampling warpers, when ``renormalize_logits=True``."""

    def __call__(self, logits, state, ctx):
        return jax.nn.log_softmax(logits, axis=-1), state


# --- allowed-token masks ----------------------------------------------------------------

AllowedTokensFn = Callable[[Int[Array, " rows"], Context], Bool[Array, "rows vocab"]]


@struct.dataclass
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
        if not _is_int(self.num_beams) or self.num_beams < 1:
            raise ValueError(f"PrefixConstrained.num_beams must be an int >= 1, "
                             f"got {self.num_beams!r}")

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
        ids = table[batch_id]                                   # [rows, n]
        ids = jnp.where(ids < 0, vocab, ids)                    # padding -> dropped
        rows = jnp.arange(ids.shape[0])[:, None]
        return jnp.zeros((ids.shape[0], vocab), bool).at[rows, ids].set(True, mode="drop")

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
