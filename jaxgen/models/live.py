"""The live part of a cache stack: what decode attention reads, up to the cursor.

A full cache of ``S`` slots holds keys only below ``end = max(index) + t`` after a call
of ``t`` tokens; the rest is masked. `LiveSlots` is what a stack's ``update`` hands
attention instead of the whole layer: the stack, the (possibly traced) layer and
``end``. Attention then reads the smallest *bucket* of slots ``[0, n)`` with ``n >=
end`` (`buckets`: ``BLOCK * 2**i`` below ``S``, then ``S``; one ``lax.switch`` branch
each), so a step's cost follows the tokens so far::

    S = 4096, end = 410:   reads slots [0, 512)     (1/8 of the layer)
    S = 4096, end = 3700:  reads slots [0, 4096)

A paged pool hands attention `PagedSlots` instead: its rows' blocks are read chunk by
chunk up to ``end``, in a loop (no buckets needed: the trip count is dynamic).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import struct
from jax import lax
from jaxtyping import Array, Float, Int

from jaxgen.models.per_layer import Layers
from jaxgen.ops import take_bits

BLOCK = 512  # the smallest bucket; a stack of at most this many slots is read whole


def buckets(slots: int) -> tuple[int, ...]:
    """The read sizes for a stack of ``slots`` slots: ``BLOCK * 2**i < slots``, then it."""
    out, n = [], BLOCK
    while n < slots:
        out.append(n)
        n *= 2
    return (*out, slots)


@struct.dataclass
class LiveSlots:
    """Keys (or values) of one layer of a stack ``[layers, batch, kv, S, hd]``, with
    per-slot ``scale`` ``[layers, batch, kv, S, 1]`` for int8 stacks (else None)."""

    buf: Float[Array, "layers batch kv S hd"]
    layer: Any  # int, or traced under a scan over layers
    end: Int[Array, ""]  # the slots below it may be visible
    scale: Any = None

    @property
    def slots(self) -> int:
        return self.buf.shape[3]

    def read(self, n: int) -> tuple[Float[Array, "batch kv n hd"], Any]:
        """Slots ``[0, n)`` of the layer and their scales (None for a float stack)."""
        def first(x: Any) -> Array:
            if isinstance(x, Layers):       # the layer's own buffer: read in place if whole
                a = x[self.layer]
                return a if n == a.shape[2] else lax.slice_in_dim(a, 0, n, axis=2)
            return lax.dynamic_slice_in_dim(lax.dynamic_index_in_dim(x, self.layer, 0, False),
                                            0, n, axis=2)

        return first(self.buf), None if self.scale is None else first(self.scale)


#: Bytes of keys (or values) a paged decode step copies out per loop iteration, over
#: all rows and kv heads: about an L2 cache. On the 2-core CPU machine, 16 slots of the
#: bundled model (2 kv heads x 64 float32): 256 slots per chunk ran 14% faster than 64
#: and 26% faster than 512 at 600 filled slots.
PAGED_CHUNK_BYTES = 2 << 20


@struct.dataclass
class PagedSlots:
    """Keys (or values) of one layer of a paged pool, read in place by the rows' block
    tables: what a `jaxgen.models.paged.PagedCache` hands attention.

    pool ``[layers, kv, blocks, B, last]`` (``scale``: int8 per-slot scales, same
    layout with ``last = 1``), ``table [batch, n]`` (logical block -> pool block) and
    ``row_end`` (row ``r`` sees no slot at or past ``row_end[r]``; ``end`` is their max).
    `gather` copies every row's blocks out (``[kv, batch, n * B, last]``, for prefill);
    `chunk` copies only ``c`` blocks per row (`per_chunk`), so a decode step can walk the
    blocks below ``end`` in a loop whose pieces stay in the CPU caches
    (`jaxgen.models.attention`), instead of copying the rows whole; a chunk's blocks at
    or past a row's end read as the null block."""

    pool: Array
    layer: Any          # int, or traced under a scan over layers
    table: Int[Array, "batch n"]
    row_end: Int[Array, " batch"]   # per row: no slot at or past it is seen
    scale: Any = None

    @property
    def end(self) -> Int[Array, ""]:
        """No row sees a slot at or past it."""
        return jnp.max(self.row_end)

    @property
    def kv(self) -> int:
        return self.pool.shape[1]

    @property
    def block_size(self) -> int:
        return self.pool.shape[3]

    @property
    def slots(self) -> int:
        return self.table.shape[1] * self.block_size

    @property
    def per_chunk(self) -> int:
        """Blocks per `chunk`: a power of two, about `PAGED_CHUNK_BYTES` over the rows."""
        b, n = self.table.shape
        row = self.kv * self.block_size * self.pool.shape[4] * self.pool.dtype.itemsize
        c = 1
        while 2 * c <= n and 2 * c * row * b <= PAGED_CHUNK_BYTES:
            c *= 2
        return c

    def _take(self, pool: Array, table: Int[Array, "batch m"]) -> Array:
        """``table``'s blocks of the layer, ``[kv, batch, m * B, last]``: one take of
        whole blocks from the pool seen as ``[layers * kv * blocks, B * last]`` rows (a
        gather of block rows, not of elements: copy speed on XLA:CPU)."""
        layers, kv, blocks, bs, last = pool.shape
        b, m = table.shape
        heads = jnp.asarray(self.layer, jnp.int32) * kv + jnp.arange(kv, dtype=jnp.int32)
        rows = (heads[:, None, None] * blocks + table[None]).reshape(-1)
        flat = pool.reshape(layers * kv * blocks, bs * last)
        return take_bits(flat, rows, axis=0, mode="clip").reshape(kv, b, m * bs, last)

    def gather(self) -> tuple[Float[Array, "kv batch S last"], Any]:
        """Every row's blocks in logical order, and their scales (None for floats)."""
        return self._take(self.pool, self.table), (
            None if self.scale is None else self._take(self.scale, self.table))

    def chunks(self) -> tuple[Int[Array, ""], Int[Array, "batch n_chunks c"]]:
        """(chunks below ``end``, the table padded with the null block to whole chunks)."""
        c = self.per_chunk
        b, n = self.table.shape
        table = jnp.pad(self.table, ((0, 0), (0, -n % c))).reshape(b, -1, c)
        return (self.end + c * self.block_size - 1) // (c * self.block_size), table

    def chunk(self, table: Int[Array, "batch n_chunks c"], j: Int[Array, ""]
              ) -> tuple[Float[Array, "kv batch C last"], Any]:
        """Chunk ``j`` of every row (``C = c * B`` slots from slot ``j * C``) and its
        scales."""
        cols = lax.dynamic_index_in_dim(table, j, 1, keepdims=False)     # [batch, c]
        # blocks a row cannot see yet (reserved for its later tokens) read the null block
        # instead: it stays in the CPU caches, the row's own blocks come from memory only
        # while live
        first = (j * cols.shape[1] + jnp.arange(cols.shape[1])) * self.block_size
        cols = jnp.where(first[None] < self.row_end[:, None], cols, 0)
        return self._take(self.pool, cols), (
            None if self.scale is None else self._take(self.scale, cols))
