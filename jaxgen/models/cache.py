"""KV caches: one *stack* per kind of layer, behind the few methods the decoder calls.

A stack holds the keys/values of all layers of one kind, ``[layers, batch, kv_heads,
slots, head_dim]``, and the write index: the next *logical* slot (an int32 scalar, or a
``[batch]`` vector when rows write at different slots). Logical slots are the caller's
buffer columns (the attention mask is ``[batch, length]`` over them). Per forward pass
of ``t`` tokens the decoder calls::

    visible = stack.visibility(mask, positions, t, window)  # once: Bool [batch, t, S]
    stack, keys, values = stack.update(layer, k, v)         # per layer: write k/v, get the
                                                            # S keys/values it attends to
    stack = stack.advance(t)                                # after the last layer

and strategies reach ``reorder(rows)`` (beam search) and ``rewind(index)`` (speculative
decoding) through the model. ``key_slots(t)`` names the logical slot of each of the S
keys (None: key ``j`` is slot ``j``), so attention probabilities can be laid out over
``[0, length)``. A new cache kind (paged, int8) is one more class with these methods.

- `KVCache`: full attention, ``S = length`` physical slots, logical slot == physical slot.
- `RingCache`: sliding window; ``R = min(window + step_tokens - 1, length)`` slots, slot
  ``s`` lives at ``s % R``. A call of ``t <= R - window + 1`` tokens writes, then attends
  over the ring (``S = R``); a longer one (a prefill) attends over the ring *before* the
  write plus its own fresh keys (``S = R + t``), then keeps the last ``R``. Up to
  ``step_tokens - 1`` slots may be rewound after a call (speculative decoding) without
  losing a key any later query can see.
- `LayerCaches`: one stack per layer kind, for models with both.
- `TokenCache`: any of these plus the token id of every slot, for a model that may have to
  re-encode what it cached (Phi-3's switch to its long rope factors).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax.numpy as jnp
from flax import struct
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from jaxgen.models.live import LiveSlots
from jaxgen.models.per_layer import Layers, split_layers, take_batch_rows
from jaxgen.ops import set_bits, update_bits

# The cache write position: one slot for every row, or one slot per row.
WriteIndex = Int[Array, ""] | Int[Array, " batch"]
Stack5 = Float[Array, "layers batch kv slots hd"]


def positions_from_mask(mask: Int[Array, "batch t"]) -> Int[Array, "batch t"]:
    """Position ids from an attention mask: ``cumsum(mask) - 1``, 0 on left padding."""
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)


def attention_visibility(mask: Array, positions: Array, index: WriteIndex,
                         window: int | None = None) -> Bool[Array, "batch t length"]:
    """Which slot of a full cache each new query may attend to.

    Query ``i`` of row ``b`` sits at slot ``index + i`` (``index[b] + i`` for a vector
    index) and sees slot ``j`` iff ``mask[b, j]`` and ``j <= index + i``; with a ``window``
    also ``positions[b, i] - key_position[b, j] < window`` (key positions ``cumsum(mask) -
    1``, so left padding never counts).
    """
    t, length = positions.shape[1], mask.shape[1]
    q_slot = jnp.asarray(index, jnp.int32)[..., None] + jnp.arange(t, dtype=jnp.int32)
    k_slot = jnp.arange(length, dtype=jnp.int32)  # [length]
    # q_slot [t] or [batch, t] -> [..., t, 1] against [length]
    visible = (mask[:, None, :] != 0) & (k_slot <= q_slot[..., None])
    if window is not None:
        k_pos = positions_from_mask(mask)  # [batch, length]
        visible &= (positions[:, :, None] - k_pos[:, None, :]) < window
    return visible


def write_kv(cache: Stack5, x: Float[Array, "batch t kv hd"], layer: int, index: WriteIndex
             ) -> Stack5:
    """``cache`` with ``x`` written at ``[layer, b, :, index .. index + t - 1]``.

    A scalar ``index`` is one ``dynamic_update_slice`` (the decode hot path); a
    ``[batch]`` vector is a scatter, each row at its own slot. Both clamp the start to
    ``length - t`` as ``dynamic_update_slice`` does.
    """
    if isinstance(cache, Layers):  # one buffer per layer: write that layer's in place
        return cache.set(layer, write_kv(cache[layer][None], x, 0, index)[0])
    index = jnp.asarray(index, jnp.int32)
    x = x.astype(cache.dtype)
    if index.ndim == 0:
        zero = jnp.zeros((), jnp.int32)
        start = (jnp.asarray(layer, jnp.int32), zero, zero, index, zero)
        # [batch, t, kv, hd] -> [1, batch, kv, t, hd]
        return update_bits(cache, x.transpose(0, 2, 1, 3)[None], start)
    start = jnp.clip(index, 0, cache.shape[3] - x.shape[1])  # [batch]
    return _scatter_slots(cache, x, layer, start[:, None] + jnp.arange(x.shape[1]))


def _scatter_slots(cache: Stack5, x: Float[Array, "batch n kv hd"], layer: Any,
                   slots: Int[Array, "*batch n"]) -> Stack5:
    """``cache[layer, b, :, slots[b, i]] = x[b, i]`` (``slots`` [n] or [batch, n], unique)."""
    if isinstance(cache, Layers):
        return cache.set(layer, _scatter_slots(cache[layer][None], x, 0, slots)[0])
    b, n = x.shape[:2]
    rows = jnp.arange(b, dtype=jnp.int32)[:, None]  # [batch, 1]
    slots = jnp.broadcast_to(slots, (b, n))
    # advanced indices (layer, rows, slots) broadcast to [batch, n] and lead: x's layout
    return set_bits(cache, (layer, rows, slice(None), slots), x, mode="promise_in_bounds")


def checked_index(index: Any, batch: int) -> WriteIndex:
    """``index`` as int32, ValueError unless it is a scalar or a ``[batch]`` vector."""
    index = jnp.asarray(index, jnp.int32)
    if index.ndim > 1 or index.ndim == 1 and index.shape[0] != batch:
        raise ValueError(f"cache index must be a scalar or a [{batch}] vector, got shape "
                         f"{index.shape}")
    return index


@runtime_checkable
class CacheStack(Protocol):
    """The methods the decoder and the strategies call on one stack (see the module doc)."""

    index: WriteIndex  # the next logical slot, int32 scalar or [batch]

    def visibility(self, mask: Array, positions: Array, t: int, window: int | None
                   ) -> Bool[Array, "batch t S"]:
        """Which of the S keys `update` gives back each of the ``t`` new queries sees."""
        ...

    def update(self, layer: int, k: Array, v: Array) -> tuple[Any, Array, Array]:
        """Write ``layer``'s k/v ``[batch, t, kv, hd]``; ``(stack, keys, values)``, the
        keys/values ``[batch, kv, S, hd]`` its queries attend to."""
        ...

    def key_slots(self, t: int) -> Int[Array, "rows S"] | None:
        """The logical slot of each key (None: key ``j`` is slot ``j``)."""
        ...

    def advance(self, t: int) -> Any:
        """The stack after a call of ``t`` tokens."""
        ...

    def reorder(self, rows: Int[Array, " rows"]) -> Any:
        """Row ``i`` becomes old row ``rows[i]``."""
        ...

    def rewind(self, index: WriteIndex) -> Any:
        """The write position set to ``index``."""
        ...


class _Rows:
    """``reorder`` / ``rewind`` / ``advance`` shared by the k/v stacks below."""

    k: Stack5
    v: Stack5
    index: WriteIndex

    def reorder(self, rows: Int[Array, " rows"]) -> Any:
        """The cache whose row ``i`` is old row ``rows[i]`` (k/v gathered on axis 1; a
        vector index gathered too, a scalar one kept)."""
        rows = jnp.asarray(rows, jnp.int32)
        index = self.index if jnp.ndim(self.index) == 0 else jnp.take(self.index, rows)
        return self.replace(k=take_batch_rows(self.k, rows), v=take_batch_rows(self.v, rows),
                            index=index)

    def rewind(self, index: WriteIndex) -> Any:
        """The same cache with its write position set to ``index`` (scalar or [batch])."""
        return self.replace(index=checked_index(index, self.k.shape[1]))

    def advance(self, t: int) -> Any:
        """The cache after a call of ``t`` tokens (index + t)."""
        return self.replace(index=self.index + t)


@struct.dataclass
class KVCache(_Rows):
    """Preallocated full-attention key/value cache.

    k, v: [layers, batch, kv_heads, length, head_dim]
    index: int32 scalar or [batch] vector, the slot the next token is written to.
    """

    k: Stack5
    v: Stack5
    index: WriteIndex

    @classmethod
    def zeros(cls, layers: int, batch: int, kv_heads: int, length: int, head_dim: int,
              dtype: Any = jnp.float32) -> KVCache:
        """An empty cache, index 0."""
        shape = (layers, batch, kv_heads, length, head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   index=jnp.zeros((), jnp.int32))

    @property
    def length(self) -> int:
        return self.k.shape[3]

    def visibility(self, mask: Array, positions: Array, t: int, window: int | None = None
                   ) -> Bool[Array, "batch t length"]:
        """`attention_visibility` at this cache's index."""
        return attention_visibility(mask, positions, self.index, window)

    def update(self, layer: Any, k: Float[Array, "batch t kv hd"], v: Array
               ) -> tuple[KVCache, LiveSlots, LiveSlots]:
        """Write ``k``/``v`` of ``layer`` at the index; the layer's keys/values after it,
        as `LiveSlots` (attention reads only up to the last written slot)."""
        new = self.replace(k=write_kv(self.k, k, layer, self.index),
                           v=write_kv(self.v, v, layer, self.index))
        return new, *new.view(layer, k.shape[1])

    def view(self, layer: Any, t: int) -> tuple[LiveSlots, LiveSlots]:
        """Keys and values of ``layer`` after a call of ``t`` tokens (`LiveSlots`)."""
        end = jnp.max(jnp.asarray(self.index, jnp.int32)) + t
        scales = getattr(self, "k_scale", None), getattr(self, "v_scale", None)
        return (LiveSlots(self.k, layer, end, scales[0]),
                LiveSlots(self.v, layer, end, scales[1]))

    def key_slots(self, t: int) -> None:
        """None: key ``j`` is logical slot ``j``."""
        return None


