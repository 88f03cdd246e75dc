"""Watermark processor and detector: green lists, transformers' seeding semantics, and
detection of text generated with ``jaxgen.generate``."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation import logits_process as hf
from transformers.generation import watermarking as hfw

import jaxgen
from jaxgen import processors as P
from jaxgen.processors.watermark import (
    Watermark,
    detect_watermark,
    green_tokens,
    watermark_score,
)
from tests.stubs import TableLM, table_params

V = 500
SCHEMES = [("lefthash", 1), ("lefthash", 3), ("selfhash", 1), ("selfhash", 3)]


@jax.jit
def _green_mask(w: Watermark, window: jax.Array) -> jax.Array:
    return w.is_green(w.seeds(window), jnp.arange(w.vocab_size))


def _greenlist(w: Watermark, window) -> np.ndarray:
    """Our green list (token ids) for one seeding window."""
    return np.flatnonzero(np.asarray(_green_mask(w, jnp.asarray(np.asarray(window),
                                                                jnp.int32))))


def _patched_hf(w: Watermark):
    """transformers' processor with its torch green lists replaced by ours, so its own
    windowing / candidate / bias logic is the oracle for ours."""
    proc = hf.WatermarkLogitsProcessor(
        vocab_size=w.vocab_size, device="cpu", greenlist_ratio=float(w.greenlist_ratio),
        bias=float(w.bias), hashing_key=int(w.hashing_key), seeding_scheme=w.seeding_scheme,
        context_width=w.context_width)

    def greenlist_ids(input_seq):
        # lefthash: the tokens before; selfhash: they end with the candidate
        window = input_seq[-w.context_width:].numpy()
        return torch.tensor(_greenlist(w, window), dtype=torch.long)

    proc._get_greenlist_ids = greenlist_ids
    return proc


# --- the permutation and the green lists ------------------------------------------------

@jax.jit
def _perm_and_green(w: Watermark, seed: jax.Array) -> tuple[jax.Array, jax.Array]:
    tokens = jnp.arange(w.vocab_size + 7)           # ids beyond the vocabulary too
    return w.permute(seed, tokens[: w.vocab_size]), w.is_green(seed, tokens)


# vocab sizes: tiny, a power of two, one above it (the widest cycle-walk), typical
@settings(max_examples=60, deadline=None)
@given(vocab=st.sampled_from([2, 3, 5, 64, 65, 500, 4097]),
       seed=st.integers(0, 2**32 - 1), ratio=st.floats(0.01, 0.99))
def test_permutation_is_a_bijection_and_green_list_has_exact_size(vocab, seed, ratio):
    w = Watermark(vocab_size=vocab, greenlist_ratio=ratio)
    perm, green = (np.asarray(a) for a in _perm_and_green(w, jnp.uint32(seed)))
    np.testing.assert_array_equal(np.sort(perm), np.arange(vocab))
    assert green.sum() == int(np.floor(np.float32(vocab) * np.float32(ratio)))
    assert not green[vocab:].any()                  # ids beyond the vocabulary never green


def test_green_lists_look_independent_across_seeds():
    w = Watermark(vocab_size=1000)
    green = np.asarray(w.is_green(w.seeds(jnp.arange(400)[:, None])[:, None],
                                  jnp.arange(1000)[None]))               # [400 tokens, 1000]
    overlap = (green[:-1] & green[1:]).sum(1) / 250                     # neighbouring seeds
    assert abs(overlap.mean() - 0.25) < 0.01
    per_token = green.mean(0)                                           # each ~Bin(400, .25)
    assert abs(per_token.std() - np.sqrt(0.25 * 0.75 / 400)) < 0.005


def test_lefthash_seed_is_key_times_last_token_for_width_one():
    w = Watermark(vocab_size=V, hashing_key=12345)
    seeds = np.asarray(w.seeds(jnp.array([[0], [1], [7], [499]])))
    np.testing.assert_array_equal(seeds, (12345 * np.array([0, 1, 7, 499])).astype(np.uint32))


# --- the processor: transformers' logic with our green lists ----------------------------

@pytest.mark.parametrize("scheme,width", SCHEMES)
def test_processor_matches_transformers_logic(scheme, width):
    w = Watermark(vocab_size=V, bias=1.5, seeding_scheme=scheme, context_width=width)
    rs = np.random.RandomState(width)
    ids = rs.randint(0, V, (3, 6))
    logits = (rs.randn(3, V) * 2).astype(np.float32)
    expected = _patched_hf(w)(torch.tensor(ids), torch.tensor(logits)).numpy()
    got = np.asarray(P.apply(w, ids, logits))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert (got != logits).any()


@pytest.mark.parametrize("scheme,width", SCHEMES)
def test_green_list_depends_only_on_the_window(scheme, width):
    w = Watermark(vocab_size=V, seeding_scheme=scheme, context_width=width)
    rs = np.random.RandomState(1)
    ids = rs.randint(0, V, (1, 8))
    logits = rs.randn(1, V).astype(np.float32)
    base = np.asarray(P.apply(w, ids, logits))
    earlier = ids.copy()
    earlier[0, : 8 - w.context_tokens] = (earlier[0, : 8 - w.context_tokens] + 1) % V
    np.testing.assert_array_equal(np.asarray(P.apply(w, earlier, logits)), base)
    if w.context_tokens:
        last = ids.copy()
        last[0, -1] = (last[0, -1] + 1) % V
        assert (np.asarray(P.apply(w, last, logits)) != base).any()


def test_lefthash_biases_exactly_the_green_list():
    w = Watermark(vocab_size=V, bias=2.0)
    out = np.asarray(P.apply(w, np.array([[3, 17]]), np.zeros((1, V), np.float32)))
    np.testing.assert_array_equal(np.flatnonzero(out[0]), _greenlist(w, [17]))
    assert set(np.unique(out)) == {0.0, 2.0} and (out == 2.0).sum() == 125


def test_selfhash_biases_only_top_candidates_in_their_own_list():
    w = Watermark(vocab_size=V, seeding_scheme="selfhash", context_width=2)
    rs = np.random.RandomState(2)
    logits = rs.randn(1, V).astype(np.float32)
    out = np.asarray(P.apply(w, np.array([[5, 9]]), logits))
    biased = np.flatnonzero(out[0] != logits[0])
    top40 = set(np.argsort(-logits[0])[:40].tolist())
    assert 0 < len(biased) < 40 and set(biased.tolist()) <= top40
    for c in top40:
        assert (c in biased) == (c in _greenlist(w, [9, c]))


@pytest.mark.parametrize("scheme,width", SCHEMES)
def test_on_candidates_equals_full_row_after_top_k(scheme, width):
    """Watermark after TopK (transformers' order): the sampler's candidate space gives
    the full row's result."""
    w = Watermark(vocab_size=V, seeding_scheme=scheme, context_width=width)
    rs = np.random.RandomState(3)
    ids = rs.randint(0, V, (3, 6))
    logits = (rs.randn(3, V) * 2).astype(np.float32)
    top = P.TopK(30)
    full = np.asarray(P.apply(P.chain(top, w), ids, logits))
    vals, cand = top.candidates(jnp.asarray(logits))
    out = np.asarray(w.on_candidates(vals, cand, P.Context.from_input_ids(ids)))
    scattered = np.full_like(full, -np.inf)
    np.put_along_axis(scattered, np.asarray(cand), out, axis=1)
    np.testing.assert_array_equal(scattered, full)
    assert (out[np.isfinite(out)] != np.asarray(vals)[np.isfinite(out)]).any()


def test_no_bias_before_the_window_exists():
    w = Watermark(vocab_size=V, context_width=3)
    logits = np.zeros((1, V), np.float32)
    np.testing.assert_array_equal(np.asarray(P.apply(w, np.array([[4, 5]]), logits)), logits)
    assert (np.asarray(P.apply(w, np.array([[3, 4, 5]]), logits)) != 0).any()


def test_constructor_errors_and_not_a_warper():
    assert not Watermark.is_warper
    with pytest.raises(TypeError, match="device"):
        Watermark(V, "cpu")
    for kw, field in [({"greenlist_ratio": 1.0}, "greenlist_ratio"),
                      ({"seeding_scheme": "hash"}, "seeding_scheme"),
                      ({"context_width": 0}, "context_width")]:
        with pytest.raises(ValueError, match=field):
            Watermark(vocab_size=V, **kw)
    with pytest.raises(ValueError, match="vocab_size"):
        Watermark(vocab_size=1)


def test_changing_numbers_does_not_recompile(count_compiles):
    f = jax.jit(P.apply)
    ids, logits = np.array([[1, 2, 3]]), np.zeros((1, V), np.float32)
    f(Watermark(vocab_size=V), ids, logits)
    with count_compiles() as c:
        for kw in [{"bias": 0.5}, {"hashing_key": 7}, {"greenlist_ratio": 0.5}]:
            f(Watermark(vocab_size=V, **kw), ids, logits).block_until_ready()
    assert c.count == 0


# --- detection ---------------------------------------------------------------------------

@pytest.mark.parametrize("ignore_repeated", [False, True])
@pytest.mark.parametrize("scheme,width", SCHEMES)
def test_detector_matches_transformers_logic(scheme, width, ignore_repeated):
    w = Watermark(vocab_size=40, seeding_scheme=scheme, context_width=width)
    ids = np.random.RandomState(width).randint(0, 40, (3, 30))
    ids[1, 10:20] = ids[1, :10]                                   # repeated n-grams
    det = hfw.WatermarkDetector(
        model_config=types.SimpleNamespace(bos_token_id=-1, is_encoder_decoder=False,
                                           vocab_size=40),
        device="cpu", ignore_repeated_ngrams=ignore_repeated,
        watermarking_config={"greenlist_ratio": 0.25, "bias": 2.0,
                             "hashing_key": int(w.hashing_key), "seeding_scheme": scheme,
                             "context_width": width})
    det.processor = _patched_hf(w)
    expected = det(torch.tensor(ids), z_threshold=1.0, return_dict=True)
    got = detect_watermark(w, ids, z_threshold=1.0, ignore_repeated_ngrams=ignore_repeated)
    np.testing.assert_array_equal(np.asarray(got.num_tokens_scored), expected.num_tokens_scored)
    np.testing.assert_array_equal(np.asarray(got.num_green_tokens), expected.num_green_tokens)
    for field in ["green_fraction", "z_score", "p_value", "confidence"]:
        np.testing.assert_allclose(np.asarray(getattr(got, field)),
                                   getattr(expected, field), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got.prediction), expected.prediction)


