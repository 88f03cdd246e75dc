"""A paged KV cache: a pool of fixed-size blocks shared by every row, and a block table.

Row ``b`` keeps its logical slot ``s`` (a column of the caller's buffer, as for
`jaxgen.models.cache.KVCache`) in block ``table[b, s // B]`` at offset ``s % B``::

    pool k/v: [layers, kv_heads, blocks, B, head_dim]        (B = block_size)
    table:    [batch, max_blocks] int32   logical block -> pool block (0: the null block)
    index:    [batch] int32               next logical slot each row writes

Memory follows the tokens in flight: a row only holds the blocks its tokens fill, and
rows whose prompts start alike may point at the same blocks (prefix sharing, decided by
the host; see `jaxgen.engine.blocks`). Block 0 is never handed out: unused table entries
point at it, so writes of idle rows land there and nothing reads them (masked).

The stack has the methods the decoder calls (`jaxgen.models.cache.CacheStack`):
``visibility`` (the full-cache rule over logical slots, sliding windows by mask),
``update`` (scatter the new keys/values to their blocks, gather the row's blocks back
as `KVMajor` ``[kv, batch, max_blocks * B, head_dim]``: the pure-JAX path), ``advance``,
``rewind``. ``reorder`` is refused: rows sharing blocks cannot diverge in place.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxgen.models.attention import KVMajor
from jaxgen.models.cache import (
    KVCache,
    LayerCaches,
    RingCache,
    WriteIndex,
    attention_visibility,
    checked_index,
)
from jaxgen.models.quant import quantize

Pool = Float[Array, "layers kv blocks block hd"]  # pool[layer]: Pallas' k_pages layout


@struct.dataclass
class PagedCache:
    """Paged keys/values of the layers of one kind (see the module docstring). An int8
    pool (`jaxgen.models.quant.Int8KVCache`'s layout) keeps one float32 scale per token
    and kv head in ``k_scale``/``v_scale`` ``[layers, kv, blocks, B, 1]``."""

    k: Pool
    v: Pool
    table: Int[Array, "batch max_blocks"]
    index: WriteIndex
    # a deferred view (`attention_span(..., deferred=True)`): this call's keys/values per
    # part (`parts`), ``[layers, batch, t, kv, last]``, written afterwards by `flush`
    fresh_k: tuple[Array, ...] | None = None
    fresh_v: tuple[Array, ...] | None = None
    k_scale: Array | None = None
    v_scale: Array | None = None

    @classmethod
    def zeros(cls, layers: int, batch: int, kv_heads: int, head_dim: int, *, blocks: int,
              block_size: int, max_blocks: int, dtype: Any = jnp.float32) -> PagedCache:
        """An empty pool of ``blocks`` blocks; every row's table points at block 0
        (``dtype`` int8: with scale pools)."""
        shape = (layers, kv_heads, blocks, block_size, head_dim)
        scales = {}
        if jnp.dtype(dtype) == jnp.int8:
            scales = {n: jnp.ones((*shape[:4], 1), jnp.float32) for n in ("k_scale", "v_scale")}
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   table=jnp.zeros((batch, max_blocks), jnp.int32),
                   index=jnp.zeros((batch,), jnp.int32), **scales)

    @property
    def block_size(self) -> int:
        return self.k.shape[3]

    @property
    def length(self) -> int:
        """Logical slots per row (``max_blocks * block_size``)."""
        return self.table.shape[1] * self.block_size

    def parts(self, name: str) -> tuple[Pool, ...]:
        """The pools of ``"k"`` or ``"v"``: the values, then their scales (int8)."""
        scale = getattr(self, f"{name}_scale")
        return (getattr(self, name),) if scale is None else (getattr(self, name), scale)

    def _with_parts(self, name: str, pools: tuple[Pool, ...]) -> PagedCache:
        new = {name: pools[0]}
        if len(pools) > 1:
            new[f"{name}_scale"] = pools[1]
        return self.replace(**new)

    def split(self, x: Float[Array, "batch t kv hd"]) -> tuple[Array, ...]:
        """``x`` as the parts this pool stores (int8 values and scales, or ``x``)."""
        if self.k_scale is None:
            return (x.astype(self.k.dtype),)
        qx = quantize(x, axis=-1)
        return qx.q, qx.scale

    def visibility(self, mask: Array, positions: Array, t: int, window: int | None = None
                   ) -> Bool[Array, "batch t length"]:
        """`attention_visibility` at this cache's index (keys are the logical slots)."""
        return attention_visibility(mask, positions, self.index, window)

    def _physical(self, t: int) -> tuple[Int[Array, "batch t"], Int[Array, "batch t"]]:
        """(pool block, offset) of the ``t`` slots from the index; past the end: block
        ``blocks`` (dropped by the scatter)."""
        b = self.table.shape[0]
        slots = jnp.broadcast_to(jnp.asarray(self.index, jnp.int32), (b,))[:, None] \
            + jnp.arange(t, dtype=jnp.int32)
        logical = jnp.minimum(slots // self.block_size, self.table.shape[1] - 1)
        block = jnp.take_along_axis(self.table, logical, axis=1)
        block = jnp.where(slots < self.length, block, self.k.shape[2])
        return block, slots % self.block_size

    def _gather(self, pool: Pool, layer: int) -> Float[Array, "kv batch length last"]:
        """The rows' blocks of ``layer`` in logical order, ``[kv, batch, length, last]``.

        One take of whole blocks from the pool seen as ``[layers * kv * blocks, B * last]``
        rows (a gather of 4 KiB rows, not of elements): on XLA:CPU this runs at copy
        speed, where ``pool[layer][:, table]`` plus a transpose cost 3-4x more. The
        kv-major layout is what the attention dots take without another transpose."""
        layers, kv, blocks, bs, last = pool.shape
        b, n = self.table.shape
        heads = jnp.asarray(layer, jnp.int32) * kv + jnp.arange(kv, dtype=jnp.int32)
        rows = (heads[:, None, None] * blocks + self.table[None]).reshape(-1)
        flat = pool.reshape(layers * kv * blocks, bs * last)
        return jnp.take(flat, rows, axis=0, mode="clip").reshape(kv, b, n * bs, last)

    def update(self, layer: int, k: Float[Array, "batch t kv hd"], v: Array
               ) -> tuple[PagedCache, KVMajor, KVMajor]:
        """Write ``k``/``v`` of ``layer`` at the rows' slots; the rows' keys/values. A
        deferred view leaves the pool untouched (read-only) and keeps ``k``/``v`` for
        `flush`; its gathered keys/values hold them at their slots all the same."""
        block, offset = self._physical(k.shape[1])
        new, out = self, []
        for name, x in (("k", k), ("v", v)):
            xs = self.split(x)
            if self.fresh_k is None:
                # advanced (layer, block, offset) around a slice: [b, t] lead, x [b, t, kv, _]
                pools = tuple(p.at[layer, :, block, offset].set(x, mode="drop")
                              for p, x in zip(self.parts(name), xs, strict=True))
                new = new._with_parts(name, pools)
                rows = [self._gather(p, layer) for p in pools]
            else:
                kept = getattr(self, f"fresh_{name}")
                new = new.replace(**{f"fresh_{name}": tuple(
                    f.at[layer].set(x) for f, x in zip(kept, xs, strict=True))})
                rows = [self._with_own(self._gather(p, layer), x)
                        for p, x in zip(self.parts(name), xs, strict=True)]
            out.append(KVMajor(rows[0], rows[1] if len(rows) > 1 else None))
        return new, out[0], out[1]

    def _with_own(self, rows: Float[Array, "kv batch length last"],
                  x: Float[Array, "batch t kv last"]) -> Array:
        """Gathered rows with this call's ``x`` at their slots (those past the view are
        dropped)."""
        b, t = x.shape[:2]
        slots = jnp.broadcast_to(jnp.asarray(self.index, jnp.int32), (b,))[:, None] \
            + jnp.arange(t, dtype=jnp.int32)
        # adjacent advanced (rows, slots) stay in place: [kv, b, t, last]
        return rows.at[:, jnp.arange(b)[:, None], slots].set(x.transpose(2, 0, 1, 3),
                                                              mode="drop")

    def key_slots(self, t: int) -> None:
        return None

    def advance(self, t: int) -> PagedCache:
        return self.replace(index=self.index + t)

    def rewind(self, index: WriteIndex) -> PagedCache:
        index = checked_index(index, self.table.shape[0])
        return self.replace(index=jnp.broadcast_to(index, self.index.shape))

    def reorder(self, rows: Int[Array, " rows"]) -> PagedCache:
        raise NotImplementedError("a PagedCache cannot reorder rows (beam search): rows "
                                  "sharing blocks would overwrite each other")


def paged_like(model: Any, *, batch: int, blocks: int, block_size: int, max_blocks: int
               ) -> Any:
    """A paged cache with the layout of ``model.init_cache``: one `PagedCache` per stack
    (a `LayerCaches` of them for models with several layer kinds). Sliding-window stacks
    become full-length paged stacks (the window is applied by the attention mask)."""
    shape = jax.eval_shape(lambda: model.init_cache(1, block_size))

    def convert(stack: Any) -> PagedCache:
        if not isinstance(stack, (KVCache, RingCache)):
            raise ValueError(f"the engine pages KVCache / RingCache stacks; this model's "
                             f"cache is a {type(stack).__name__}")
        layers, _, kv, _, hd = stack.k.shape          # KVCache / RingCache layout
        return PagedCache.zeros(layers, batch, kv, hd, blocks=blocks, block_size=block_size,
                                max_blocks=max_blocks, dtype=stack.k.dtype)

    if isinstance(shape, LayerCaches):
        return LayerCaches({name: convert(s) for name, s in shape.stacks.items()})
    return convert(shape)


def stacks(cache: Any) -> list[PagedCache]:
    """The `PagedCache` stacks of a paged cache."""
    return list(cache.stacks.values()) if isinstance(cache, LayerCaches) else [cache]


def with_rows(cache: Any, table: Int[Array, "batch max_blocks"], index: WriteIndex) -> Any:
    """``cache`` (every stack) with this block table and write index."""
    return _map(lambda s: s.replace(table=jnp.asarray(table, jnp.int32),
                                    index=jnp.asarray(index, jnp.int32)), cache)


def attention_span(cache: Any, span: int, t: int | None = None) -> Any:
    """A view of ``cache`` whose rows see only their first ``span`` slots (a multiple of
    the block size): attention then gathers ``span // block_size`` blocks per row, and
    writes at slots ``>= span`` are dropped. With ``t`` (the tokens of the coming call)
    the view is deferred: the call leaves the pool as it is (so the view can run inside
    a ``lax.switch`` without copying the pool) and `flush` writes its keys/values."""
    def one(s: PagedCache) -> PagedCache:
        view = s.replace(table=s.table[:, :span // s.block_size])
        if t is None:
            return view
        def zeros(name: str) -> tuple[Array, ...]:
            return tuple(jnp.zeros((p.shape[0], s.table.shape[0], t, p.shape[1], p.shape[4]),
                                   p.dtype) for p in s.parts(name))

        return view.replace(fresh_k=zeros("k"), fresh_v=zeros("v"))

    return _map(one, cache)


def restore_span(view: Any, cache: Any) -> Any:
    """The pool (and index) of ``view`` with the block table of ``cache`` (the inverse of
    `attention_span` without ``t``)."""
    return with_rows(view, stacks(cache)[0].table, stacks(view)[0].index)


def fresh(view: Any) -> list[tuple[tuple[Array, ...], tuple[Array, ...]]]:
    """The keys/values a deferred view kept, per stack."""
    return [(s.fresh_k, s.fresh_v) for s in stacks(view)]


def flush(cache: Any, kept: list[tuple[tuple[Array, ...], tuple[Array, ...]]], t: int
          ) -> Any:
    """``cache`` with the keys/values ``kept`` from a deferred view of ``t`` tokens written
    at its index (every layer in one scatter per stack), index + t."""
    it = iter(kept)

    def one(s: PagedCache) -> PagedCache:
        block, offset = s._physical(t)
        for name, parts in zip(("k", "v"), next(it), strict=True):
            # adjacent advanced (block, offset) stay in place: [layers, kv, b, t, last]
            s = s._with_parts(name, tuple(
                p.at[:, :, block, offset].set(f.transpose(0, 3, 1, 2, 4), mode="drop")
                for p, f in zip(s.parts(name), parts, strict=True)))
        return s.replace(index=s.index + t)

    return _map(one, cache)


def _map(fn: Any, cache: Any) -> Any:
    if isinstance(cache, LayerCaches):
        return LayerCaches({name: fn(s) for name, s in cache.stacks.items()})
    return fn(cache)


def block_bytes(cache: Any) -> int:
    """Bytes of one block (keys and values of every layer and stack)."""
    total = 0
    for s in stacks(cache):
        for pool in (*s.parts("k"), *s.parts("v")):
            total += pool[:, :, 0].size * pool.dtype.itemsize
    return total
