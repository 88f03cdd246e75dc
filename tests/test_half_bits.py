"""bfloat16/float16 buffers are gathered and scattered as bits.

XLA:CPU float-normalises a gather or scatter of a 16-bit float operand: it converts the
*whole* operand to float32 first (and back, for an update). For an embedding table that
is a copy of the table per call; for the engine's paged KV pool it was a copy of every
layer's pool per layer, per decode step (SmolLM2 bfloat16 engine: 21 against 82 tok/s).
These tests compile real model steps in half precision and look for such converts.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxgen.decoding.strategies.contrastive import _put_rows
from jaxgen.models import Llama, LlamaConfig
from jaxgen.models.cache import KVCache
from jaxgen.models.paged import paged_like, stacks, with_rows
from jaxgen.ops import set_bits, take_bits

VOCAB, BS, BLOCKS, MAX_BLOCKS = 97, 4, 9, 4
CONFIG = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4,
              num_key_value_heads=2, num_hidden_layers=2)


def _converts_of(hlo: str, shapes: list[tuple[int, ...]]) -> list[str]:
    """Instructions of ``hlo`` that convert a whole array of one of ``shapes``: a float32
    result outside fused computations, or a fusion whose root is a convert (a convert
    inside a fusion that slices it is computed only where read)."""
    dims = {"[" + ",".join(map(str, s)) + "]" for s in shapes}
    out, fused = [], False
    for line in hlo.splitlines():
        if line.endswith("{") and " = " not in line:        # a computation's header
            fused = line.lstrip("%").startswith(("fused", "wrapped"))
            continue
        if " = " not in line:
            continue
        result = re.sub(r"\{[^}]*\}", "", line.split(" = ", 1)[1]).split(" ", 1)[0]
        shape = result[result.find("["):]
        if shape in dims and (result.startswith("f32") and not fused
                              or fused and line.lstrip().startswith("ROOT")
                              and " convert(" in line):
            out.append(line.strip()[:160])
    return out


@pytest.fixture(scope="module", params=["bfloat16", "float16"])
def model(request):
    m = Llama(LlamaConfig(**CONFIG), dtype=request.param)
    return m, m.init_params(jax.random.key(0))


def test_paged_decode_step_converts_no_pool(model):
    """A decode step (scatter into the pool, chunked in-place reads) and a prefill chunk
    (rows copied out) over a half-precision paged pool, and the embedding lookup."""
    m, params = model
    table = np.arange(1, 2 * MAX_BLOCKS + 1, dtype=np.int32).reshape(2, MAX_BLOCKS)
    cache = with_rows(paged_like(m, batch=2, blocks=BLOCKS, block_size=BS,
                                 max_blocks=MAX_BLOCKS), table, np.asarray([5, 2], np.int32))
    pool = stacks(cache)[0].k
    assert pool.dtype == m.dtype
    shapes = [pool.shape, (VOCAB, 32)]
    mask = np.ones((2, MAX_BLOCKS * BS), np.int32)
    for t in (1, 6):                                    # decode step, prefill chunk
        tokens = np.ones((2, t), np.int32)
        pos = np.tile(np.arange(t, dtype=np.int32), (2, 1))
        hlo = jax.jit(m.apply).lower(params, tokens, pos, cache, mask).compile().as_text()
        assert not _converts_of(hlo, shapes), _converts_of(hlo, shapes)[:2]


def test_contiguous_decode_step_converts_no_cache(model):
    m, params = model
    cache = m.init_cache(2, 16)
    assert isinstance(cache, KVCache) and cache.k.dtype == m.dtype
    hlo = jax.jit(m.apply).lower(params, np.ones((2, 1), np.int32),
                                 np.zeros((2, 1), np.int32), cache,
                                 np.ones((2, 16), np.int32)).compile().as_text()
    bad = _converts_of(hlo, [cache.k.shape, (VOCAB, 32)])
    assert not bad, bad[:2]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_contrastive_context_write_converts_nothing(dtype):
    """Contrastive search writes each step's hidden states into a ``[rows, length, d]``
    buffer inside the loop; in half precision that write must not convert the buffer."""
    buf = jnp.zeros((8, 64, 32), dtype)
    run = jax.jit(lambda b, x: jax.lax.fori_loop(0, 4, lambda i, c: _put_rows(c, x, i), b))
    hlo = run.lower(buf, jnp.ones((8, 32), dtype)).compile().as_text()
    assert not _converts_of(hlo, [buf.shape]), _converts_of(hlo, [buf.shape])[:2]
    out = run(buf, jnp.full((8, 32), 1.5, dtype))
    np.testing.assert_array_equal(np.asarray(out[:, :4], np.float32), 1.5)
    np.testing.assert_array_equal(np.asarray(out[:, 4:], np.float32), 0.0)


@settings(max_examples=20, deadline=None)
@given(dtype=st.sampled_from(["float32", "bfloat16", "float16", "int8"]),
       seed=st.integers(0, 2**16))
def test_bits_helpers_equal_plain_take_and_set(dtype, seed):
    """``take_bits`` / ``set_bits`` give exactly ``jnp.take`` / ``.at[].set``."""
    rs = np.random.default_rng(seed)
    x = jnp.asarray(rs.normal(size=(6, 5)) * 50, dtype)
    idx = jnp.asarray(rs.integers(-1, 8, 4), jnp.int32)          # out-of-range: clipped
    np.testing.assert_array_equal(take_bits(x, idx, axis=0, mode="clip"),
                                  jnp.take(x, idx, axis=0, mode="clip"))
    vals = jnp.asarray(rs.normal(size=(4, 5)) * 50, jnp.float32)
    np.testing.assert_array_equal(set_bits(x, idx, vals, mode="drop"),
                                  x.at[idx].set(vals.astype(x.dtype), mode="drop"))
