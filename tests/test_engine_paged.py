"""The paged KV cache (`jaxgen.models.paged`) and its host bookkeeping
(`jaxgen.engine.blocks`): the same logits as a contiguous cache through chunked
prefills and per-row decoding with scattered block tables (full and sliding-window
models), and block allocation, prefix sharing, release and eviction."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxgen.engine.blocks import BlockManager, block_digests
from jaxgen.models import Decoder, Gemma3Config, Llama, LlamaConfig
from jaxgen.models.attention import KVMajor, attend
from jaxgen.models.base import logits as full_logits
from jaxgen.models.live import PagedSlots
from jaxgen.models.paged import PagedCache, block_bytes, paged_like, stacks, with_rows

VOCAB, BS = 61, 4
_SIZES = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4,
              num_key_value_heads=2)
MODELS = {
    "llama": lambda: Llama(LlamaConfig(**_SIZES, num_hidden_layers=2)),
    "gemma3": lambda: Decoder(Gemma3Config(**_SIZES, num_hidden_layers=3, head_dim=8,
                                           sliding_window=3, rope_theta=100.0,
                                           local_rope_theta=10.0)),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def setup(request):
    model = MODELS[request.param]()
    params = model.init_params(jax.random.key(0))
    params = jax.tree.map(lambda x: x * 12 if x.ndim == 2 else x, params)  # sharp attention
    return model, params, jax.jit(model.apply)


def test_paged_equals_contiguous(setup):
    """Two rows of different lengths, blocks scattered over the pool: a prefill in two
    chunks per row (the rows' blocks copied out), then decode steps with a per-row index
    (the pool read chunk by chunk in place), equal the teacher-forced logits."""
    model, params, apply = setup
    rs = np.random.RandomState(1)
    lengths, steps, max_blocks = (9, 14), 4, 6
    length = max_blocks * BS
    seqs = rs.randint(0, VOCAB, (2, max(lengths) + steps)).astype(np.int32)
    order = rs.permutation(np.arange(1, 2 * max_blocks + 1)).reshape(2, max_blocks)
    cache = with_rows(paged_like(model, batch=2, blocks=2 * max_blocks + 1, block_size=BS,
                                 max_blocks=max_blocks), order, np.zeros(2, np.int32))
    assert isinstance(stacks(cache)[0], PagedCache) and block_bytes(cache) > 0
    got = {}
    for row, n in enumerate(lengths):                       # per-row prefill, two chunks
        for start, stop in ((0, 5), (5, n)):
            view = with_rows(cache, order[row:row + 1], np.asarray([start], np.int32))
            mask = (np.arange(length) < stop).astype(np.int32)[None]
            out, view = apply(params, seqs[row:row + 1, start:stop],
                              np.arange(start, stop, dtype=np.int32)[None], view, mask)
            cache = with_rows(view, order, np.zeros(2, np.int32))
        got[row] = [out[0, -1]]
    cur = np.asarray(lengths, np.int32)
    for _ in range(steps):         # decode both rows at once
        cache = with_rows(cache, order, cur)
        mask = (np.arange(length)[None] <= cur[:, None]).astype(np.int32)
        tok = seqs[np.arange(2), cur][:, None]
        out, cache = apply(params, tok, cur[:, None], cache, mask)
        for row in range(2):
            got[row].append(out[row, 0])
        cur = cur + 1
    for row, n in enumerate(lengths):
        want = full_logits(model, params, seqs[row:row + 1, :n + steps])[0, n - 1:]
        np.testing.assert_allclose(np.stack(got[row]), want, rtol=2e-4, atol=2e-4)


def test_paged_refuses_reorder():
    cache = PagedCache.zeros(1, 2, 1, 4, blocks=3, block_size=BS, max_blocks=1)
    with pytest.raises(NotImplementedError, match="reorder"):
        cache.reorder(jnp.asarray([1, 0]))


def test_blocks_allocate_share_release_evict():
    bm = BlockManager(8, BS)                                  # 7 usable blocks
    prompt = list(range(13))                                  # 3 full blocks before the last
    a = bm.allocate(prompt, 16)                               # 4 blocks
    assert a.cached == 0 and len(a.blocks) == 4 and bm.in_use == 4
    bm.register(a, 12)
    b = bm.allocate(prompt[:9] + [99, 98, 97, 96, 95], 14)    # shares the first 2 blocks
    assert b.cached == 2 and b.blocks[:2] == a.blocks[:2] and bm.in_use == 6
    assert bm.refs[a.blocks[0]] == 2 and bm.cached_tokens == 2 * BS
    assert bm.allocate(list(range(50, 70)), 20) is None       # 5 needed, 1 free
    shared = a.blocks[0]
    bm.release(a)
    assert bm.refs[shared] == 1
    bm.release(b)
    assert bm.in_use == 0 and bm.peak == 6
    c = bm.allocate(prompt, 16)                               # prefix still cached
    assert c.cached == 3
    bm.release(c)
    d = bm.allocate(list(range(100, 128)), 28)                # 7 blocks: evicts cached ones
    assert d is not None and len(set(d.blocks)) == 7 and 0 not in d.blocks
    assert bm.allocate(prompt, 16) is None
    bm.release(d)
    assert bm.allocate(prompt, 16).cached == 0                # the prefix was evicted


def test_block_digests_chain():
    d1 = block_digests([1, 2, 3, 4, 5, 6, 7, 8], BS)
    d2 = block_digests([9, 2, 3, 4, 5, 6, 7, 8], BS)
    assert len(d1) == 2 and d1[0] != d2[0] and d1[1] != d2[1]   # same block, other prefix
    assert block_digests([1, 2, 3], BS) == []
    with pytest.raises(ValueError, match="at least 2 blocks"):
        BlockManager(1, BS)


_ATTEND = {}


def _attend_both(bs: int, softcap: float | None, int8: bool):
    """Jitted (chunked, whole) paged attention for one pool shape (compiled once)."""
    key = (bs, softcap, int8)
    if key not in _ATTEND:
        def run(q, kp, vp, ks, vs, table, index, mask):
            cache = PagedCache(k=kp, v=vp, table=table, index=index,
                               k_scale=ks if int8 else None, v_scale=vs if int8 else None)
            t = q.shape[1]
            visible = cache.visibility(mask, jnp.zeros((q.shape[0], t), jnp.int32), t)
            ends = cache._row_end(t)          # blocks past a row's end: the null block
            keys = PagedSlots(kp, 1, table, ends, ks if int8 else None)
            values = PagedSlots(vp, 1, table, ends, vs if int8 else None)
            chunked, _ = attend(q, keys, values, visible, 0.3, softcap)
            (kx, kxs), (vx, vxs) = keys.gather(), values.gather()
            whole, _ = attend(q, KVMajor(kx, kxs), KVMajor(vx, vxs), visible, 0.3, softcap)
            return chunked, whole
        _ATTEND[key] = jax.jit(run)
    return _ATTEND[key]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bs=st.sampled_from([4, 16, 32]), t=st.sampled_from([1, 3]),
       softcap=st.sampled_from([None, 20.0]), int8=st.booleans(),
       seed=st.integers(0, 2**16), parked=st.lists(st.booleans(), min_size=3, max_size=3),
       edge=st.booleans())
def test_chunked_paged_attention_equals_whole_rows(bs, t, softcap, int8, seed, parked, edge):
    """Decode attention read chunk by chunk from the pool equals the attention over the
    rows' blocks copied out, for scattered tables, rows of any length (a masked tail of
    uneven chunks; with ``edge`` the longest row's new keys start a chunk; blocks past a
    row's end read as the null block), parked rows (index past the end: left out) and
    int8 pools with scales; every unparked row's output matches."""
    rs = np.random.RandomState(seed)
    b, kv, hd, n_blocks, heads = 3, 2, 8, 11, 4
    blocks = b * n_blocks + 1
    pools = [rs.standard_normal((2, kv, blocks, bs, hd)).astype(np.float32) for _ in "kv"]
    scales = [rs.uniform(0.005, 0.02, (2, kv, blocks, bs, 1)).astype(np.float32)
              for _ in "kv"]                          # int8 values x scale: about N(0, 1)
    if int8:
        pools = [np.clip(np.round(p * 80), -127, 127).astype(np.int8) for p in pools]
    table = rs.permutation(np.arange(1, blocks))[:b * n_blocks].reshape(b, n_blocks)
    length = n_blocks * bs
    index = rs.randint(0, length - t + 1, b).astype(np.int32)
    if edge:                    # the longest row writes the first slots of its last chunk
        width = PagedSlots(pools[0], 0, table, np.zeros(b, np.int32)).per_chunk * bs
        index[0] = (length - t) // width * width
        index[1:] = np.minimum(index[1:], index[0])
        parked[0] = False
    if all(parked):
        parked[0] = False
    index = np.where(parked, length, index).astype(np.int32)
    mask = (rs.uniform(size=(b, length)) < 0.9).astype(np.int32)
    mask[:, 0] = 1
    q = rs.standard_normal((b, t, heads, hd)).astype(np.float32)
    chunked, whole = _attend_both(bs, softcap, int8)(q, *pools, *scales, table.astype(np.int32),
                                                     index, mask)
    live = ~np.asarray(parked)
    want = np.asarray(whole)[live]
    np.testing.assert_allclose(np.asarray(chunked)[live], want, rtol=1e-5,
                               atol=1e-6 * np.abs(want).max())
