"""Constraint and guidance processors: parity with transformers, edge cases, properties."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.generation import logits_process as hf

import jaxgen
from jaxgen.processors.base import Context, apply
from jaxgen.processors.constraints import (
    ForcedBOSToken,
    ForcedEOSToken,
    InfNanRemove,
    LogitNormalization,
    PrefixConstrained,
    SuppressTokens,
    SuppressTokensAtBegin,
)
from jaxgen.processors.guidance import ClassifierFreeGuidance, UnbatchedClassifierFreeGuidance

VOCAB = 50


def _history(batch=3, length=6, seed=0, vocab=VOCAB):
    rs = np.random.RandomState(seed)
    ids = rs.randint(0, vocab, size=(batch, length))
    logits = (rs.randn(batch, vocab) * 3).astype(np.float32)
    logits[rs.rand(batch, vocab) < 0.1] = -np.inf          # some tokens already masked
    return ids, logits


def _ctx(ids, start=0, extra=4, pad=0):
    """A mid-loop context: ``start`` bucket-padding slots, the caller's ids, then
    ``extra`` unwritten slots; ``cur`` is the slot after the ids."""
    b, n = ids.shape
    seq = np.full((b, start + n + extra), pad, np.int32)
    seq[:, start:start + n] = ids
    mask = np.zeros_like(seq)
    mask[:, start:start + n] = 1
    return Context(sequences=jnp.asarray(seq), attention_mask=jnp.asarray(mask),
                   cur=jnp.asarray(start + n, jnp.int32), start=jnp.asarray(start, jnp.int32))


def _ours(proc, ctx, logits):
    out, _ = proc(jnp.asarray(logits), proc.init(ctx), ctx)
    return np.asarray(out)


@jax.jit
def _jit_run(proc, ctx, logits):
    return proc(logits, proc.init(ctx), ctx)[0]


# the processor on a leading axis of logits ([k, batch, vocab]), same context
_vmap_run = jax.vmap(_jit_run, in_axes=(None, None, 0))


def _theirs(proc, ids, logits):
    with torch.no_grad():
        return proc(torch.tensor(ids), torch.tensor(logits)).numpy()


def _assert_same(got, expected, atol=1e-5):
    assert got.shape == expected.shape
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(expected))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    fin = np.isfinite(expected)
    np.testing.assert_allclose(got[fin], expected[fin], rtol=1e-6, atol=atol)


# --- parity -----------------------------------------------------------------------------

def _allowed_py(batch_id, sent):
    """transformers-style prefix_allowed_tokens_fn: ids t with (t + last + b) % 5 == 0,
    plus the id equal to the current length."""
    last, n = int(sent[-1]), len(sent)
    return [t for t in range(VOCAB) if (t + last + batch_id) % 5 == 0 or t == n]


def _allowed_jax(batch_id, ctx):
    t = jnp.arange(VOCAB)[None, :]
    return ((t + ctx.last_tokens[:, None] + batch_id[:, None]) % 5 == 0) | (t == ctx.cur_len)


TABLE = [[3, 7, 11], [0, 49], [5], [1, 2, 3, 4, 5, 6]]

# (ours, theirs, history length)
CASES = [
    (lambda: ForcedBOSToken(4), lambda: hf.ForcedBOSTokenLogitsProcessor(4), 1),
    (lambda: ForcedBOSToken(4), lambda: hf.ForcedBOSTokenLogitsProcessor(4), 2),
    (lambda: ForcedEOSToken(7, 3), lambda: hf.ForcedEOSTokenLogitsProcessor(7, 3), 6),
    (lambda: ForcedEOSToken(7, [3, 9, 0]),
     lambda: hf.ForcedEOSTokenLogitsProcessor(7, [3, 9, 0]), 6),
    (lambda: ForcedEOSToken(7, [3, 9, 0]),
     lambda: hf.ForcedEOSTokenLogitsProcessor(7, [3, 9, 0]), 5),
    (lambda: ForcedEOSToken(7, [3, 9]), lambda: hf.ForcedEOSTokenLogitsProcessor(7, [3, 9]), 7),
    (lambda: SuppressTokens([1, 5, 49, 7]), lambda: hf.SuppressTokensLogitsProcessor([1, 5, 49, 7]),
     6),
    (lambda: SuppressTokens([2, 300]), lambda: hf.SuppressTokensLogitsProcessor([2, 300]), 6),
    (lambda: SuppressTokens([]), lambda: hf.SuppressTokensLogitsProcessor([]), 6),
    (lambda: SuppressTokensAtBegin([1, 8], 6),
     lambda: hf.SuppressTokensAtBeginLogitsProcessor([1, 8], 6), 6),       # at cur_len
    (lambda: SuppressTokensAtBegin([1, 8], 5),
     lambda: hf.SuppressTokensAtBeginLogitsProcessor([1, 8], 5), 6),       # before
    (lambda: SuppressTokensAtBegin([1, 8], 7),
     lambda: hf.SuppressTokensAtBeginLogitsProcessor([1, 8], 7), 6),       # after
    (lambda: LogitNormalization(), lambda: hf.LogitNormalization(), 6),
    (lambda: InfNanRemove(), lambda: hf.InfNanRemoveLogitsProcessor(), 6),
    (lambda: PrefixConstrained(_allowed_jax, 1),
     lambda: hf.PrefixConstrainedLogitsProcessor(_allowed_py, 1), 6),
    (lambda: PrefixConstrained(_allowed_jax, 3),
     lambda: hf.PrefixConstrainedLogitsProcessor(_allowed_py, 3), 6),
    (lambda: PrefixConstrained.from_token_lists(TABLE, 1),
     lambda: hf.PrefixConstrainedLogitsProcessor(lambda b, s: TABLE[b], 1), 6),
]


@pytest.mark.parametrize("start", [0, 3])
@pytest.mark.parametrize("ours,theirs,length", CASES,
                         ids=[f"{c[0]().__class__.__name__}-{i}" for i, c in enumerate(CASES)])
def test_parity_with_transformers(ours, theirs, length, start):
    ids, logits = _history(batch=3, length=length, seed=length + start)
    got = _ours(ours(), _ctx(ids, start=start), logits)
    _assert_same(got, _theirs(theirs(), ids, logits))


def test_apply_one_shot_matches():
    ids, logits = _history(batch=3, length=6, seed=9)
    got = np.asarray(apply(ForcedEOSToken(7, [3, 9]), ids, logits))
    _assert_same(got, _theirs(hf.ForcedEOSTokenLogitsProcessor(7, [3, 9]), ids, logits))


def test_inf_nan_remove_edge_values():
    ids = np.zeros((2, 3), np.int64)
    logits = np.array([[np.nan, np.inf, -np.inf, 1.5, -0.0],
                       [-np.inf, -np.inf, np.nan, np.inf, 3e38]], np.float32)
    expected = _theirs(hf.InfNanRemoveLogitsProcessor(), ids, logits)
    got = _ours(InfNanRemove(), _ctx(ids), logits)
    np.testing.assert_array_equal(got, expected)
    fmax = np.finfo(np.float32).max
    np.testing.assert_array_equal(got[0], [0.0, fmax, -fmax, 1.5, 0.0])
    assert np.isfinite(got).all() and got.dtype == np.float32


def test_forced_tokens_at_the_step_and_not_otherwise():
    ids, logits = _history(batch=2, length=4, seed=1)
    ctx = _ctx(ids, start=2)                                 # cur_len = 4
    out = _ours(ForcedEOSToken(5, [3, 9]), ctx, logits)
    assert set(np.flatnonzero(np.isfinite(out[0]))) == {3, 9}
    assert (out[:, [3, 9]] == 0).all()
    np.testing.assert_array_equal(_ours(ForcedEOSToken(6, [3, 9]), ctx, logits), logits)
    np.testing.assert_array_equal(_ours(ForcedBOSToken(0), ctx, logits), logits)


def test_prefix_constrained_unsatisfiable_beams_are_forced():
    ids, logits = _history(batch=4, length=5, seed=2)
    ids[:, -1] = 0
    logits = np.random.RandomState(2).rand(4, VOCAB).astype(np.float32) + 1.0
    allowed = [t for t in range(VOCAB) if t % 5 == 0]      # batch id 0 (rows 0, 1)
    logits[0, allowed] = -np.inf
    logits[1, allowed] = -np.inf                            # both beams of item 0 dead
    logits[2, _allowed_py(1, ids[2])] = -np.inf             # one beam of item 1 dead
    theirs = hf.PrefixConstrainedLogitsProcessor(_allowed_py, 2)
    expected = _theirs(theirs, ids, logits)
    got = _ours(PrefixConstrained(_allowed_jax, 2), _ctx(ids), logits)
    _assert_same(got, expected)
    assert (got[0, allowed] == 0).all()                    # forced, as transformers
    assert np.isneginf(got[2]).all()                        # one dead beam stays dead


def test_classifier_free_guidance_batched():
    rs = np.random.RandomState(0)
    ids = rs.randint(0, VOCAB, size=(3, 5))
    logits = rs.randn(6, VOCAB).astype(np.float32)
    logits[4, 7] = -np.inf                                  # an unconditional -inf
    expected = _theirs(hf.ClassifierFreeGuidanceLogitsProcessor(2.5), ids, logits)
    got = _ours(ClassifierFreeGuidance(2.5), _ctx(ids, start=2), logits)
    assert got.shape == (3, VOCAB)
    np.testing.assert_allclose(got[np.isfinite(expected)], expected[np.isfinite(expected)],
                               rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="twice"):
        _ours(ClassifierFreeGuidance(2.5), _ctx(ids), logits[:4])


def test_bad_constructor_values_name_the_field():
    for make, field in [
        (lambda: ForcedBOSToken(-1), "bos_token_id"),
        (lambda: ForcedBOSToken(None), "bos_token_id"),
        (lambda: ForcedEOSToken(-2, 3), "max_length"),
        (lambda: ForcedEOSToken(10, [3, -1]), "eos_token_id"),
        (lambda: SuppressTokens([1.5]), "suppress_tokens"),
        (lambda: SuppressTokensAtBegin([1], -1), "begin_index"),
        (lambda: SuppressTokensAtBegin(None, 1), "begin_suppress_tokens"),
        (lambda: PrefixConstrained(_allowed_jax, 0), "num_beams"),
        (lambda: PrefixConstrained.from_token_lists([[1], []]), "table"),
        (lambda: ClassifierFreeGuidance(1.0), "guidance_scale"),
    ]:
        with pytest.raises(ValueError, match=field):
            make()
    with pytest.raises(TypeError, match="prefix_allowed_tokens_fn"):
        PrefixConstrained(3, 1)


# --- compile counts ---------------------------------------------------------------------

def test_numbers_are_leaves_no_recompile(count_compiles):
    ids, logits = _history(batch=2, length=6, seed=4)
    ctx = _ctx(ids, start=1)
    run = _jit_run
    variants = [
        [ForcedBOSToken(1), ForcedBOSToken(7)],
        [ForcedEOSToken(7, [3, 9]), ForcedEOSToken(12, [4, 1, 2])],
        [SuppressTokens([1, 2]), SuppressTokens([5, 6, 7])],
        [SuppressTokensAtBegin([1], 6), SuppressTokensAtBegin([9, 3], 2)],
        [PrefixConstrained.from_token_lists([[1, 2], [3]]),
         PrefixConstrained.from_token_lists([[4], [5, 6, 7]])],
        [ClassifierFreeGuidance(1.5), ClassifierFreeGuidance(3.0)],
    ]
    for first, second in variants:
        x = np.concatenate([logits, logits]) if isinstance(first, ClassifierFreeGuidance) \
            else logits
        run(first, ctx, x).block_until_ready()
        with count_compiles() as c:
            out = run(second, ctx, x)
        assert c.count == 0, type(first).__name__
        _assert_same(np.asarray(out), _ours(second, ctx, x))


# --- properties -------------------------------------------------------------------------

MASKERS = st.one_of(
    st.integers(0, 30).map(ForcedBOSToken),
    st.tuples(st.integers(0, 12), st.lists(st.integers(0, 30), min_size=1, max_size=5)).map(
        lambda a: ForcedEOSToken(*a)),
    st.lists(st.integers(0, 40), max_size=9).map(SuppressTokens),
    st.tuples(st.lists(st.integers(0, 40), max_size=5), st.integers(0, 10)).map(
        lambda a: SuppressTokensAtBegin(*a)),
    st.lists(st.lists(st.integers(0, 40), min_size=1, max_size=4), min_size=4,
             max_size=4).map(lambda t: PrefixConstrained.from_token_lists(t, 1)),
    st.just(PrefixConstrained(lambda b, c: (jnp.arange(32)[None, :] + b[:, None]) % 3 == 0, 2)),
)


def _rows(draw_floats):
    return st.lists(st.lists(draw_floats, min_size=32, max_size=32), min_size=4, max_size=4)


@settings(max_examples=60, deadline=None)
@given(rows=_rows(st.one_of(st.floats(-30, 30, width=32), st.just(-np.inf))),
       proc=MASKERS, length=st.integers(1, 8), start=st.integers(0, 3))
def test_masks_keep_shape_only_remove_and_agree_under_jit_vmap(rows, proc, length, start):
    logits = np.asarray(rows, np.float32)
    ids = np.arange(4 * length).reshape(4, length) % 32
    ctx = _ctx(ids, start=start)
    out = _ours(proc, ctx, logits)
    assert out.shape == logits.shape and out.dtype == np.float32
    forced = isinstance(proc, (ForcedBOSToken, ForcedEOSToken, PrefixConstrained))
    changed = ~((out == logits) | (np.isnan(out) & np.isnan(logits)))
    if forced:   # forced rows: only 0 or -inf; others untouched or removed
        forced_rows = (np.isfinite(out) & (out == 0) & changed).any(-1)
        rest = ~forced_rows
        assert (np.isneginf(out[rest]) | ~changed[rest]).all()
        assert ((out[forced_rows] == 0) | np.isneginf(out[forced_rows])).all()
    else:        # masks only remove: never resurrect -inf, never change a kept value
        assert (np.isneginf(out) | ~changed).all()
        assert not (np.isfinite(out) & np.isneginf(logits)).any()
    np.testing.assert_array_equal(np.asarray(_jit_run(proc, ctx, logits)), out)
    stacked = np.asarray(_vmap_run(proc, ctx, np.stack([logits, logits])))
    np.testing.assert_array_equal(stacked, np.stack([out, out]))


@settings(max_examples=40, deadline=None)
@given(rows=_rows(st.one_of(st.floats(width=32, allow_nan=False, allow_infinity=False),
                            st.floats(-50, 50, width=32), st.just(np.inf),
                            st.just(-np.inf), st.just(np.nan))),
       proc=st.sampled_from([InfNanRemove(), LogitNormalization()]))
def test_hygiene_keeps_shape_and_agrees_under_jit_vmap(rows, proc):
    logits = np.asarray(rows, np.float32)
    ctx = _ctx(np.zeros((4, 2), np.int32))
    out = _ours(proc, ctx, logits)
    assert out.shape == logits.shape and out.dtype == np.float32
    if isinstance(proc, InfNanRemove):
        assert np.isfinite(out).all()
    np.testing.assert_allclose(np.asarray(_jit_run(proc, ctx, logits)), out, rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(_vmap_run(proc, ctx, logits[None]))[0], out,
                               rtol=1e-6, atol=1e-6)
    theirs = (hf.InfNanRemoveLogitsProcessor() if isinstance(proc, InfNanRemove)
              else hf.LogitNormalization())
    expected = _theirs(theirs, np.zeros((4, 2), np.int64), logits)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    fin = np.isfinite(expected)
    np.testing.assert_allclose(out[fin], expected[fin], rtol=1e-5, atol=1e-4)


# --- unbatched classifier-free guidance ---------------------------------------------------

LLAMA_VOCAB = 61


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny random transformers Llama (RoPE) and GPT-2 (absolute positions), saved and
    loaded in jaxgen: ``{name: (hf_model, lm)}``."""
    torch.manual_seed(0)
    out = {}
    for name, model in [
        ("llama", transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=LLAMA_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            initializer_range=0.3, rope_theta=500.0, bos_token_id=1, eos_token_id=2))),
        ("gpt2", transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=LLAMA_VOCAB, n_positions=128, n_embd=32, n_layer=2, n_head=4,
            initializer_range=0.3, bos_token_id=1, eos_token_id=2))),
    ]:
        path = tmp_path_factory.mktemp("cfg") / name
        model.eval().save_pretrained(path)
        out[name] = (model, jaxgen.load(str(path)))
    return out


