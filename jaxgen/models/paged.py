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
``update`` (scatter the new keys/values to their blocks and hand attention the pool as
`jaxgen.models.live.PagedSlots`: decode steps read it chunk by chunk in place, prefill
copies the rows' blocks out; pure JAX), ``advance``, ``rewind``. ``reorder`` is
refused: rows sharing blocks cannot diverge in place.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxgen.models.cache import (
    KVCache,
    LayerCaches,
    RingCache,
    WriteIndex,
    attention_visibility,
    checked_index,
)
from jaxgen.models.live import PagedSlots
from jaxgen.models.quant import quantize
from jaxgen.ops import set_bits

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

    def _row_end(self, t: int) -> Int[Array, " batch"]:
        """One past the last slot each row of this call may see; 0 for rows whose index is
        at or past the end (finished engine slots, whose writes are dropped)."""
        index = jnp.broadcast_to(jnp.asarray(self.index, jnp.int32), self.table.shape[:1])
        return jnp.where(index < self.length, jnp.minimum(index + t, self.length), 0)

    def update(self, layer: int, k: Float[Array, "batch t kv hd"], v: Array
               ) -> tuple[PagedCache, PagedSlots, PagedSlots]:
        """Write ``k``/``v`` of ``layer`` at the rows' slots (writes past a row's table
        are dropped); the layer's keys/values as `PagedSlots`, read in place."""
        block, offset = self._physical(k.shape[1])
        ends = self._row_end(k.shape[1])
        new, out = self, []
        for name, x in (("k", k), ("v", v)):
            # advanced (layer, block, offset) around a slice: [b, t] lead, x [b, t, kv, _]
            pools = tuple(set_bits(p, (layer, slice(None), block, offset), x, mode="drop")
                          for p, x in zip(self.parts(name), self.split(x), strict=True))
            new = new._with_parts(name, pools)
            out.append(PagedSlots(pools[0], layer, self.table, ends,
                                  pools[1] if len(pools) > 1 else None))
        return new, out[0], out[1]

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


def _map(fn: Any, cache: Any) -> Any:
    if isinstance(cache, LayerCaches):
        return LayerCaches({name: fn(s) for name, s in cache.stacks.items()})
    return fn(cache)


def block_bytes(cache: Any) -> int:
    """Bytes of one block (keys and values of every layer and stack)."""
    total = 0
    for s in stacks(cache):
        for pool in (*s.parts("k"), *s.parts("v")):
            total += pool.size // pool.shape[2] * pool.dtype.itemsize  # no eager slice
    return total
