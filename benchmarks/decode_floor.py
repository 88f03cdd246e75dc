"""Shared by the bench_* scripts: a model's bare decode loop, timed per step.

    step_ms = DecodeFloor(model, params, batch=8, length=4096).time(fill=410, steps=32)

The loop is the smallest a strategy could be: one token per row, argmax, inside one
jitted ``lax.while_loop`` with the cache donated. The cache starts at ``fill`` slots
(mask ones, keys as left by ``init_cache``), so a step's cost at any fill is measured
without running a prefill first.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxgen.models.cache import is_stack
from jaxgen.models.per_layer import split_layers


def _argmax(x: jax.Array) -> jax.Array:
    idx = jnp.arange(x.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(x == jnp.max(x, -1, keepdims=True), idx, x.shape[-1]), -1)


class DecodeFloor:
    """The decode loop of ``model`` for ``batch`` rows and a ``length``-slot cache."""

    def __init__(self, model: Any, params: Any, *, batch: int, length: int,
                 cache_dtype: Any = None) -> None:
        if cache_dtype is not None:  # e.g. "int8": the decoder families' kv_cache_dtype
            model = dataclasses.replace(model, kv_cache_dtype=cache_dtype)
        self.model, self.params, self.batch, self.length = model, params, batch, length
        self._run = jax.jit(partial(self._loop, model), static_argnums=(3,),
                            donate_argnums=(1,))

    def start(self, fill: int) -> tuple[Any, jax.Array, jax.Array]:
        """(cache at index ``fill``, its mask, the first token per row)."""
        m = self.model
        cache = m.init_cache(self.batch, self.length)
        cache = m.rewind_cache(cache, jnp.asarray(fill, jnp.int32))
        if not getattr(m, "scan_layers", False):  # one buffer per layer, as jaxgen's state
            cache = split_layers(cache, is_stack)
        mask = (jnp.arange(self.length) < fill).astype(jnp.int32)[None].repeat(self.batch, 0)
        return cache, mask, jnp.ones((self.batch,), jnp.int32)

    @staticmethod
    def _loop(model: Any, params: Any, cache: Any, mask: jax.Array, steps: int,
              tok: jax.Array) -> tuple[jax.Array, Any]:
        b = tok.shape[0]

        def body(_: Any, carry: tuple) -> tuple:
            tok, cache, mask = carry
            idx = cache.index
            mask = lax.dynamic_update_slice(mask, jnp.ones((b, 1), jnp.int32), (0, idx))
            out, cache = model.apply(params, tok[:, None], jnp.full((b, 1), idx), cache, mask)
            return _argmax(out[:, 0]).astype(jnp.int32), cache, mask

        tok, cache, _ = lax.fori_loop(0, steps, body, (tok, cache, mask))
        return tok, cache

    def run(self, fill: int, steps: int) -> float:
        """Seconds for ``steps`` decode steps from ``fill`` (compiled on first use)."""
        cache, mask, tok = self.start(fill)
        jax.block_until_ready((cache, mask))
        t0 = time.perf_counter()
        out, _ = self._run(self.params, cache, mask, steps, tok)
        out.block_until_ready()
        return time.perf_counter() - t0


def interleaved(runs: dict[str, Any], repeats: int, steps: int) -> dict[str, dict[str, float]]:
    """``{name: run}`` (``run(steps) -> seconds``) timed in turns after one warm-up each:
    ``{name: {"median_ms", "min_ms"}}`` per step."""
    for run in runs.values():
        run(steps)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for k, run in runs.items():
            times[k].append(run(steps))
    return {k: {"median_ms": 1e3 * statistics.median(v) / steps, "min_ms": 1e3 * min(v) / steps}
            for k, v in times.items()}