@pytest.fixture(scope="module")
def llama(models):
    return models["llama"]


@jax.jit
def _jit_step(proc, logits, state, ctx):
    return proc(logits, state, ctx)


def _run_steps(ours, theirs, prompt, steps, start, seed=0, jit_init=False):
    """Call both processors on a growing sequence; returns the per-step outputs.

    ``jit_init``: ``init`` under jit sees a traced ``cur`` (the cache then covers the
    whole buffer, as in the decode loop); eager ``init`` sizes it from a concrete ``cur``.
    """
    rs = np.random.RandomState(seed)
    b, n = prompt.shape                 # row r sees the same scores/tokens for any b <= 4
    all_scores = (rs.randn(steps, 4, LLAMA_VOCAB) * 2).astype(np.float32)[:, :b]
    all_new = rs.randint(0, LLAMA_VOCAB, size=(steps, 4, 1))[:, :b]
    ctx = _ctx(prompt, start=start, extra=steps)
    state = jax.jit(type(ours).init)(ours, ctx) if jit_init else ours.init(ctx)
    seq, got, expected = prompt, [], []
    for t in range(steps):
        scores, new = all_scores[t], all_new[t]
        out, state = _jit_step(ours, jnp.asarray(scores), state, ctx)
        got.append(np.asarray(out))
        expected.append(_theirs(theirs, seq, scores))
        seq = np.concatenate([seq, new], 1)
        cur = int(ctx.cur)
        ctx = ctx.replace(sequences=ctx.sequences.at[:, cur].set(jnp.asarray(new[:, 0])),
                          attention_mask=ctx.attention_mask.at[:, cur].set(1),
                          cur=ctx.cur + 1)
    return np.stack(got), np.stack(expected)


