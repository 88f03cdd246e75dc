"""Beam lanes: forks copy a parent's generated keys/values, whatever the cache dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxgen.decoding.strategies import beam_lanes
from jaxgen.models.cache import KVCache

LAYERS, KV, SLOTS, HD = 2, 2, 40, 4
PROMPT = 8


def _cache(b: int, k: int, index: int, dtype) -> KVCache:
    rs = np.random.default_rng(0)
    shape = (LAYERS, b * k, KV, SLOTS, HD)
    return KVCache(k=jnp.asarray(rs.normal(size=shape), dtype),
                   v=jnp.asarray(rs.normal(size=shape), dtype),
                   index=jnp.asarray(index, jnp.int32))


@jax.jit
def _fork(cache: KVCache, lanes, parents):
    new, src, dst, count = beam_lanes.assign(lanes, parents)
    return new, beam_lanes.copy_forks(cache, src, dst, count, PROMPT)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 3), k=st.integers(2, 4), index=st.integers(PROMPT, SLOTS),
       dtype=st.sampled_from(["float32", "bfloat16", "float16"]), data=st.data())
def test_each_beam_reads_its_parents_cache(b, k, index, dtype, data):
    """After a step, the lane of new beam i holds what its parent's lane held (generated
    slots, up to the index), bit for bit, in every dtype."""
    lanes = np.stack([data.draw(st.permutations(range(k))) for _ in range(b)])
    parents = np.array([[data.draw(st.integers(0, k - 1)) for _ in range(k)]
                        for _ in range(b)])
    cache = _cache(b, k, index, getattr(jnp, dtype))
    new_lanes, out = _fork(cache, jnp.asarray(lanes, jnp.int32),
                           jnp.asarray(parents, jnp.int32))
    new_lanes = np.asarray(new_lanes)
    for name in ("k", "v"):
        before = np.asarray(getattr(cache, name).astype(jnp.float32))
        after = np.asarray(getattr(out, name).astype(jnp.float32))
        for r in range(b):
            for i in range(k):
                was = before[:, r * k + lanes[r, parents[r, i]], :, PROMPT:index]
                now = after[:, r * k + new_lanes[r, i], :, PROMPT:index]
                np.testing.assert_array_equal(now, was)
        # the prompt's slots never move
        np.testing.assert_array_equal(after[:, :, :, :PROMPT], before[:, :, :, :PROMPT])


def test_half_precision_forks_convert_nothing():
    """A bfloat16 cache is copied as bits: XLA:CPU would otherwise convert every cache
    buffer to float32 and back around the copy loop, each step."""
    cache = _cache(2, 4, 24, jnp.bfloat16)
    lanes = jnp.tile(jnp.arange(4, dtype=jnp.int32), (2, 1))
    hlo = _fork.lower(cache, lanes, jnp.zeros_like(lanes)).compile().as_text()
    shape = f"[{LAYERS},8,{KV},{SLOTS},{HD}]"
    converts = [ln for ln in hlo.splitlines() if " convert(" in ln and shape in ln]
    assert not converts, converts[:2]
