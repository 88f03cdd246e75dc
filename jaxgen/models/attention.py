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
from jax import lax
from jaxtyping import Array, Bool, Float

from jaxgen.models.cache import attention_visibility, write_kv  # noqa: F401  (kept importable)
from jaxgen.models.live import BLOCK, LiveSlots, buckets

# Masked attention scores use a large finite negative value, never -inf, so that a
# fully masked (pad) query row gives a uniform softmax instead of NaN.
MASK_VALUE = -1e9


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
    """`attend` over arrays; ``keys``/``values`` are ``(array, per-slot scale or None)``
    (int8 stacks: scores ``(q @ k) * k_scale``, output ``(p * v_scale) @ v``)."""
    (keys, k_scale), (values, v_scale) = keys, values
    b, t, heads, hd = q.shape
    kv = keys.shape[1]
    q = q.reshape(b, t, kv, heads // kv, hd)  # [batch, t, kv, group, hd]
    if k_scale is None:
        scores = jnp.einsum("btkgd,bksd->bkgts", q, keys, preferred_element_type=jnp.float32)
    else:  # int8 keys: one scale per key slot, applied to its scores
        scores = jnp.einsum("btkgd,bksd->bkgts", q.astype(jnp.float32), keys,
                            preferred_element_type=jnp.float32) * _per_slot(k_scale)
    if softcap is None:
        scores = jnp.where(visible[:, None, None], scores * scale, MASK_VALUE)
    else:
        scores = jnp.where(visible[:, None, None], jnp.tanh(scores * scale / softcap) * softcap,
                           MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1)
    if v_scale is None:
        probs = probs.astype(values.dtype)
        out = jnp.einsum("bkgts,bksd->btkgd", probs, values)  # [batch, t, kv, group, hd]
    else:
        out = jnp.einsum("bkgts,bksd->btkgd", probs * _per_slot(v_scale), values,
                         preferred_element_type=jnp.float32).astype(q.dtype)
    # [batch, kv, group, t, S] -> [batch, heads, t, S]
    return out.reshape(b, t, heads * hd), probs.reshape(b, heads, t, -1) if with_probs else None


def _per_slot(scale: Float[Array, "batch kv S 1"]) -> Float[Array, "batch kv 1 1 S"]:
    return scale[:, :, None, None, :, 0]