def test_detector_is_jittable_and_skips_prompt_and_padding():
    w = Watermark(vocab_size=V, context_width=2)
    ids = np.random.RandomState(0).randint(0, V, (2, 20))
    mask = np.ones_like(ids)
    mask[1, :3] = 0
    eager = detect_watermark(w, ids, prompt_length=5, attention_mask=mask)
    jitted = jax.jit(detect_watermark, static_argnames="ignore_repeated_ngrams")(
        w, ids, 5, mask)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(eager.num_tokens_scored), [15, 15])
    _, scored = green_tokens(w, ids, 0, mask)
    np.testing.assert_array_equal(np.asarray(scored).sum(1), [18, 17])


def _generate(processors, seed, model_table, prompt, mask=None, n=200):
    model = TableLM(vocab_size=V)
    params = table_params(model_table, max_pos=256)
    return np.asarray(jaxgen.generate(
        model, params, prompt, mask, do_sample=True, top_k=0, max_new_tokens=n,
        pad_token_id=0, eos_token_id=None, logits_processor=processors,
        rng=jax.random.key(seed)))


PROMPT = np.array([[0, 0, 11, 12, 13], [21, 22, 23, 24, 25], [0, 31, 32, 33, 34]])
PROMPT_MASK = (np.arange(5)[None] >= np.array([[2], [0], [1]])).astype(np.int32)


