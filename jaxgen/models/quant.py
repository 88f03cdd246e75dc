"""Int8 arrays for the models: weight-only int8 kernels and an int8 KV cache.

``QTensor(q int8, scale f32)`` stands where a float kernel or embedding table stood in
the params; ``x @ kernel`` becomes an int8 x float ``dot_general`` (float32 accumulation)
with the per-output-channel scale applied to the product, never a dequantized copy of
the weights::

    w = quantize(kernel, axis=0)        # kernel [in, out] -> q [in, out], scale [out]
    y = matmul(x, w)                    # (x @ q) * scale      == x @ dequantize(w)
    e = take_rows(quantize(table, axis=1), ids)   # embedding rows, per-row scales

`Int8KVCache` is a `KVCache` whose keys/values are int8 with one scale per token and
kv head (``k_scale [layers, batch, kv, slots, 1]``); attention takes the int8 keys and
values with their scales (`jaxgen.models.attention`).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jax import lax
from jaxtyping import Array, Float, Int, Int8

from jaxgen.models.cache import KVCache, Stack5, WriteIndex, write_kv
from jaxgen.models.per_layer import take_batch_rows
from jaxgen.ops import take_bits

QMAX = 127.0


@struct.dataclass
class QTensor:
    """An int8 array and its float32 scales (``scale`` has size 1 on the reduced axis)."""

    q: Int8[Array, "*dims"]
    scale: Float[Array, "*dims"]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.q.shape

    @property
    def ndim(self) -> int:
        return self.q.ndim

    def dequantize(self, dtype: Any = jnp.float32) -> Array:
        return (self.q.astype(jnp.float32) * self.scale).astype(dtype)


def is_quantized(params: Any) -> bool:
    """Whether any leaf of ``params`` is a `QTensor`."""
    return any(isinstance(x, QTensor) for x in jax.tree.leaves(
        params, is_leaf=lambda x: isinstance(x, QTensor)))


def quantize(x: Float[Array, "*dims"], axis: int) -> QTensor:
    """Symmetric int8 of ``x`` with one scale per slice along every axis but ``axis``
    (absmax / 127 over ``axis``; all-zero slices get scale 1)."""
    xf = x.astype(jnp.float32)
    amax = jnp.max(jnp.abs(xf), axis=axis, keepdims=True)
    scale = jnp.where(amax > 0, amax / QMAX, 1.0)
    q = jnp.clip(jnp.round(xf / scale), -QMAX, QMAX).astype(jnp.int8)
    return QTensor(q, scale)


def _float_dot(x: Array, w: Array, dims: Any) -> Array:
    """A float dot in ``x.dtype`` (``x`` contracted on its last dim); bfloat16 / float16
    accumulate in float32 (as torch's CPU kernels do), which is also XLA:CPU's fast path
    for them (measured 3.5x faster at 8 rows than a bfloat16-output dot). A single row
    is padded to two: XLA:CPU's one-row bfloat16 kernel is 2.2x slower than its two-row
    one (195 against 86 us for 576 x 1536; the row's values are the same)."""
    if jnp.dtype(x.dtype).itemsize >= 4:
        return lax.dot_general(x, w, dims)
    if math.prod(x.shape[:-1]) == 1:
        two = jnp.pad(x.reshape(1, x.shape[-1]), ((0, 1), (0, 0)))
        y = lax.dot_general(two, w, (((1,), dims[0][1]), dims[1]),
                            preferred_element_type=jnp.float32)
        return y[:1].reshape(*x.shape[:-1], y.shape[-1]).astype(x.dtype)
    return lax.dot_general(x, w, dims, preferred_element_type=jnp.float32).astype(x.dtype)


def matmul(x: Float[Array, "... d_in"], w: Any) -> Float[Array, "... d_out"]:
    """``x @ w`` for a float kernel ``[in, out]`` or a `QTensor` of one (scale ``[1,
    out]``): the int8 product in float32, then the scale, cast back to ``x.dtype``."""
    dims = (((x.ndim - 1,), (0,)), ((), ()))
    if not isinstance(w, QTensor):
        return _float_dot(x, w, dims)
    y = lax.dot_general(x, w.q, dims, preferred_element_type=jnp.float32)
    return (y * w.scale[0]).astype(x.dtype)


def matmul_t(x: Float[Array, "... d"], table: Any) -> Float[Array, "... rows"]:
    """``x @ table.T`` (a tied output head; ``table`` ``[rows, d]``, a `QTensor` with
    per-row scales ``[rows, 1]``)."""
    dims = (((x.ndim - 1,), (1,)), ((), ()))
    if not isinstance(table, QTensor):
        return _float_dot(x, table, dims)
    y = lax.dot_general(x, table.q, dims, preferred_element_type=jnp.float32)
    return y * table.scale[:, 0]


def take_rows(table: Any, ids: Int[Array, "*dims"], dtype: Any) -> Float[Array, "... d"]:
    """``table[ids]`` (an embedding lookup) in ``dtype``, dequantizing the rows taken."""
    if not isinstance(table, QTensor):
        return take_bits(table, ids, axis=0)
    rows = jnp.take(table.q, ids, axis=0).astype(jnp.float32)
    return (rows * jnp.take(table.scale, ids, axis=0)).astype(dtype)


# ------------------------------------------------------------------------ int8 KV cache


def _quantize_kv(x: Float[Array, "batch t kv hd"]) -> tuple[Array, Array]:
    """int8 values and per-(token, head) scales ``[batch, t, kv, 1]``."""
    qx = quantize(x, axis=-1)
    return qx.q, qx.scale


@struct.dataclass
class Int8KVCache(KVCache):
    """A full-attention cache of int8 keys/values with per-token, per-kv-head scales.

    k, v: int8 [layers, batch, kv, length, hd]; k_scale, v_scale: f32 [layers, batch, kv,
    length, 1]; index as `KVCache`'s. `update` gives attention a `jaxgen.models.cache`
    live view carrying the scales, so scores are ``(q @ k_int8) * k_scale``.
    """

    k_scale: Float[Array, "layers batch kv slots 1"] = None
    v_scale: Float[Array, "layers batch kv slots 1"] = None

    @classmethod
    def zeros(cls, layers: int, batch: int, kv_heads: int, length: int, head_dim: int,
              dtype: Any = jnp.float32) -> Int8KVCache:
        """An empty cache, index 0 (``dtype`` is ignored: keys/values are int8)."""
        shape = (layers, batch, kv_heads, length, head_dim)
        def ones() -> Array:  # one buffer each: a donated cache must not alias
            return jnp.ones((*shape[:4], 1), jnp.float32)

        return cls(k=jnp.zeros(shape, jnp.int8), v=jnp.zeros(shape, jnp.int8),
                   index=jnp.zeros((), jnp.int32), k_scale=ones(), v_scale=ones())

    def update(self, layer: Any, k: Float[Array, "batch t kv hd"], v: Array
               ) -> tuple[Int8KVCache, Any, Any]:
        """Quantize and write ``k``/``v`` of ``layer`` at the index; its live view."""
        (kq, ks), (vq, vs) = _quantize_kv(k), _quantize_kv(v)
        new = self.replace(k=_write(self.k, kq, layer, self.index),
                           v=_write(self.v, vq, layer, self.index),
                           k_scale=_write(self.k_scale, ks, layer, self.index),
                           v_scale=_write(self.v_scale, vs, layer, self.index))
        return new, *new.view(layer, k.shape[1])

    def reorder(self, rows: Int[Array, " rows"]) -> Int8KVCache:
        """Rows of the keys, values and scales reordered."""
        rows = jnp.asarray(rows, jnp.int32)
        new = super().reorder(rows)
        return new.replace(k_scale=take_batch_rows(self.k_scale, rows),
                           v_scale=take_batch_rows(self.v_scale, rows))


def _write(buf: Stack5, x: Array, layer: Any, index: WriteIndex) -> Stack5:
    return write_kv(buf, x, layer, index)
