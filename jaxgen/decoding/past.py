"""``past_key_values``: the cache after generation, and continuing from it.

``GenerateOutput.past_key_values`` is a `Past`: the model cache plus the caller's token
ids whose keys/values it holds (transformers' convention: every token but the newest).
Passing it back with the longer conversation prefills only what it does not hold::

    out = generate(model, params, ids, max_new_tokens=8, return_dict_in_generate=True)
    longer = np.concatenate([out.sequences, next_turn], axis=1)
    out2 = generate(model, params, longer, past_key_values=out.past_key_values, ...)

The continuation keeps the fresh layout (prompt left-padded to its bucket ``P``): the
old cache is copied with caller column ``c`` at slot ``start + c`` (a traced shift, one
gather) and only the last ``feed = bucket(new tokens)`` slots are fed, so a turn
compiles once per (bucket, feed bucket), never per length. Those slots may repeat a few
cached ones, recomputed to the same keys/values (hence full-attention caches only).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Int

from jaxgen.decoding.output import host
from jaxgen.models.base import new_cache
from jaxgen.models.cache import RingCache, is_stack
from jaxgen.models.per_layer import stack_layers
from jaxgen.ops import bucket, take_bits

MIN_FEED_BUCKET = 16


@dataclasses.dataclass(frozen=True)
class Past:
    """A cache and what it holds: ``tokens`` [rows, n] (caller ids, left padding
    included) have their keys/values at slots ``slot .. slot + n - 1``."""

    cache: Any
    tokens: np.ndarray
    slot: int
    model: Any

    def get_seq_length(self) -> int:
        """Tokens the cache holds per row (transformers' ``Cache.get_seq_length``)."""
        return int(self.tokens.shape[1])

    def crop(self, n: int) -> Past:
        """The same cache holding only its first ``n`` tokens (``DynamicCache.crop``)."""
        if not 0 <= n <= self.get_seq_length():
            raise ValueError(f"past_key_values holds {self.get_seq_length()} tokens; cannot "
                             f"crop to {n}")
        return dataclasses.replace(self, tokens=self.tokens[:, :n])


@struct.dataclass
class Carry:
    """What the prefill needs to continue from a `Past`: its cache, the slot shift
    (new slot - old slot) and how many rows each cached row becomes."""

    cache: Any
    shift: Int[Array, ""]
    repeat: int = struct.field(pytree_node=False, default=1)

    def into(self, model: Any, fresh: Any) -> Any:
        """``fresh`` (an empty cache) holding this cache's entries, shifted and repeated."""
        axes = cache_axes(model)
        old, new = jax.tree.leaves(self.cache), jax.tree.leaves(fresh)
        out = []
        for o, n, (rows_axis, slot_axis) in zip(old, new, axes, strict=True):
            if rows_axis is None and slot_axis is None:
                out.append(n)                 # the write index: set by the caller
                continue
            x = o if rows_axis is None else jnp.repeat(o, self.repeat, axis=rows_axis)
            if slot_axis is not None:
                src = jnp.arange(n.shape[slot_axis]) - self.shift
                ok = (src >= 0) & (src < o.shape[slot_axis])
                x = take_bits(x, jnp.clip(src, 0, o.shape[slot_axis] - 1), axis=slot_axis)
                shape = [1] * x.ndim
                shape[slot_axis] = -1
                x = jnp.where(ok.reshape(shape), x, jnp.zeros((), x.dtype))
            out.append(x.astype(n.dtype))
        return jax.tree.unflatten(jax.tree.structure(fresh), out)


@functools.cache
def cache_axes(model: Any) -> tuple[tuple[int | None, int | None], ...]:
    """Per cache leaf: its rows axis and its slot axis (None: none), found by comparing
    the abstract caches of (2 rows, 3 slots), (3, 3) and (2, 4)."""
    def shapes(rows: int, length: int) -> list[tuple[int, ...]]:
        tree = jax.eval_shape(lambda: new_cache(model, rows, length))
        return [x.shape for x in jax.tree.leaves(tree)]

    def axis(a: tuple[int, ...], b: tuple[int, ...]) -> int | None:
        diff = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
        return diff[0] if diff else None

    base, rows, slots = shapes(2, 3), shapes(3, 3), shapes(2, 4)
    return tuple((axis(a, b), axis(a, c)) for a, b, c in zip(base, rows, slots, strict=True))


def past_of(loop: Any, start: int, sequences: np.ndarray, cache: Any = None) -> Past:
    """The `Past` after a run: the cache rewound to the newest token of the shortest row
    (``cache`` replaces ``loop.cache``, e.g. contrastive search's one row per prompt)."""
    cur = np.broadcast_to(host(loop.cur), (loop.rows,))
    end = int(cur.min()) - 1
    cache = stack_layers(loop.cache if cache is None else cache, is_stack)
    return Past(cache=loop.model.rewind_cache(cache, np.int32(end)),
                tokens=sequences[:, :end - start], slot=start, model=loop.model)


def reusable(past: Past) -> bool:
    """Whether ``past`` can be continued (no sliding-window ring buffer in its cache)."""
    return not any(isinstance(x, RingCache) for x in
                   jax.tree.leaves(past.cache, is_leaf=lambda x: isinstance(x, RingCache)))


def continuation(past: Any, model: Any, ids: np.ndarray, mask: np.ndarray, repeat: int,
                 start: int) -> tuple[Carry, int]:
    """Check ``past`` against the caller's ``ids`` [rows, W] (ValueError naming
    ``past_key_values``) and return ``(Carry, n)``: ``n`` caller columns are cached."""
    if not isinstance(past, Past):
        raise TypeError(f"past_key_values must be the past_key_values of a jaxgen "
                        f"GenerateOutput, got {type(past).__name__}")
    if past.model != model:
        raise ValueError("past_key_values was written by another model; pass the cache of "
                         "a generate() call on this model")
    rows, n = past.tokens.shape
    if rows != ids.shape[0]:
        raise ValueError(f"past_key_values holds {rows} rows but input_ids has "
                         f"{ids.shape[0]}; the batch size must be the same")
    if not reusable(past):
        raise ValueError("past_key_values: continuing a sliding-window (ring buffer) cache is "
                         "not supported; pass the whole conversation without it")
    if ids.shape[1] <= n:
        raise ValueError(f"past_key_values holds {n} tokens per row but input_ids has only "
                         f"{ids.shape[1]}; pass the whole conversation, with new tokens")
    bad = np.nonzero((ids[:, :n] != past.tokens).any(axis=0))[0]
    if bad.size:
        raise ValueError(f"past_key_values holds tokens that are not a prefix of input_ids "
                         f"(first difference at column {int(bad[0])}); pass the tokens the "
                         f"cache was made from, then the new ones")
    del mask  # the caller's mask applies to every slot, cached or not (as transformers)
    return Carry(cache=past.cache, shift=jnp.asarray(start - past.slot, jnp.int32),
                 repeat=repeat), n


def feed_slots(width: int, cached: int, prompt_bucket: int) -> int:
    """Slots the continuation's prefill feeds: a bucket covering the new tokens."""
    return min(bucket(width - cached, MIN_FEED_BUCKET), prompt_bucket)