@pytest.mark.parametrize("scheme,width,scale", [("lefthash", 1, 0.0), ("lefthash", 3, 0.0),
                                                ("selfhash", 2, 2.0)])
def test_generated_text_is_detected(scheme, width, scale):
    """Uniform (lefthash) or peaked random (selfhash: it only biases the 40 best) next-
    token distributions over 500 tokens, 200 sampled tokens per row."""
    table = (np.random.RandomState(0).randn(V, V) * scale).astype(np.float32)
    w = Watermark(vocab_size=V, seeding_scheme=scheme, context_width=width)
    marked = _generate([w], 1, table, PROMPT, PROMPT_MASK)
    plain = _generate([], 1, table, PROMPT, PROMPT_MASK)
    assert marked.shape == (3, 205)
    z_marked = np.asarray(watermark_score(w, marked, prompt_length=5))
    z_plain = np.asarray(watermark_score(w, plain, prompt_length=5))
    assert (z_marked > 4).all(), z_marked
    assert (np.abs(z_plain) < 3).all(), z_plain
    out = detect_watermark(w, marked, prompt_length=5, z_threshold=4.0)
    assert np.asarray(out.prediction).all() and (np.asarray(out.num_tokens_scored) == 200).all()
    # a different key sees no watermark
    other = Watermark(vocab_size=V, seeding_scheme=scheme, context_width=width, hashing_key=99)
    assert (np.abs(np.asarray(watermark_score(other, marked, prompt_length=5))) < 3).all()