@pytest.mark.parametrize("family,uncond,use_cache,jit_init", [
    ("llama", None, True, False), ("llama", None, False, True),
    ("llama", "explicit", True, False), ("llama", "explicit", False, True),
    ("llama", "left-padded", True, True),   # RoPE: transformers' positions do not matter
    ("gpt2", None, True, True), ("gpt2", "explicit", True, False)])
def test_unbatched_cfg_parity_multi_step(models, family, uncond, use_cache, jit_init):
    hf_model, lm = models[family]
    rs = np.random.RandomState(1)
    prompt = rs.randint(0, LLAMA_VOCAB, size=(3, 5))
    uids = rs.randint(0, LLAMA_VOCAB, size=(3, 4)) if uncond else None
    umask = np.array([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]]) if uncond == "left-padded" \
        else None
    ours = UnbatchedClassifierFreeGuidance(3.0, lm.model, lm.params, unconditional_ids=uids,
                                           unconditional_attention_mask=umask)
    theirs = hf.UnbatchedClassifierFreeGuidanceLogitsProcessor(
        3.0, hf_model, unconditional_ids=None if uids is None else torch.tensor(uids),
        unconditional_attention_mask=None if umask is None else torch.tensor(umask),
        use_cache=use_cache)
    got, expected = _run_steps(ours, theirs, prompt, steps=6, start=2, jit_init=jit_init)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_unbatched_cfg_scale_one_is_log_softmax(llama):
    _, lm = llama
    prompt = np.arange(10).reshape(2, 5)
    scores = np.random.RandomState(0).randn(2, LLAMA_VOCAB).astype(np.float32)
    proc = UnbatchedClassifierFreeGuidance(1.0, lm.model, lm.params)
    got = np.asarray(_jit_run(proc, _ctx(prompt), scores))
    np.testing.assert_allclose(got, np.asarray(jax.nn.log_softmax(scores)), atol=1e-6)


