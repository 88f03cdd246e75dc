"""Typical, Epsilon, Eta and TopH warpers: parity with transformers, candidate space,
the sort-free typical path, properties and compile counts."""

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
from jaxgen.processors import sampling as S
from jaxgen.processors.sampling import Epsilon, Eta, TopH, Typical


def _logits(batch=4, vocab=300, seed=0, scale=3.0, masked=0.0):
    rs = np.random.RandomState(seed)
    x = (rs.randn(batch, vocab) * scale).astype(np.float32)
    if masked:                                    # e.g. after an earlier filter
        drop = rs.rand(batch, vocab) < masked
        drop[:, 0] = False
        x[drop] = -np.inf
    return x


def _hf(proc, logits):
    ids = torch.zeros((logits.shape[0], 3), dtype=torch.long)
    return proc(ids, torch.tensor(logits)).numpy()


def _ours(proc, logits):
    return np.asarray(P.apply(proc, np.zeros((logits.shape[0], 3), np.int32), logits))


def _assert_same(got, expected):
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(expected))
    np.testing.assert_allclose(got[np.isfinite(got)], expected[np.isfinite(expected)],
                               rtol=1e-6, atol=1e-5)


CASES = [
    (Typical(0.9), hf.TypicalLogitsWarper(0.9)),
    (Typical(0.2), hf.TypicalLogitsWarper(0.2)),
    (Typical(0.01), hf.TypicalLogitsWarper(0.01)),
    (Typical(0.5, min_tokens_to_keep=7), hf.TypicalLogitsWarper(0.5, min_tokens_to_keep=7)),
    (Typical(0.9, filter_value=-50.0), hf.TypicalLogitsWarper(0.9, filter_value=-50.0)),
    (Epsilon(3e-4), hf.EpsilonLogitsWarper(3e-4)),
    (Epsilon(0.05), hf.EpsilonLogitsWarper(0.05)),
    (Epsilon(0.9), hf.EpsilonLogitsWarper(0.9)),          # nothing passes: keep the best
    (Epsilon(0.9, min_tokens_to_keep=4), hf.EpsilonLogitsWarper(0.9, min_tokens_to_keep=4)),
    (Eta(3e-4), hf.EtaLogitsWarper(3e-4)),
    (Eta(0.05), hf.EtaLogitsWarper(0.05)),
    (Eta(0.9, min_tokens_to_keep=5, device="cpu"),
     hf.EtaLogitsWarper(0.9, min_tokens_to_keep=5, device="cpu")),
    (TopH(0.4), hf.TopHLogitsWarper(0.4)),
    (TopH(0.1), hf.TopHLogitsWarper(0.1)),
    (TopH(0.9, filter_value=-1e4), hf.TopHLogitsWarper(0.9, filter_value=-1e4)),
]
IDS = [f"{type(o).__name__}-{i}" for i, (o, _) in enumerate(CASES)]


@pytest.mark.parametrize("masked", [0.0, 0.3])
@pytest.mark.parametrize("scale", [1.0, 3.0])
@pytest.mark.parametrize("vocab", [300, 5000])   # 5000: typical's sort-free path
@pytest.mark.parametrize("ours,theirs", CASES, ids=IDS)
def test_parity_with_transformers(ours, theirs, vocab, scale, masked):
    logits = _logits(vocab=vocab, seed=vocab + int(scale), scale=scale, masked=masked)
    _assert_same(_ours(ours, logits), _hf(theirs, logits))


@pytest.mark.parametrize("vocab", [300, 5000])
@pytest.mark.parametrize("make", [
    lambda k, hf_: (Typical(0.5, min_tokens_to_keep=k) if not hf_ else
                    hf.TypicalLogitsWarper(0.5, min_tokens_to_keep=k)),
    lambda k, hf_: (Epsilon(0.5, min_tokens_to_keep=k) if not hf_ else
                    hf.EpsilonLogitsWarper(0.5, min_tokens_to_keep=k)),
    lambda k, hf_: (Eta(0.5, min_tokens_to_keep=k) if not hf_ else
                    hf.EtaLogitsWarper(0.5, min_tokens_to_keep=k)),
], ids=["Typical", "Epsilon", "Eta"])
@pytest.mark.parametrize("k", [1, 2, 299, 300, 10_000])     # up to and beyond the row width
def test_min_tokens_to_keep_edges(make, k, vocab):
    logits = _logits(vocab=vocab, seed=k, scale=5.0)
    _assert_same(_ours(make(k, False), logits), _hf(make(k, True), logits))


def test_top_h_keeps_at_most_top_n_and_needs_no_min_tokens():
    logits = _logits(vocab=5000, scale=0.1)                  # flat: everything in budget
    out = _ours(TopH(1.0), logits)
    assert (np.isfinite(out).sum(-1) <= 100).all()
    with pytest.raises(TypeError):
        TopH(0.5, min_tokens_to_keep=2)                       # not in transformers either


