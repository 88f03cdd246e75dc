"""Parameters onto a mesh straight from a checkpoint, and kv heads repeated to fit it.

`Placement` puts each checkpoint tensor on a mesh with ``jax.make_array_from_callback``:
each process reads only the windows its own devices hold (`checkpoint.read_params` hands
it a window reader per tensor), so no host ever holds a parameter it does not keep::

    lm = jaxgen.load("path/to/hf_dir", mesh=mesh)      # uses placement(mesh)

kv-head replication (as vLLM and MaxText do it): with ``kv`` kv heads on a ``model``
axis of size ``m`` that ``kv`` does not divide, the model gets ``K = lcm(kv, m)`` kv
heads, each stored head repeated ``r = K / kv`` times in place. Query head ``h`` used kv
head ``h // (heads / kv)`` and now uses ``h // (heads / K)``, a copy of the same head:
the same tokens, and each device holds only the ``K / m`` kv heads its query heads need
(k/v projections and biases, OLMo 2's whole-projection k norm, the KV cache). Example:
4 query heads, 2 kv heads [a, b], m = 4 -> [a, a, b, b]; device i holds query head i and
kv head i. Llama 3 8B (8 kv heads) on 16-way tensor parallelism: each head twice.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jaxtyping import Int

from jaxgen.models.registry import family_of
from jaxgen.sharding import (
    _path_str,
    auto_axes,
    check_model,
    replicated_kv_heads,
    rules_for,
    spec_for,
)

KV_PARAMS = r"self_attn/(k_proj|v_proj)/(kernel|bias)$"  # last axis: kv heads * head_dim
KV_NORM = r"self_attn/k_norm/scale$"  # too, when qk_norm == "projection" (OLMo 2)


def kv_repeat(model: Any, mesh: Mesh) -> int:
    """How many copies of each kv head ``model`` needs on ``mesh`` (1: none).

    ValueError when the query heads do not divide the ``model`` axis, or the model's
    kv heads would need copies and its family is not a shared-decoder one.
    """
    family, m = family_of(model), mesh.shape.get("model", 1)
    config = getattr(model, "config", None)
    if family is None or m == 1 or family.kv_heads(config) % m == 0:
        return 1
    if family.kv_heads_field != "num_key_value_heads":
        check_model(model, mesh)  # e.g. GPT-2's n_head: raises, naming it
    kv = family.kv_heads(config)
    return replicated_kv_heads(config.num_attention_heads, kv, m) // kv


def with_kv_heads(model: Any, repeat: int) -> Any:
    """``model`` with ``repeat`` times its kv heads (its params from `replicate_kv_heads`)."""
    if repeat == 1:
        return model
    config = dataclasses.replace(model.config,
                                 num_key_value_heads=model.config.num_key_value_heads * repeat)
    return dataclasses.replace(model, config=config)


def kv_source(model: Any, name: str, shape: tuple[int, ...], repeat: int
              ) -> Int[np.ndarray, " columns"] | None:
    """For a parameter whose last axis is ``kv heads * head_dim``: the stored column of
    each of its ``repeat``-times-wider columns (head ``j`` of the copy is stored head
    ``j // repeat``); None for every other parameter, or ``repeat == 1``."""
    c = model.config
    norm = getattr(c, "qk_norm", None) == "projection" and re.search(KV_NORM, name)
    if repeat == 1 or not (re.search(KV_PARAMS, name) or norm):
        return None
    hd = c.head_dim
    if shape[-1] != c.num_key_value_heads * hd:
        raise ValueError(f"parameter {name!r} of shape {shape}: expected a last axis of "
                         f"num_key_value_heads * head_dim = {c.num_key_value_heads * hd}")
    col = np.arange(shape[-1] * repeat)
    return (col // hd // repeat) * hd + col % hd


def replicate_kv_heads(model: Any, params: Any, mesh: Mesh) -> tuple[Any, Any]:
    """``(model, params)`` with kv heads repeated to fit ``mesh`` (module docstring);
    unchanged when the ``model`` axis divides the kv heads. For parameters already in
    memory; ``jaxgen.load(path, mesh=mesh)`` does it while reading."""
    repeat = kv_repeat(model, auto_axes(mesh))

    def expand(path: Any, x: Any) -> Any:
        src = kv_source(model, _path_str(path), tuple(np.shape(x)), repeat)
        return x if src is None else jnp.take(x, src, axis=-1)

    return (with_kv_heads(model, repeat),
            jax.tree_util.tree_map_with_path(expand, params))


class Placement:
    """``placement(slot, window) -> jax.Array``: one checkpoint tensor placed on ``mesh``
    by ``rules`` (default `rules_for`), kv heads repeated as needed; ``.model`` is the
    model the placed parameters belong to. See `checkpoint.read_params` for ``slot``
    (our path and shape, stored transposed or not) and ``window`` (HF-layout slices ->
    numpy)."""

    def __init__(self, model: Any, mesh: Mesh, rules: Any = None):
        self.mesh = auto_axes(mesh)
        self.repeat = kv_repeat(model, self.mesh)
        self.source_model, self.model = model, with_kv_heads(model, self.repeat)
        self.rules = rules_for(self.model, self.mesh) if rules is None else rules
        self.dtype = jnp.dtype(model.dtype)

    def __call__(self, slot: Any, window: Callable[[tuple[slice, ...]], np.ndarray]
                 ) -> jax.Array:
        name = "/".join(slot.path)
        src = kv_source(self.source_model, name, slot.shape, self.repeat)
        shape = slot.shape if src is None else (*slot.shape[:-1], len(src))
        sharding = NamedSharding(self.mesh, spec_for(name, shape, self.mesh, self.rules))
        done: dict[tuple[tuple[int, int], ...], np.ndarray] = {}

        def once(index: tuple[slice, ...]) -> np.ndarray:  # replicas and copies: one read
            key = tuple((s.start, s.stop) for s in index)
            if key not in done:
                done[key] = window(index)
            return done[key]

        def shard(index: tuple[slice, ...]) -> np.ndarray:
            index = tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, shape, strict=True))
            return self._read(slot, once, index, src)

        return jax.make_array_from_callback(shape, sharding, shard, dtype=self.dtype)

    def _read(self, slot: Any, window: Callable[[tuple[slice, ...]], np.ndarray],
              index: tuple[slice, ...], src: np.ndarray | None) -> np.ndarray:
        """Our ``index`` of the parameter: its stored window (transposed back), cast."""
        if src is not None:  # the stored columns the copies come from, as one window
            cols = src[index[-1]]
            lo = int(cols.min())
            index = (*index[:-1], slice(lo, int(cols.max()) + 1))
        x = window(tuple(reversed(index))).T if slot.transposed else window(index)
        if src is not None:
            x = np.take(x, cols - lo, axis=-1)
        return np.ascontiguousarray(x.astype(self.dtype))


def placement(mesh: Mesh, rules: Any = None) -> Callable[[Any], tuple[Any, Placement]]:
    """For ``load_checkpoint(..., placement=...)``: model -> ``(model with its kv heads
    repeated as needed, its Placement)``."""
    def make(model: Any) -> tuple[Any, Placement]:
        p = Placement(model, mesh, rules)
        return p.model, p

    return make