def test_unbatched_cfg_left_padded_uncond_and_broadcast(models):
    """A left-padded unconditional row gives what the unpadded prompt gives (GPT-2, whose
    absolute positions would show a shift); one row of unconditional ids serves every row.

    (transformers 5.24 calls the model without position ids, so there a left-padded
    negative prompt shifts GPT-2's positions; jaxgen derives them from the mask.)
    """
    _, lm = models["gpt2"]
    prompt = np.random.RandomState(2).randint(0, LLAMA_VOCAB, size=(2, 4))
    padded = np.array([[0, 0, 11, 12], [21, 22, 23, 24]])
    pmask = np.array([[0, 0, 1, 1], [1, 1, 1, 1]])

    def run(proc, ctx_prompt):
        got, _ = _run_steps(proc, lambda ids, s: s, ctx_prompt, steps=4, start=0,
                            jit_init=True)
        return got

    both = run(UnbatchedClassifierFreeGuidance(2.0, lm.model, lm.params, padded, pmask),
               prompt)
    alone = run(UnbatchedClassifierFreeGuidance(2.0, lm.model, lm.params, [[11, 12]]),
                prompt[:1])
    np.testing.assert_allclose(both[:, :1], alone, atol=1e-5)
    shared = run(UnbatchedClassifierFreeGuidance(2.0, lm.model, lm.params, [[11, 12]]), prompt)
    np.testing.assert_allclose(shared[:, :1], alone, atol=1e-5)