def ring_slots(window: int, length: int, step_tokens: int = 1) -> int:
    """Ring size of a sliding layer: ``min(window + step_tokens - 1, length)``."""
    return min(window + max(step_tokens, 1) - 1, length)


@struct.dataclass
class RingCache(_Rows):
    """Sliding-window cache: ``k``, ``v`` ``[layers, batch, kv_heads, R, head_dim]``,
    logical slot ``s`` at ``s % R``; ``index`` as `KVCache`'s (logical)."""

    k: Stack5
    v: Stack5
    index: WriteIndex
    window: int = struct.field(pytree_node=False)

    @classmethod
    def zeros(cls, layers: int, batch: int, kv_heads: int, length: int, head_dim: int, *,
              window: int, step_tokens: int = 1, dtype: Any = jnp.float32) -> RingCache:
        """An empty ring of `ring_slots` slots, index 0."""
        shape = (layers, batch, kv_heads, ring_slots(window, length, step_tokens), head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   index=jnp.zeros((), jnp.int32), window=window)

    @property
    def slots(self) -> int:
        """``R``, the ring's physical slots."""
        return self.k.shape[3]

    def _fresh(self, t: int) -> bool:
        """Whether a call of ``t`` tokens attends over the ring *and* its fresh keys."""
        return t > self.slots - self.window + 1

    def key_slots(self, t: int) -> Int[Array, "rows S"]:
        """Logical slot of each key a call of ``t`` tokens sees (``[1 or batch, S]``; -1:
        never written). Ring slot ``r`` holds the newest ``s < end`` with ``s % R == r``."""
        index = jnp.asarray(self.index, jnp.int32).reshape(-1, 1)  # [1 or batch, 1]
        end = index if self._fresh(t) else index + t
        r = jnp.arange(self.slots, dtype=jnp.int32)
        held = end - 1 - jnp.mod(end - 1 - r, self.slots)  # [rows, R]
        if not self._fresh(t):
            return held
        return jnp.concatenate([held, index + jnp.arange(t, dtype=jnp.int32)], axis=1)

    def visibility(self, mask: Array, positions: Array, t: int, window: int | None
                   ) -> Bool[Array, "batch t S"]:
        """Query ``i`` (slot ``index + i``) sees key slot ``s`` iff it was written
        (``s >= 0``), ``mask[b, s]``, ``s <= index + i`` and the positions are less than
        ``window`` apart."""
        if window != self.window:
            raise ValueError(f"a RingCache of window {self.window} used for window {window}")
        b, length = mask.shape
        slots = self.key_slots(t)
        q_slot = jnp.asarray(self.index, jnp.int32).reshape(-1, 1) + jnp.arange(t)
        at = jnp.broadcast_to(jnp.clip(slots, 0, length - 1), (b, slots.shape[1]))
        k_mask = jnp.take_along_axis(mask, at, axis=1)  # [batch, S]
        k_pos = jnp.take_along_axis(positions_from_mask(mask), at, axis=1)
        return ((slots >= 0)[:, None, :] & (k_mask != 0)[:, None, :]
                & (slots[:, None, :] <= q_slot[:, :, None])
                & ((positions[:, :, None] - k_pos[:, None, :]) < self.window))

    def _write(self, buf: Stack5, x: Float[Array, "batch t kv hd"], layer: int) -> Stack5:
        """``buf`` with the last ``min(t, R)`` tokens of ``x`` at their ring slots."""
        t = x.shape[1]
        n = min(t, self.slots)
        start = jnp.asarray(self.index, jnp.int32) + (t - n)
        if n == 1 and start.ndim == 0:  # the decode hot path: one slice
            return write_kv(buf, x[:, t - 1:], layer, jnp.mod(start, self.slots))
        slots = jnp.mod(start[..., None] + jnp.arange(n, dtype=jnp.int32), self.slots)
        return _scatter_slots(buf, x[:, t - n:], layer, slots)

    def update(self, layer: int, k: Float[Array, "batch t kv hd"], v: Array
               ) -> tuple[RingCache, Float[Array, "batch kv S hd"], Array]:
        """Write ``k``/``v`` of ``layer``; the keys/values its queries see (see the module
        docstring for the two cases)."""
        ck, cv = self._write(self.k, k, layer), self._write(self.v, v, layer)
        new = self.replace(k=ck, v=cv)
        if not self._fresh(k.shape[1]):
            return new, ck[layer], cv[layer]
        # [batch, t, kv, hd] -> [batch, kv, t, hd], after the ring as it was
        keys = jnp.concatenate([self.k[layer], k.astype(ck.dtype).transpose(0, 2, 1, 3)], 2)
        values = jnp.concatenate([self.v[layer], v.astype(cv.dtype).transpose(0, 2, 1, 3)], 2)
        return new, keys, values