# --- the sampler's candidate space --------------------------------------------------------

WARPERS = [Typical(0.9), Typical(0.3, min_tokens_to_keep=3), Epsilon(0.01),
           Epsilon(0.2, min_tokens_to_keep=2), Eta(0.01), Eta(0.1, min_tokens_to_keep=2),
           TopH(0.4), TopH(0.9)]


@pytest.mark.parametrize("k", [5, 40, 100])
@pytest.mark.parametrize("warper", WARPERS, ids=lambda w: type(w).__name__)
def test_candidate_space_keeps_the_same_set(warper, k):
    """TopK then the warper on the full row == the warper on ``TopK.candidates``."""
    logits = _logits(vocab=5000, seed=k, scale=2.0)
    top = P.TopK(k)
    full = _ours(P.chain(top, warper), logits)
    vals, ids = top.candidates(jnp.asarray(logits))
    cand = np.asarray(warper(vals, (), None)[0])
    for r in range(logits.shape[0]):
        kept = set(np.flatnonzero(np.isfinite(full[r])).tolist())
        assert kept == set(np.asarray(ids[r])[np.isfinite(cand[r])].tolist())
        np.testing.assert_allclose(np.sort(full[r][np.isfinite(full[r])]),
                                   np.sort(cand[r][np.isfinite(cand[r])]), rtol=1e-6)


def test_sampler_scores_equal_full_row_chain():
    """``warp_and_sample`` (candidates after TopK) reports the full-row chain's scores."""
    from jaxgen.decoding.kernel import warp_and_sample

    logits = jnp.asarray(_logits(vocab=5000, seed=11, scale=2.0))
    warpers = (P.Temperature(0.8), P.TopK(50), Typical(0.8), Epsilon(1e-3), Eta(1e-3),
               TopH(0.9))
    keys = jax.random.split(jax.random.key(0), logits.shape[0])
    tokens, _, scores = warp_and_sample(warpers, ((),) * len(warpers), logits, None, keys,
                                        want_scores=True)
    full = _ours(P.chain(*warpers), np.asarray(logits))
    _assert_same(np.asarray(scores), full)
    assert np.isfinite(full[np.arange(len(full)), np.asarray(tokens)]).all()


# --- typical: the sort-free path is the sorted rule ---------------------------------------

@pytest.mark.parametrize("mass", [0.01, 0.3, 0.9, 0.999])
@pytest.mark.parametrize("min_keep", [1, 4])
def test_typical_search_equals_sort(mass, min_keep):
    x = _logits(batch=6, vocab=2000, seed=7, scale=2.0, masked=0.2)
    x[1] = np.round(x[1])                                    # many exact ties
    x[2] = 0.0                                               # a flat row
    x[3, 1:] = -np.inf                                       # one finite token
    x = jnp.asarray(x)
    m = jnp.float32(mass)
    sort = np.asarray(S._typical_keep_sorted(x, m, min_keep))
    search = np.asarray(S._typical_keep_search(x, m, min_keep))
    np.testing.assert_array_equal(search, sort)


# --- properties -----------------------------------------------------------------------------

# no subnormals: XLA:CPU flushes them to zero, numpy does not
values = st.floats(-20, 20, width=32, allow_subnormal=False)
narrow_rows = st.integers(1, 4).flatmap(lambda b: st.integers(2, 40).flatmap(
    lambda v: st.lists(st.lists(values, min_size=v, max_size=v),
                       min_size=b, max_size=b))).map(lambda r: np.asarray(r, np.float32))


@st.composite
def wide_rows(draw):
    """Rows wider than the sort limit (the sort-free typical path), some -inf entries."""
    b, v = draw(st.integers(1, 3)), draw(st.sampled_from([1025, 1337, 2048]))
    rs = np.random.RandomState(draw(st.integers(0, 2**31 - 1)))
    x = (rs.randn(b, v) * draw(st.floats(0.1, 8.0))).astype(np.float32)
    x[rs.rand(b, v) < draw(st.floats(0.0, 0.9))] = -np.inf
    x[:, rs.randint(v)] = 1.0
    return x


ANY_WARPER = st.one_of(
    st.builds(Typical, st.floats(0.01, 0.99), min_tokens_to_keep=st.integers(1, 5)),
    st.builds(Epsilon, st.floats(1e-5, 0.99), min_tokens_to_keep=st.integers(1, 5)),
    st.builds(Eta, st.floats(1e-5, 0.99), min_tokens_to_keep=st.integers(1, 5)),
    st.builds(TopH, st.floats(0.01, 1.0)),
)