def test_unbatched_cfg_reorder_state_follows_rows(llama):
    _, lm = llama
    prompt = np.random.RandomState(3).randint(0, LLAMA_VOCAB, size=(2, 3))
    uids = np.array([[5, 6, 7], [8, 9, 10]])
    proc = UnbatchedClassifierFreeGuidance(2.0, lm.model, lm.params, uids)
    ctx = _ctx(prompt, extra=3)
    scores = np.zeros((2, LLAMA_VOCAB), np.float32)
    _, state = _jit_step(proc, jnp.asarray(scores), jax.jit(proc.init)(ctx), ctx)
    swapped = jax.jit(proc.reorder_state)(state, jnp.array([1, 0]))
    nxt = ctx.replace(sequences=ctx.sequences.at[:, 3].set(4), cur=ctx.cur + 1)
    out, _ = _jit_step(proc, jnp.asarray(scores), state, nxt)
    out_swapped, _ = _jit_step(proc, jnp.asarray(scores), swapped, nxt)
    np.testing.assert_allclose(np.asarray(out_swapped), np.asarray(out)[::-1], atol=1e-6)
    assert not np.allclose(np.asarray(out)[0], np.asarray(out)[1])


def test_unbatched_cfg_scale_change_does_not_recompile(llama, count_compiles):
    _, lm = llama
    prompt = np.arange(6).reshape(2, 3)
    ctx = _ctx(prompt, extra=2)
    scores = jnp.zeros((2, LLAMA_VOCAB))
    run = _jit_run
    run(UnbatchedClassifierFreeGuidance(2.0, lm.model, lm.params, [[1, 2]]), ctx,
        scores).block_until_ready()
    with count_compiles() as c:
        run(UnbatchedClassifierFreeGuidance(4.0, lm.model, lm.params, [[7, 3]]), ctx,
            scores).block_until_ready()
    assert c.count == 0


def test_unbatched_cfg_in_generate_matches_transformers(llama):
    """Greedy generation with the processor in jaxgen's while_loop (traced ``cur``) gives
    transformers' tokens for ``guidance_scale`` + ``negative_prompt_ids``."""
    hf_model, lm = llama
    rs = np.random.RandomState(5)
    prompt = rs.randint(3, LLAMA_VOCAB, size=(2, 6))
    neg = rs.randint(3, LLAMA_VOCAB, size=(2, 3))
    with torch.no_grad():
        expected = hf_model.generate(torch.tensor(prompt), do_sample=False, max_new_tokens=8,
                                     guidance_scale=2.5, negative_prompt_ids=torch.tensor(neg),
                                     pad_token_id=0, eos_token_id=None).numpy()
    got = lm.generate(prompt, np.ones_like(prompt), max_new_tokens=8, do_sample=False,
                      pad_token_id=0, eos_token_id=None, logits_processor=[
                          UnbatchedClassifierFreeGuidance(2.5, lm.model, lm.params, neg)])
    np.testing.assert_array_equal(np.asarray(got), expected)