def is_stack(x: Any) -> bool:
    """Whether ``x`` is one k/v stack (`KVCache`, its int8 form, `RingCache`)."""
    return isinstance(x, (KVCache, RingCache))


@struct.dataclass
class LayerCaches:
    """One stack per kind of layer (``"full_attention"``, ``"sliding_attention"``) for a
    model with both; the decoder picks each layer's stack by its kind."""

    stacks: dict[str, Any]

    @property
    def index(self) -> WriteIndex:
        return next(iter(self.stacks.values())).index

    def reorder(self, rows: Int[Array, " rows"]) -> LayerCaches:
        """Every stack's rows reordered."""
        return LayerCaches({k: s.reorder(rows) for k, s in self.stacks.items()})

    def rewind(self, index: WriteIndex) -> LayerCaches:
        """Every stack rewound to ``index``."""
        return LayerCaches({k: s.rewind(index) for k, s in self.stacks.items()})

    def advance(self, t: int) -> LayerCaches:
        """Every stack advanced by ``t``."""
        return LayerCaches({k: s.advance(t) for k, s in self.stacks.items()})


def write_slots(buf: Int[Array, "batch length *rest"], x: Array, index: WriteIndex) -> Array:
    """``buf`` with ``x`` ``[batch, t, ...]`` written from slot ``index`` on (scalar: one
    slice; ``[batch]``: per row, slots past the end dropped)."""
    index = jnp.asarray(index, jnp.int32)
    x = x.astype(buf.dtype)
    if index.ndim == 0:
        return lax.dynamic_update_slice_in_dim(buf, x, index, axis=1)
    slots = index[:, None] + jnp.arange(x.shape[1], dtype=jnp.int32)
    return buf.at[jnp.arange(buf.shape[0])[:, None], slots].set(x, mode="drop")