_jit_apply = jax.jit(P.apply)


def _check_properties(proc, logits):
    out = _ours(proc, logits)
    assert out.shape == logits.shape and out.dtype == np.float32
    kept = np.isfinite(out)
    assert kept.any(axis=-1).all()                             # never removes everything
    assert not (kept & ~np.isfinite(logits)).any()             # never resurrects -inf
    np.testing.assert_array_equal(out[kept], logits[kept])     # masks only remove
    jitted = np.asarray(_jit_apply(proc, np.zeros((len(logits), 3), np.int32), logits))
    # the warpers read row values only: permuting a row permutes the result
    perm = np.random.RandomState(0).permutation(logits.shape[1])
    permuted = _ours(proc, logits[:, perm])
    for other, ref in ((jitted, out), (permuted, out[:, perm])):
        # equal, up to float32 summation order deciding near-ties at the cut on wide rows
        differ = np.isfinite(other) != np.isfinite(ref)
        assert differ.sum(axis=-1).max() <= (0 if logits.shape[1] <= 1024 else 4)
        same = ~differ
        np.testing.assert_array_equal(other[same], ref[same])


@settings(max_examples=60, deadline=None)
@given(logits=narrow_rows, proc=ANY_WARPER)
def test_properties_narrow(logits, proc):
    _check_properties(proc, logits)


@settings(max_examples=25, deadline=None)
@given(logits=wide_rows(), proc=ANY_WARPER)
def test_properties_wide(logits, proc):
    _check_properties(proc, logits)


@settings(max_examples=30, deadline=None)
@given(logits=st.one_of(narrow_rows, wide_rows()), mass=st.floats(0.01, 0.99))
def test_typical_keeps_the_closest_tokens_until_mass(logits, mass):
    """Every dropped token is farther from the entropy than every kept one, and the kept
    mass reaches ``mass`` (up to float32 rounding at the cut)."""
    out = np.asarray(_jit_apply(Typical(mass), np.zeros((len(logits), 3), np.int32), logits))
    x = logits.astype(np.float64)
    for r in range(len(x)):
        fin = np.isfinite(x[r])
        logp = np.full_like(x[r], -np.inf)
        logp[fin] = x[r][fin] - np.logaddexp.reduce(x[r][fin])
        p = np.exp(logp)
        ent = -np.sum(p[fin] * logp[fin])
        dist = np.abs(-logp - ent)
        kept = np.isfinite(out[r])
        dropped = fin & ~kept
        if dropped.any():
            assert dist[kept].max() <= dist[dropped].min() + 1e-5
            assert p[kept].sum() >= mass - 1e-4
            assert p[kept].sum() - p[kept][dist[kept] >= dist[kept].max() - 1e-6].sum() \
                < mass + 1e-4


@pytest.mark.parametrize("vocab", [300, 5000])
def test_vmap_agrees(vocab):
    logits = _logits(vocab=vocab)
    for w in WARPERS:
        batched = _ours(w, logits)
        per_row = jax.vmap(lambda row, w=w: P.apply(w, np.zeros((1, 3), np.int32),
                                                    row[None])[0])(jnp.asarray(logits))
        np.testing.assert_array_equal(np.asarray(per_row), batched)


# --- construction and compiles ------------------------------------------------------------

def test_bad_constructor_values_name_the_field():
    for make, field in [(lambda: Typical(1.0), "mass"), (lambda: Typical(0.0), "mass"),
                        (lambda: Typical(0.5, min_tokens_to_keep=0), "min_tokens_to_keep"),
                        (lambda: Epsilon(0.0), "epsilon"), (lambda: Epsilon(1.0), "epsilon"),
                        (lambda: Eta(1.5), "epsilon"),
                        (lambda: Eta(0.1, min_tokens_to_keep=0), "min_tokens_to_keep"),
                        (lambda: TopH(0.0), "top_h"), (lambda: TopH(1.1), "top_h")]:
        with pytest.raises(ValueError, match=field):
            make()
    assert all(c.is_warper for c in (Typical, Epsilon, Eta, TopH))


@pytest.mark.parametrize("vocab", [300, 5000])
def test_changing_numbers_does_not_recompile(count_compiles, vocab):
    logits = _logits(vocab=vocab)
    ids = np.zeros((4, 3), np.int32)
    f = jax.jit(P.apply)
    chains = [P.chain(Typical(m), Epsilon(e), Eta(e), TopH(h))
              for m, e, h in [(0.9, 3e-4, 0.4), (0.5, 0.01, 0.9), (0.2, 0.2, 1.0)]]
    f(chains[0], ids, logits).block_until_ready()
    with count_compiles() as c:
        for ch in chains[1:]:
            f(ch, ids, logits).block_until_ready()
    assert c.count == 0
