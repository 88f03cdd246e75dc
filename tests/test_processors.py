"""Processors: numeric parity with transformers and property tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation import logits_process as hf

from jaxgen import processors as P


def _pair(batch=3, vocab=300, seed=0, length=7):
    rs = np.random.RandomState(seed)
    logits = (rs.randn(batch, vocab) * 3).astype(np.float32)
    ids = rs.randint(0, vocab, size=(batch, length))
    return ids, logits


def _hf(proc, ids, logits):
    return proc(torch.tensor(ids), torch.tensor(logits)).numpy()


CASES = [
    (P.Temperature(0.7), hf.TemperatureLogitsWarper(0.7)),
    (P.Temperature(1.9), hf.TemperatureLogitsWarper(1.9)),
    (P.TopK(5), hf.TopKLogitsWarper(5)),
    (P.TopK(1), hf.TopKLogitsWarper(1)),
    (P.TopK(3, min_tokens_to_keep=6), hf.TopKLogitsWarper(3, min_tokens_to_keep=6)),
    (P.TopP(0.9), hf.TopPLogitsWarper(0.9)),
    (P.TopP(0.3), hf.TopPLogitsWarper(0.3)),
    (P.TopP(0.01, min_tokens_to_keep=4), hf.TopPLogitsWarper(0.01, min_tokens_to_keep=4)),
    (P.MinP(0.1), hf.MinPLogitsWarper(0.1)),
    (P.MinP(0.9, min_tokens_to_keep=3), hf.MinPLogitsWarper(0.9, min_tokens_to_keep=3)),
    (P.MinLength(10, [3, 5]), hf.MinLengthLogitsProcessor(10, [3, 5])),
    (P.MinLength(5, 3), hf.MinLengthLogitsProcessor(5, 3)),
    (P.MinNewTokensLength(4, 5, [3, 7]), hf.MinNewTokensLengthLogitsProcessor(4, 5, [3, 7])),
    (P.MinNewTokensLength(4, 3, [3, 7]), hf.MinNewTokensLengthLogitsProcessor(4, 3, [3, 7])),
]


@pytest.mark.parametrize("vocab", [300, 5000])  # 5000: top-p threshold search, not sort
@pytest.mark.parametrize("ours,theirs", CASES, ids=lambda c: type(c).__name__)
def test_parity_with_transformers(ours, theirs, vocab):
    ids, logits = _pair(vocab=vocab)
    expected = _hf(theirs, ids, logits)
    got = np.asarray(P.apply(ours, ids, logits))
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(expected))
    np.testing.assert_allclose(got[np.isfinite(got)], expected[np.isfinite(expected)],
                               rtol=1e-6, atol=1e-5)


def test_chain_matches_sequential_transformers():
    ids, logits = _pair(vocab=500, seed=3)
    ours = P.chain(P.Temperature(0.8), P.TopK(40), P.TopP(0.8), P.MinP(0.05))
    expected = logits
    for p in [hf.TemperatureLogitsWarper(0.8), hf.TopKLogitsWarper(40),
              hf.TopPLogitsWarper(0.8), hf.MinPLogitsWarper(0.05)]:
        expected = _hf(p, ids, expected)
    got = np.asarray(P.apply(ours, ids, logits))
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(expected))
    np.testing.assert_allclose(got[np.isfinite(got)], expected[np.isfinite(expected)],
                               rtol=1e-6)


def test_top_k_candidates_equal_full_filter():
    _, logits = _pair(vocab=1000, seed=5)
    k = P.TopK(13)
    vals, ids = k.candidates(jnp.asarray(logits))
    full = np.asarray(P.apply(k, np.zeros((3, 1), np.int32), logits))
    for r in range(3):
        kept = set(np.flatnonzero(np.isfinite(full[r])).tolist())
        assert kept == set(np.asarray(ids[r])[np.isfinite(np.asarray(vals[r]))].tolist())


def test_bad_constructor_values_name_the_field():
    for make, field in [(lambda: P.Temperature(0.0), "temperature"),
                        (lambda: P.TopK(0), "top_k"), (lambda: P.TopP(1.5), "top_p"),
                        (lambda: P.MinP(-0.1), "min_p"),
                        (lambda: P.MinLength(-1, 2), "min_length")]:
        with pytest.raises(ValueError, match=field):
            make()


def test_stateless_and_chain_flatten():
    f = P.stateless(lambda logits, ctx: logits + 1.0)
    c = P.chain(P.chain(f, P.Temperature(2.0)), f)
    assert len(c.processors) == 3
    out = P.apply(c, np.zeros((1, 1), np.int32), np.zeros((1, 4), np.float32))
    np.testing.assert_allclose(np.asarray(out), 1.5)
    with pytest.raises(TypeError, match="stateless"):
        P.chain(lambda x: x)


# --- property tests ---------------------------------------------------------------------

# no subnormals: XLA:CPU flushes them to zero, which creates ties numpy does not see
_logit = st.floats(-20, 20, width=32, allow_subnormal=False)
logit_rows = st.integers(1, 4).flatmap(lambda b: st.integers(2, 40).flatmap(
    lambda v: st.lists(st.lists(_logit, min_size=v, max_size=v), min_size=b, max_size=b)))

WARPERS = st.one_of(
    st.floats(0.05, 5.0).map(lambda t: P.Temperature(t)),
    st.integers(1, 60).map(lambda k: P.TopK(k)),
    st.floats(0.0, 1.0).map(lambda p: P.TopP(p)),
    st.floats(0.0, 1.0).map(lambda p: P.MinP(p)),
)


@settings(max_examples=60, deadline=None)
@given(rows=logit_rows, proc=WARPERS)
def test_warpers_keep_shape_mask_only_and_agree_under_jit(rows, proc):
    logits = np.asarray(rows, np.float32)
    ids = np.zeros((logits.shape[0], 2), np.int32)
    out = np.asarray(P.apply(proc, ids, logits))
    assert out.shape == logits.shape and out.dtype == np.float32
    assert np.isfinite(out).any(axis=-1).all()                 # never removes everything
    if not isinstance(proc, P.Temperature):
        kept = np.isfinite(out)
        np.testing.assert_array_equal(out[kept], logits[kept])  # masks only remove
    jitted = np.asarray(jax.jit(P.apply)(proc, ids, logits))
    np.testing.assert_allclose(jitted, out, rtol=1e-6)


@settings(max_examples=60, deadline=None)
@given(rows=logit_rows, k=st.integers(1, 60))
def test_top_k_keeps_at_most_k_unless_ties(rows, k):
    logits = np.asarray(rows, np.float32)
    out = np.asarray(P.apply(P.TopK(k), np.zeros((logits.shape[0], 1), np.int32), logits))
    for r in range(len(logits)):
        n = np.isfinite(out[r]).sum()
        kth = np.sort(logits[r])[::-1][min(k, logits.shape[1]) - 1]
        assert n == (logits[r] >= kth).sum()
        assert n >= min(k, logits.shape[1])


@settings(max_examples=60, deadline=None)
@given(rows=logit_rows, p=st.floats(0.01, 0.99))
def test_top_p_keeps_smallest_set_reaching_p(rows, p):
    logits = np.asarray(rows, np.float64)
    out = np.asarray(P.apply(P.TopP(p), np.zeros((logits.shape[0], 1), np.int32),
                             logits.astype(np.float32)))
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for r in range(len(logits)):
        kept = np.isfinite(out[r])
        mass = probs[r][kept].sum()
        smallest_kept = probs[r][kept].min()
        # the kept mass reaches p, and without its least likely token it would not
        # (tolerance for float32 rounding at the boundary)
        assert mass >= p - 1e-4 or kept.all()
        assert mass - smallest_kept < p + 1e-4