def read_slots(buf: Float[Array, "batch length *rest"], index: WriteIndex, t: int) -> Array:
    """``buf[:, index : index + t]`` (``[batch, t, ...]``), ``index`` scalar or per row."""
    index = jnp.asarray(index, jnp.int32)
    if index.ndim == 0:
        return lax.dynamic_slice_in_dim(buf, index, t, axis=1)
    slots = jnp.clip(index[:, None] + jnp.arange(t, dtype=jnp.int32), 0, buf.shape[1] - 1)
    return buf[jnp.arange(buf.shape[0])[:, None], slots]


@struct.dataclass
class TokenCache:
    """A cache (``inner``) and the token id of each of its slots (``tokens [batch,
    length]``), so that a model can re-encode every cached slot (`jaxgen.models.phi3`)."""

    inner: Any
    tokens: Int[Array, "batch length"]

    @property
    def index(self) -> WriteIndex:
        return self.inner.index

    def reorder(self, rows: Int[Array, " rows"]) -> TokenCache:
        """Rows of the cache and of the token ids reordered."""
        return TokenCache(self.inner.reorder(rows), jnp.take(self.tokens, rows, axis=0))

    def rewind(self, index: WriteIndex) -> TokenCache:
        """The inner cache rewound (token ids past it are rewritten before use)."""
        return self.replace(inner=self.inner.rewind(index))


