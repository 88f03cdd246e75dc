"""One array per layer for a cache stack inside the decode loop.

A stack keeps its keys/values as one ``[layers, batch, kv, S, hd]`` array. Inside a
jitted loop, layer ``l``'s attention then reads ``k[l]``: a slice, which XLA:CPU copies
before the dot (the dot cannot take a view), so every decode step moves the live cache
three times (read, write the copy, read it again). `split_layers` turns the stacks of
a state into `Layers` (a tuple of ``[batch, kv, S, hd]`` arrays) for the loop, so the
dot reads layer ``l``'s buffer in place and the write is an in-place update of that
buffer; `stack_layers` turns them back once the loop ends (one copy of the cache per
loop, not per step). Measured: ``benchmarks/README.md``.

`Layers` has the ``shape``/``dtype`` of the stacked array and ``layers[l]``, so the
stacks' methods work on either form; `write_kv` and friends dispatch on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array

from jaxgen.ops import take_bits

FIELDS = ("k", "v", "k_scale", "v_scale")  # the per-layer arrays of a stack


@struct.dataclass
class Layers:
    """A stack's array as one array per layer (see the module docstring)."""

    arrays: tuple[Array, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.arrays), *self.arrays[0].shape)

    @property
    def dtype(self) -> Any:
        return self.arrays[0].dtype

    def __getitem__(self, layer: Any) -> Array:
        if not isinstance(layer, int):
            raise TypeError("a per-layer cache is indexed by a Python int layer; a scan over "
                            "layers keeps the stacked cache (stack_layers)")
        return self.arrays[layer]

    def set(self, layer: int, x: Array) -> Layers:
        """The same layers with layer ``layer`` replaced by ``x``."""
        arrays = list(self.arrays)
        arrays[layer] = x
        return Layers(tuple(arrays))

    def map(self, fn: Callable[[Array], Array]) -> Layers:
        return Layers(tuple(fn(a) for a in self.arrays))


def take_batch_rows(x: Any, rows: Array) -> Any:
    """Rows ``rows`` of a stacked ``[layers, batch, ...]`` array or of `Layers`."""
    if isinstance(x, Layers):
        return x.map(lambda a: take_bits(a, rows, axis=0))
    return take_bits(x, rows, axis=1)


def _convert(tree: Any, is_stack: Callable[[Any], bool], fn: Callable[[Any], Any]) -> Any:
    def one(node: Any) -> Any:
        if not is_stack(node):
            return node
        return node.replace(**{f: fn(getattr(node, f)) for f in FIELDS
                               if getattr(node, f, None) is not None})

    return jax.tree.map(one, tree, is_leaf=is_stack)


def split_layers(tree: Any, is_stack: Callable[[Any], bool]) -> Any:
    """Every stack (``is_stack``) of ``tree`` with `Layers` instead of stacked arrays."""
    return _convert(tree, is_stack, lambda x: x if isinstance(x, Layers) else
                    Layers(tuple(x[i] for i in range(x.shape[0]))))


def stack_layers(tree: Any, is_stack: Callable[[Any], bool]) -> Any:
    """The inverse of `split_layers`."""
    return _convert(tree, is_stack, lambda x: jnp.stack(x.arrays) if isinstance(x, Layers)
                    else x)
