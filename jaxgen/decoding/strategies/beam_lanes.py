"""Beam search without gathering the KV cache: beams live in *lanes*, copied on forks.

Row ``b * K + l`` of the model batch is lane ``l`` of batch row ``b``; ``lanes[b, i]``
is the lane of beam ``i`` (the search keeps transformers' beam order, the cache does
not follow it). After a step every new beam has a parent beam::

    parents  [[0, 0, 2, 1]]   (row b: new beams 0 and 1 extend old beam 0, ...)
    lanes    [[0, 1, 2, 3]] -> [[0, 3, 2, 1]]

The first child of a parent (in beam order) takes over its parent's lane and its cache
stays where it is; every other child takes the lane of a beam that left no child, and
only then are the parent's generated keys/values copied there, block by block up to
the last written slot (the prompt's slots are the same in every lane of a row and never
move). A step where no beam forks copies nothing; ``model.reorder_cache`` would gather
the whole cache every step (measurements: ``benchmarks/README.md``).

Works for caches made of `jaxgen.models.cache` stacks (`KVCache`, `RingCache`, a
`LayerCaches` of them): `supports` says so; other caches use ``model.reorder_cache``.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, Int

from jaxgen.decoding.state import LoopState
from jaxgen.models.cache import KVCache, LayerCaches, RingCache
from jaxgen.models.per_layer import Layers
from jaxgen.ops import as_bits, row_slice

BLOCK = 16  # slots copied per loop iteration (copies stop at the last written block)


def supports(cache: Any) -> bool:
    """Whether ``cache`` is made of stacks whose rows `copy_forks` can copy."""
    if isinstance(cache, LayerCaches):
        return all(supports(s) for s in cache.stacks.values())
    return type(cache) in (KVCache, RingCache)


def physical_rows(lanes: Int[Array, "B K"]) -> Int[Array, " rows"]:
    """The model row of each beam (``b * K + lanes[b, i]``), flat ``[B * K]``."""
    b, k = lanes.shape
    return (lanes + k * jnp.arange(b, dtype=jnp.int32)[:, None]).reshape(-1)


def feed_lanes(params: Any, loop: LoopState, lanes: Int[Array, "B K"]
               ) -> tuple[Float[Array, "rows vocab"], Any]:
    """Feed each beam's token at slot ``cur - 1`` through its lane: next-token logits in
    beam order ``[B * K, vocab]`` and the new cache."""
    rows = physical_rows(lanes)
    beam_at = jnp.zeros_like(rows).at[rows].set(jnp.arange(rows.shape[0], dtype=jnp.int32))
    tokens = row_slice(loop.sequences, loop.cur - 1, 1)[beam_at]
    out, cache = loop.model.apply(params, tokens, loop.position[beam_at][:, None], loop.cache,
                                  loop.attention_mask[beam_at])
    return out[:, 0][rows], cache


def assign(lanes: Int[Array, "B K"], parents: Int[Array, "B K"]
           ) -> tuple[Int[Array, "B K"], Int[Array, " rows"], Int[Array, " rows"], Array]:
    """New lanes for beams whose parents are ``parents`` (beam indices within the row):
    ``(lanes, copy sources, copy destinations, number of copies)``; the copy lists are
    flat model rows, the copies first."""
    b, k = lanes.shape
    own = jnp.take_along_axis(lanes, parents, axis=1)              # parent's lane [B, K]
    i = jnp.arange(k)
    earlier = i[None, :, None] > i[None, None, :]                   # [1, K, K]: j < i
    first = ~jnp.any(earlier & (own[:, :, None] == own[:, None, :]), axis=2)
    used = jnp.any(own[:, :, None] == i[None, None, :], axis=1)     # [B, K] lane has a child
    # the n-th non-first child gets the n-th lane nobody continues
    child_rank = jnp.cumsum(~first, axis=1) - 1
    free_rank = jnp.where(used, k, jnp.cumsum(~used, axis=1) - 1)   # [B, lanes]
    free_lane = jnp.argmax(child_rank[:, :, None] == free_rank[:, None, :], axis=2)
    new = jnp.where(first, own, free_lane).astype(jnp.int32)
    base = k * jnp.arange(b, dtype=jnp.int32)[:, None]
    fork = (~first).reshape(-1)
    order = jnp.argsort(~fork, stable=True)                         # copies first
    return (new, (own + base).reshape(-1)[order], (new + base).reshape(-1)[order],
            jnp.sum(fork).astype(jnp.int32))


def _copy_stack(stack: Any, src: Array, dst: Array, count: Array, lo: int) -> Any:
    """``stack`` with rows ``src[c]`` copied to ``dst[c]`` (``c < count``), slots ``lo``
    up to its index (a ring: all of it)."""
    slots = stack.k.shape[3]
    if isinstance(stack, RingCache):
        lo, blk, blocks = 0, slots, jnp.ones((), jnp.int32)
    else:
        blk = min(BLOCK, slots - lo) if slots > lo else 0
        if blk == 0:
            return stack
        written = jnp.max(jnp.asarray(stack.index, jnp.int32)) - lo
        blocks = jnp.maximum(written + blk - 1, 0) // blk
    split = isinstance(stack.k, Layers)          # one buffer per layer (inside the loop)
    arrays = (*stack.k.arrays, *stack.v.arrays) if split else (stack.k, stack.v)
    lead = () if split else (stack.k.shape[0],)  # the stacked layer dim
    shape = (*lead, 1, stack.k.shape[2], blk, stack.k.shape[4])

    def body(n: Array, kv: tuple[Array, ...]) -> tuple[Array, ...]:
        c, j = n // blocks, n % blocks
        zero = jnp.zeros((), jnp.int32)
        start = lo + j * blk
        at = (zero,) * len(lead)
        return tuple(lax.dynamic_update_slice(
            x, lax.dynamic_slice(x, (*at, src[c], zero, start, zero), shape),
            (*at, dst[c], zero, start, zero)) for x in kv)

    dtypes = [x.dtype for x in arrays]
    out = lax.fori_loop(0, count * blocks, body, tuple(map(as_bits, arrays)))
    out = tuple(lax.bitcast_convert_type(x, d) for x, d in zip(out, dtypes, strict=True))
    if not split:
        return stack.replace(k=out[0], v=out[1])
    n = len(stack.k.arrays)
    return stack.replace(k=Layers(out[:n]), v=Layers(out[n:]))


def copy_forks(cache: Any, src: Int[Array, " rows"], dst: Int[Array, " rows"], count: Array,
               prompt_end: int) -> Any:
    """``cache`` with the first ``count`` rows ``src`` copied to rows ``dst`` (generated
    slots only: the prompt's are the same in every lane)."""
    if isinstance(cache, LayerCaches):
        return LayerCaches({kind: _copy_stack(s, src, dst, count, prompt_end)
                            for kind, s in cache.stacks.items()})
    return _copy_stack(cache, src, dst, count, prompt_end)


def logical_cache(model: Any, cache: Any, lanes: Int[Array, "B K"] | None) -> Any:
    """The cache with its rows in beam order (for a caller that continues from it)."""
    return cache if lanes is None else model.reorder_cache(cache, physical_rows(lanes))