def stacks_of(cache: Any, kinds: tuple[str, ...]) -> dict[str, Any]:
    """The stack of each layer kind: a `LayerCaches`' own, or ``cache`` for a model with
    one kind of layer."""
    if isinstance(cache, LayerCaches):
        missing = sorted(set(kinds) - set(cache.stacks))
        if missing:
            raise ValueError(f"the cache has no stack for {missing} layers")
        return dict(cache.stacks)
    if len(kinds) != 1:
        raise ValueError(f"a model with {list(kinds)} layers needs a LayerCaches with one "
                         f"stack per kind, got {type(cache).__name__}")
    return {kinds[0]: cache}


def with_stacks(cache: Any, stacks: dict[str, Any]) -> Any:
    """``cache`` rebuilt from updated ``stacks`` (inverse of `stacks_of`)."""
    if isinstance(cache, LayerCaches):
        return LayerCaches(stacks)
    (stack,) = stacks.values()
    return stack


def split_stacks(model: Any, cache: Any) -> Any:
    """``cache`` with one buffer per layer (`jaxgen.models.per_layer`), as a decode state
    keeps it from the prefill on: the dot reads a layer in place and a chunked run copies
    nothing between ``run_steps`` calls. Scanned-layer models keep their stacks."""
    if getattr(model, "scan_layers", False):
        return cache
    return split_layers(cache, is_stack)
