"""Sliding-window layers keep a ring buffer (`jaxgen.models.cache.RingCache`): the same
logits as a full-length cache under a window mask through prefills longer than the
window, decoding, speculative-style writes of K + 1 tokens with rewinds (scalar and
per-row cursors) and beam reordering, in O(window) memory."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen.models import (
    Decoder,
    Gemma3Config,
    KVCache,
    LayerCaches,
    Llama,
    LlamaConfig,
    RingCache,
)
from jaxgen.models.cache import positions_from_mask

VOCAB, WINDOW, K = 61, 4, 3
_SIZES = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_attention_heads=4,
              num_key_value_heads=2)
MODELS = {
    "mistral": lambda: Llama(LlamaConfig(**_SIZES, num_hidden_layers=2, model_type="mistral",
                                         sliding_window=WINDOW)),
    "gemma3": lambda: Decoder(Gemma3Config(**_SIZES, num_hidden_layers=6, head_dim=8,
                                           sliding_window=WINDOW, rope_theta=100.0,
                                           local_rope_theta=10.0)),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def setup(request):
    """(model, params with sharp attention, jitted apply)."""
    model = MODELS[request.param]()
    params = model.init_params(jax.random.key(0))
    params = jax.tree.map(lambda x: x * 12 if x.ndim == 2 else x, params)  # std 0.24
    return model, params, jax.jit(model.apply)


def _full_cache(model, batch: int, length: int):
    """The reference: every layer in a full-length KVCache (windows applied by mask)."""
    c = model.config
    stacks = {k: KVCache.zeros(sum(c.kind(i) == k for i in range(c.num_hidden_layers)), batch,
                               c.num_key_value_heads, length, c.head_dim) for k in c.kinds}
    return LayerCaches(stacks) if len(stacks) > 1 else stacks[c.kinds[0]]


def _ring_stack(cache):
    return cache.stacks["sliding_attention"] if isinstance(cache, LayerCaches) else cache


def _prompt(length: int):
    rs = np.random.RandomState(0)
    seq = rs.randint(0, VOCAB, (2, length)).astype(np.int32)
    mask = np.zeros((2, length), np.int32)
    mask[0, :9], mask[1, 5:9] = 1, 1  # prompts of 9 and 4 (left-padded), longer than WINDOW
    return seq, mask


def _speculate(model, apply, params, cache, per_row: bool, rounds: int = 6, length: int = 48):
    """Prefill, then rounds of: rewind to the newest token, write it + K drafts, keep
    0..K+1 of them (per row or for all), clear the rejected slots. All logits."""
    rs = np.random.RandomState(1)
    seq, mask = _prompt(length)
    outs = []
    # copies: jax may alias a numpy argument, which is then changed while in flight
    out, cache = apply(params, seq[:, :9].copy(), positions_from_mask(mask[:, :9]), cache,
                       mask.copy())
    outs.append(out)
    cur = np.full(2, 9) if per_row else 9
    for _ in range(rounds):
        rows = np.arange(2)[:, None]
        slots = np.broadcast_to(np.asarray(cur).reshape(-1, 1) - 1 + np.arange(K + 1),
                                (2, K + 1))  # [rows, K + 1]
        mask[rows, slots] = 1
        positions = np.asarray(positions_from_mask(jnp.asarray(mask)))[rows, slots]
        cache = model.rewind_cache(cache, jnp.asarray(cur - 1, jnp.int32))
        out, cache = apply(params, seq[rows, slots], positions, cache, mask.copy())
        outs.append(out)
        n = rs.randint(0, K + 2, 2) if per_row else rs.randint(0, K + 2)  # 0: a finished row
        cur = cur + n
        for r in range(2):
            mask[r, (cur[r] if per_row else cur):slots[r, -1] + 1] = 0
            seq[r, (cur[r] if per_row else cur) - 1] = rs.randint(VOCAB)  # the bonus token
    return outs, cache


@pytest.mark.parametrize("per_row", [False, True], ids=["scalar", "per_row"])
def test_speculative_rewinds_match_the_full_cache(setup, per_row):
    model, params, apply = setup
    ring = model.init_cache(2, 48, step_tokens=K + 1)
    assert _ring_stack(ring).slots == WINDOW + K
    got, _ = _speculate(model, apply, params, ring, per_row)
    ref, _ = _speculate(model, apply, params, _full_cache(model, 2, 48), per_row)
    live = _prompt(48)[1][:, :9] == 1  # the prefill's pad queries attend to nothing
    np.testing.assert_allclose(np.asarray(got[0])[live], np.asarray(ref[0])[live], atol=2e-5)
    for a, b in zip(got[1:], ref[1:], strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=0)


def test_a_ring_sized_for_fewer_tokens_loses_keys(setup):
    """The sizing rule is tight: a ring for K tokens per call (one slot short) misses keys
    in the same rounds (a row that keeps none of its K + 1 re-scores the same slots)."""
    model, params, apply = setup
    short, _ = _speculate(model, apply, params, model.init_cache(2, 48, step_tokens=K), False)
    ref, _ = _speculate(model, apply, params, _full_cache(model, 2, 48), False)
    assert any(np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-3
               for a, b in zip(short, ref, strict=True))


def test_decode_and_reorder_match_the_full_cache(setup):
    """Prefill longer than the window, one token per call, beams reordered in between."""
    model, params, apply = setup
    seq, mask = _prompt(20)
    pos = np.asarray(positions_from_mask(jnp.asarray(mask[:, :9])))
    caches = [model.init_cache(2, 20), _full_cache(model, 2, 20)]
    outs = [apply(params, seq[:, :9].copy(), pos, c, mask.copy()) for c in caches]
    caches = [c for _, c in outs]
    np.testing.assert_allclose(np.asarray(outs[0][0])[mask[:, :9] == 1],
                               np.asarray(outs[1][0])[mask[:, :9] == 1], atol=2e-5)
    for s in range(9, 17):
        mask[:, s] = 1
        if s == 12:  # beam search: row 0 <- row 1, row 1 <- row 0
            caches = [model.reorder_cache(c, jnp.asarray([1, 0])) for c in caches]
            seq, mask = seq[::-1].copy(), mask[::-1].copy()
        pos = np.asarray(positions_from_mask(jnp.asarray(mask)))[:, s:s + 1]
        outs = [apply(params, seq[:, s:s + 1].copy(), pos, c, mask.copy()) for c in caches]
        np.testing.assert_allclose(np.asarray(outs[0][0]), np.asarray(outs[1][0]), atol=2e-5)
        caches = [c for _, c in outs]
    assert int(caches[0].index) == 17


def test_sliding_stack_memory_is_o_window():
    """Gemma 3's 5:1 pattern at 4096 slots, window 128: the sliding stack holds 128 slots
    per layer instead of 4096 (131 with step_tokens=4); the full stack keeps 4096."""
    model = Decoder(Gemma3Config(**_SIZES, num_hidden_layers=6, head_dim=8, sliding_window=128))
    cache = jax.eval_shape(lambda: model.init_cache(2, 4096))
    assert isinstance(cache, LayerCaches)
    full, sliding = cache.stacks["full_attention"], cache.stacks["sliding_attention"]
    assert isinstance(cache.stacks["sliding_attention"], RingCache)

    def nbytes(stack) -> int:
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(stack))

    per_layer = nbytes(full.k) + nbytes(full.v)  # 1 full layer: 2 * 2 * 2 * 4096 * 8 * 4 B
    assert per_layer == 2 * 2 * 2 * 4096 * 8 * 4
    assert nbytes(sliding.k) + nbytes(sliding.v) == 5 * per_layer * 128 // 4096
    everything_full = 6 * per_layer
    assert nbytes(cache) < everything_full * (1 + 5 * 128 / 4096) / 6 + 64  # + the indices
    ring = jax.eval_shape(lambda: model.init_cache(2, 4096, step_tokens=4))
    assert ring.stacks["sliding_attention"].k.shape[3] == 131
    assert jax.eval_shape(lambda: model.init_cache(2, 100)).stacks["sliding_attention"] \
        .k.shape[3] == 100  # never more than the length
