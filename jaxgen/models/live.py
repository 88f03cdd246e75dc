"""The live part of a cache stack: what decode attention reads, up to the cursor.

A full cache of ``S`` slots holds keys only below ``end = max(index) + t`` after a call
of ``t`` tokens; the rest is masked. `LiveSlots` is what a stack's ``update`` hands
attention instead of the whole layer: the stack, the (possibly traced) layer and
``end``. Attention then reads the smallest *bucket* of slots ``[0, n)`` with ``n >=
end`` (`buckets`: ``BLOCK * 2**i`` below ``S``, then ``S``; one ``lax.switch`` branch
each), so a step's cost follows the tokens so far::

    S = 4096, end = 410:   reads slots [0, 512)     (1/8 of the layer)
    S = 4096, end = 3700:  reads slots [0, 4096)
"""

from __future__ import annotations

from typing import Any

from flax import struct
from jax import lax
from jaxtyping import Array, Float, Int

from jaxgen.models.per_layer import Layers

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
