"""Grouped-query attention over the keys a cache stack gives back, shared by every family.

The cache side (writing k/v, which slots a query sees) lives in `jaxgen.models.cache`;
this is the arithmetic::

    out, probs = attend(q, keys, values, visible, scale, softcap=50.0, with_probs=True)
    # q [batch, t, heads, hd], keys/values [batch, kv, S, hd], visible [batch, t, S]
    # -> out [batch, t, heads * hd], probs [batch, heads, t, S] (None unless asked)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax import lax
from jaxtyping import Array, Bool, Float

from jaxgen.models.cache import attention_visibility, write_kv  # noqa: F401  (kept importable)
from jaxgen.models.live import BLOCK, LiveSlots, PagedSlots, buckets

# Masked attention scores use a large finite negative value, never -inf, so that a
# fully masked (pad) query row gives a uniform softmax instead of NaN.
MASK_VALUE = -1e9
# Calls of at most this many tokens read a paged pool chunk by chunk (`_attend_paged`).
PAGED_STEP = 8


@struct.dataclass
class KVMajor:
    """Keys or values laid out ``[kv, batch, S, hd]`` (what a paged cache gathers): the
    attention dots take them with ``(kv, batch)`` as leading batch dims, no transpose."""

    x: Float[Array, "kv batch S hd"]
    scale: Float[Array, "kv batch S 1"] | None = None   # int8 values: per-slot scales


def attend(q: Float[Array, "batch t heads hd"], keys: Any, values: Any,
           visible: Bool[Array, "batch t S"], scale: Any, softcap: float | None = None,
           with_probs: bool = False
           ) -> tuple[Float[Array, "batch t heads*hd"], Float[Array, "batch heads t S"] | None]:
    """Softmax attention of ``q`` over ``keys``/``values`` (``[batch, kv, S, hd]``, or
    the `LiveSlots` of a cache stack) where ``visible``.

    Grouped-query: query head ``h`` uses kv head ``h // (heads // kv)``. Scores are
    float32, times ``scale``, soft-capped (``cap * tanh(s / cap)``, Gemma 2) when
    ``softcap`` is set; masked scores are ``MASK_VALUE`` (a fully masked row is uniform,
    not NaN). ``with_probs`` also returns the probabilities (transformers' ``attentions``).
    `LiveSlots` are read up to the smallest bucket holding every visible slot
    (`jaxgen.models.live`): a decode step's cost follows the tokens so far.
    """
    if isinstance(keys, KVMajor):
        return _attend_major(q, keys.x, values.x, visible, scale, softcap, with_probs,
                             kv_first=True, k_scale=keys.scale, v_scale=values.scale)
    if isinstance(keys, PagedSlots):
        if with_probs or q.shape[1] > PAGED_STEP:          # prefill: copy the rows out
            (kx, ks), (vx, vs) = keys.gather(), values.gather()
            return _attend_major(q, kx, vx, visible, scale, softcap, with_probs,
                                 kv_first=True, k_scale=ks, v_scale=vs)
        return _attend_paged(q, keys, values, visible, scale, softcap), None
    if not isinstance(keys, LiveSlots):
        return _attend(q, (keys, None), (values, None), visible, scale, softcap, with_probs)
    sizes = buckets(keys.slots)
    if with_probs or len(sizes) == 1 or q.shape[1] > BLOCK:  # whole: probs, short, prefill
        n = keys.slots
        return _attend(q, keys.read(n), values.read(n), visible, scale, softcap, with_probs)

    def branch(n: int) -> Any:
        return lambda: _attend(q, keys.read(n), values.read(n), visible[..., :n], scale,
                               softcap, False)[0]

    which = jnp.sum(jnp.asarray(sizes[:-1]) < keys.end)  # the smallest bucket >= end
    return lax.switch(which, [branch(n) for n in sizes]), None


def _attend(q: Float[Array, "batch t heads hd"], keys: tuple[Array, Any], values: tuple,
            visible: Bool[Array, "batch t S"], scale: Any, softcap: float | None,
            with_probs: bool) -> tuple[Array, Array | None]:
    """`attend` over ``[batch, kv, S, hd]`` arrays; ``keys``/``values`` are ``(array,
    per-slot scale or None)`` (int8 stacks: scores ``(q @ k) * k_scale``, output ``(p *
    v_scale) @ v``)."""
    (keys, k_scale), (values, v_scale) = keys, values
    return _attend_major(q, keys, values, visible, scale, softcap, with_probs,
                         kv_first=False, k_scale=k_scale, v_scale=v_scale)


def _scores(s: Array, visible: Array, scale: Any,
            softcap: float | None) -> Array:
    """Scaled (soft-capped) scores, ``MASK_VALUE`` where not ``visible``."""
    s = s * scale if softcap is None else jnp.tanh(s * scale / softcap) * softcap
    return jnp.where(visible, s, MASK_VALUE)


def _attend_major(q: Float[Array, "batch t heads hd"], keys: Array, values: Array,
                  visible: Bool[Array, "batch t S"], scale: Any, softcap: float | None,
                  with_probs: bool, *, kv_first: bool, k_scale: Any = None,
                  v_scale: Any = None) -> tuple[Array, Array | None]:
    """Both dots batch over the two leading dims of ``keys``/``values`` (``[kv, batch, S,
    hd]`` when ``kv_first``, else ``[batch, kv, S, hd]``) and put the query rows before
    the contracted dim: the layouts XLA:CPU's fast dot takes without a transpose of the
    keys (only the small query and output are transposed)."""
    b, t, heads, hd = q.shape
    kv, s = keys.shape[0 if kv_first else 1], keys.shape[2]
    g = heads // kv
    lead = (2, 0) if kv_first else (0, 2)        # q [b, t, kv, g, hd] -> [*lead, t, g, hd]
    qk = q.reshape(b, t, kv, g, hd).transpose(*lead, 1, 3, 4).reshape(*keys.shape[:2], t * g, hd)
    if k_scale is not None:
        qk = qk.astype(jnp.float32)
    dims = (((3,), (3,)), ((0, 1), (0, 1)))
    raw = lax.dot_general(qk, keys, dims, preferred_element_type=jnp.float32)
    raw = raw.reshape(*keys.shape[:2], t, g, s)
    if k_scale is not None:
        raw = raw * _per_slot(k_scale)
    vis = visible[None, :, :, None] if kv_first else visible[:, None, :, None]
    probs = jax.nn.softmax(_scores(raw, vis, scale, softcap), axis=-1)
    p = probs if v_scale is None else probs * _per_slot(v_scale)
    p = p.reshape(*keys.shape[:2], t * g, s).astype(jnp.float32 if v_scale is not None
                                                    else values.dtype)
    out = lax.dot_general(p, values, (((3,), (2,)), ((0, 1), (0, 1))),
                          preferred_element_type=jnp.float32 if v_scale is not None else None)
    back = (1, 2, 0, 3, 4) if kv_first else (0, 2, 1, 3, 4)     # -> [b, t, kv, g, hd]
    out = out.reshape(*keys.shape[:2], t, g, hd).transpose(*back).reshape(b, t, heads * hd)
    out = out.astype(q.dtype)
    if not with_probs:
        return out, None
    pb = (1, 0, 3, 2, 4) if kv_first else (0, 1, 3, 2, 4)       # -> [b, kv, g, t, S]
    return out, probs.transpose(*pb).reshape(b, heads, t, s)


def _attend_paged(q: Float[Array, "batch t heads hd"], keys: PagedSlots, values: PagedSlots,
                  visible: Bool[Array, "batch t S"], scale: Any, softcap: float | None
                  ) -> Float[Array, "batch t heads*hd"]:
    """`_attend_major` over a paged pool without copying the rows out: a loop over the
    chunks below ``end`` writes the scores (each the same dot over ``hd`` as the whole
    version's), the softmax is the whole version's, and a second loop sums
    ``probs @ values`` chunk by chunk (float32). A chunk's copy (about
    `jaxgen.models.live.PAGED_CHUNK_BYTES` over the rows) stays in the CPU caches; the
    whole version writes every row out to memory and reads it back."""
    b, t, heads, hd = q.shape
    kv, s = keys.kv, keys.slots
    g = heads // kv
    trips, ktab = keys.chunks()
    _, vtab = values.chunks()
    width = keys.per_chunk * keys.block_size
    qk = q.reshape(b, t, kv, g, hd).transpose(2, 0, 1, 3, 4).reshape(kv, b, t * g, hd)
    if keys.scale is not None:
        qk = qk.astype(jnp.float32)

    def score(j: Array, raw: Array) -> Array:
        kx, ks = keys.chunk(ktab, j)
        r = lax.dot_general(qk, kx, (((3,), (3,)), ((0, 1), (0, 1))),
                            preferred_element_type=jnp.float32)         # [kv, b, t*g, C]
        if ks is not None:
            r = r * ks[:, :, None, :, 0]
        return lax.dynamic_update_slice_in_dim(raw, r, j * width, 3)

    padded = ktab.shape[1] * width
    raw = lax.fori_loop(0, trips, score, jnp.zeros((kv, b, t * g, padded), jnp.float32))
    raw = raw[..., :s].reshape(kv, b, t, g, s)
    probs = jax.nn.softmax(_scores(raw, visible[None, :, :, None], scale, softcap), axis=-1)
    probs = jnp.pad(probs.reshape(kv, b, t * g, s), ((0, 0),) * 3 + ((0, padded - s),))

    def mix(j: Array, acc: Array) -> Array:
        vx, vs = values.chunk(vtab, j)
        p = lax.dynamic_slice_in_dim(probs, j * width, width, 3)
        p = (p * vs[:, :, None, :, 0]).astype(jnp.float32) if vs is not None \
            else p.astype(vx.dtype)
        return acc + lax.dot_general(p, vx, (((3,), (2,)), ((0, 1), (0, 1))),
                                     preferred_element_type=jnp.float32)
    out = lax.fori_loop(0, trips, mix, jnp.zeros((kv, b, t * g, hd), jnp.float32))
    out = out.reshape(kv, b, t, g, hd).transpose(1, 2, 0, 3, 4).reshape(b, t, heads * hd)
    return out.astype(q.dtype)


def _per_slot(scale: Float[Array, "batch kv S 1"]) -> Float[Array, "batch kv 1 1 S"]:
    return scale[:, :, None, None, :, 0]
