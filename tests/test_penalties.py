"""Penalty and bias processors: parity with transformers, multi-step state, properties."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from transformers.generation import logits_process as hf

from jaxgen.processors import penalties as Pn
from jaxgen.processors.base import Context, apply

INF = np.inf


def _logits(rs, batch, vocab, holes=0.05):
    """Random logits [batch, vocab] with some -inf entries (already masked tokens)."""
    x = (rs.randn(batch, vocab) * 3).astype(np.float32)
    x[rs.rand(batch, vocab) < holes] = -INF
    return x


def _hf(proc, ids, logits):
    return proc(torch.tensor(np.asarray(ids), dtype=torch.long),
                torch.tensor(np.asarray(logits))).numpy()


def _close(got, expected):
    got = np.asarray(got)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(expected))
    np.testing.assert_array_equal(got[np.isneginf(got)], expected[np.isneginf(expected)])
    np.testing.assert_allclose(got[np.isfinite(got)], expected[np.isfinite(expected)],
                               rtol=1e-6, atol=1e-5)


# --- one-shot parity --------------------------------------------------------------------

def _cases(ids):
    """(ours, theirs) pairs; bad words / sequence biases are built from the rows' tails so
    multi-token entries match (some rows only)."""
    t = [[int(x) for x in row] for row in ids]
    enc = np.random.RandomState(7).randint(0, 40, (ids.shape[0], 9))
    enc2 = enc[::2]                       # [batch / 2, n]: repeated per row like beams
    bad = [[3], [t[0][-1], 5], [t[1][-3], t[1][-2], t[1][-1], 8], [2], [9, 9], [t[2][-1], 2]]
    seq_bias = {(3,): 1.5, (4,): -2.5, (t[0][-1], 5): -3.0, (t[1][-2], t[1][-1], 6): 2.0,
                (t[2][-1], 6): 0.25, (t[3][-4], t[3][-3], t[3][-2], t[3][-1], 7): -1.0}
    seq_list = [[list(k), v] for k, v in seq_bias.items()]
    pil = torch.tensor([0, 3, 11, 40])
    return [
        ("rep 1.3", Pn.RepetitionPenalty(1.3), hf.RepetitionPenaltyLogitsProcessor(1.3)),
        ("rep 0.6", Pn.RepetitionPenalty(0.6), hf.RepetitionPenaltyLogitsProcessor(0.6)),
        ("rep 1.0", Pn.RepetitionPenalty(1.0), hf.RepetitionPenaltyLogitsProcessor(1.0)),
        ("rep ignore 6", Pn.RepetitionPenalty(1.7, prompt_ignore_length=6),
         hf.RepetitionPenaltyLogitsProcessor(1.7, prompt_ignore_length=6)),
        ("rep ignore rows", Pn.RepetitionPenalty(0.8, prompt_ignore_length=pil.numpy()),
         hf.RepetitionPenaltyLogitsProcessor(0.8, prompt_ignore_length=pil)),
        ("rep ignore torch", Pn.RepetitionPenalty(2.0, prompt_ignore_length=pil),
         hf.RepetitionPenaltyLogitsProcessor(2.0, prompt_ignore_length=pil)),
        ("enc rep 1.5", Pn.EncoderRepetitionPenalty(1.5, enc),
         hf.EncoderRepetitionPenaltyLogitsProcessor(1.5, torch.tensor(enc))),
        ("enc rep 0.5 beams", Pn.EncoderRepetitionPenalty(0.5, enc2),
         hf.EncoderRepetitionPenaltyLogitsProcessor(0.5, torch.tensor(enc2))),
        *[(f"ngram {n}", Pn.NoRepeatNGram(n), hf.NoRepeatNGramLogitsProcessor(n))
          for n in (1, 2, 3, 4)],
        *[(f"enc ngram {n}", Pn.EncoderNoRepeatNGram(n, enc),
           hf.EncoderNoRepeatNGramLogitsProcessor(n, torch.tensor(enc))) for n in (1, 2, 3)],
        ("enc ngram beams", Pn.EncoderNoRepeatNGram(2, enc2),
         hf.EncoderNoRepeatNGramLogitsProcessor(2, torch.tensor(enc2))),
        ("bad words eos", Pn.NoBadWords(bad, [2, 7]), hf.NoBadWordsLogitsProcessor(bad, [2, 7])),
        ("bad words eos int", Pn.NoBadWords(bad, 3), hf.NoBadWordsLogitsProcessor(bad, 3)),
        ("bad words", Pn.NoBadWords(bad), hf.NoBadWordsLogitsProcessor(bad)),
        ("seq bias dict", Pn.SequenceBias(seq_bias), hf.SequenceBiasLogitsProcessor(seq_bias)),
        ("seq bias list", Pn.SequenceBias(seq_list), hf.SequenceBiasLogitsProcessor(seq_list)),
        *[(f"decay {s}", Pn.ExponentialDecayLengthPenalty((s, f), [1, 4, 9], 5),
           hf.ExponentialDecayLengthPenalty((s, f), [1, 4, 9], 5))
          for s, f in [(2, 1.5), (0, 1.1), (7, 2.0), (6, 0.7)]],
        ("decay int eos", Pn.ExponentialDecayLengthPenalty((1, 1.3), 4, 3),
         hf.ExponentialDecayLengthPenalty((1, 1.3), 4, 3)),
    ]


_IDS = np.random.RandomState(1).randint(0, 40, (4, 12))
_IDS[1, 2:6] = _IDS[1, -4:]            # repeated n-grams, also ending at the tail
_IDS[3, 0:3] = _IDS[3, -3:]


@pytest.mark.parametrize("vocab", [40, 300])
@pytest.mark.parametrize("case", range(len(_cases(_IDS))),
                         ids=[c[0] for c in _cases(_IDS)])
def test_parity_with_transformers(case, vocab):
    _, ours, theirs = _cases(_IDS)[case]
    logits = _logits(np.random.RandomState(case), 4, vocab)
    expected = _hf(theirs, _IDS, logits)
    _close(apply(ours, _IDS, logits), expected)
    _close(jax.jit(apply)(ours, _IDS, logits), expected)


def test_bad_words_and_bias_cases_do_bite():
    """The parity cases above really exercise multi-token matches and the eos filter."""
    logits = np.zeros((4, 40), np.float32)
    t = _IDS
    _, bw, _ = _cases(_IDS)[[c[0] for c in _cases(_IDS)].index("bad words eos")]
    out = np.asarray(apply(bw, t, logits))
    assert np.isneginf(out[:, 3]).all() and np.isfinite(out[[0, 1, 3], 2]).all()  # eos
    assert np.isneginf(out[0, 5]) and np.isneginf(out[1, 8])               # multi-token
    assert np.isneginf(out[2, 2])                                          # [tail, eos]
    _, sb, _ = _cases(_IDS)[[c[0] for c in _cases(_IDS)].index("seq bias dict")]
    out = np.asarray(apply(sb, t, logits))
    assert out[0, 5] == -3.0 and out[1, 6] == 2.0 and out[3, 7] == -1.0


def test_repetition_penalty_left_padding_like_transformers_generate():
    """transformers' generate passes the padding lengths as prompt_ignore_length; we read
    them from the attention mask (and also honour a user prompt_ignore_length)."""
    rs = np.random.RandomState(3)
    ids = rs.randint(0, 30, (4, 10))
    pads = np.array([0, 2, 5, 9])
    mask = (np.arange(10)[None, :] >= pads[:, None]).astype(np.int32)
    ids[mask == 0] = 0                                  # pad token 0, also a real token
    ids[0, 4] = 0
    logits = _logits(rs, 4, 30)
    expected = _hf(hf.RepetitionPenaltyLogitsProcessor(1.4, torch.tensor(pads)), ids, logits)
    _close(apply(Pn.RepetitionPenalty(1.4), ids, logits, mask), expected)
    expected = _hf(hf.RepetitionPenaltyLogitsProcessor(
        0.7, torch.tensor(np.maximum(pads, 3))), ids, logits)
    _close(apply(Pn.RepetitionPenalty(0.7, prompt_ignore_length=3), ids, logits, mask),
           expected)


# --- multi-step: the state threaded through a decode-like loop ---------------------------

@jax.jit
def _step(proc, logits, state, ctx):
    return proc(logits, state, ctx)


def _buffer(rs, *, batch, start, prompt, pads, steps, vocab, pad_id=0):
    """A decode buffer: bucket junk before ``start`` (mask 0), left-padded prompts, spare
    capacity after, and a script of tokens each step will write."""
    length = start + prompt + steps + 3
    seq = rs.randint(0, vocab, (batch, length)).astype(np.int32)
    mask = np.zeros((batch, length), np.int32)
    for r in range(batch):
        mask[r, start + pads[r]: start + prompt] = 1
        seq[r, start: start + pads[r]] = pad_id
        # bucket junk repeats the prompt's tail: it would create n-gram / bias matches
        k = min(start, 3)
        seq[r, start - k: start] = seq[r, start + prompt - k: start + prompt]
    seq[:, start + prompt:] = 0
    script = rs.randint(0, vocab, (batch, steps)).astype(np.int32)
    script[:, 2::3] = seq[:, start + prompt - 1: start + prompt][:, :1]   # repeats
    return seq, mask, script


def _run_steps(ours, reference, *, batch=3, start=3, prompt=6, pads=(0, 2, 4), steps=7,
               vocab=12, seed=0, jit=True, script_fn=None):
    """Init on the prompt, then per step: compare with ``reference(input_ids, logits)``
    (input_ids = slots start..cur-1, growing), write the scripted token, advance cur."""
    rs = np.random.RandomState(seed)
    seq, mask, script = _buffer(rs, batch=batch, start=start, prompt=prompt, pads=pads,
                                steps=steps, vocab=vocab)
    if script_fn is not None:
        script = script_fn(seq[:, start:start + prompt], script)
    cur = start + prompt

    def ctx():
        return Context(sequences=jnp.asarray(seq), attention_mask=jnp.asarray(mask),
                       cur=jnp.asarray(cur, jnp.int32), start=jnp.asarray(start, jnp.int32))

    state = ours.init(ctx())
    for k in range(steps):
        logits = _logits(rs, batch, vocab, holes=0.1)
        run = _step if jit else (lambda p, lg, s, c: p(lg, s, c))
        out, state = run(ours, logits, state, ctx())
        _close(out, reference(seq[:, start:cur], logits))
        seq[:, cur] = script[:, k]
        mask[:, cur] = 1
        cur += 1
    return state


def _pads_tensor(pads, floor=0):
    return torch.tensor(np.maximum(np.asarray(pads), floor))


@pytest.mark.parametrize("jit", [True, False])
@pytest.mark.parametrize("penalty,ignore", [(1.3, None), (0.6, None), (1.8, 4), (0.9, 20)])
def test_repetition_penalty_steps(penalty, ignore, jit):
    pads = (0, 2, 4)
    theirs = hf.RepetitionPenaltyLogitsProcessor(penalty, _pads_tensor(pads, ignore or 0))
    _run_steps(Pn.RepetitionPenalty(penalty, prompt_ignore_length=ignore),
               lambda ids, lg: _hf(theirs, ids, lg), pads=pads, jit=jit)


def test_repetition_penalty_steps_per_row_ignore_and_no_bucket():
    pads = (1, 0, 3, 0)
    pil = np.array([0, 7, 2, 9])
    theirs = hf.RepetitionPenaltyLogitsProcessor(1.5, torch.tensor(np.maximum(pads, pil)))
    _run_steps(Pn.RepetitionPenalty(1.5, prompt_ignore_length=pil),
               lambda ids, lg: _hf(theirs, ids, lg), batch=4, start=0, pads=pads, seed=4)


def test_repetition_penalty_eager_vocab_size_same_state():
    ours = Pn.RepetitionPenalty(1.3, vocab_size=12)
    theirs = hf.RepetitionPenaltyLogitsProcessor(1.3, _pads_tensor((0, 2, 4)))
    lazy = _run_steps(Pn.RepetitionPenalty(1.3), lambda ids, lg: _hf(theirs, ids, lg))
    eager = _run_steps(ours, lambda ids, lg: _hf(theirs, ids, lg))
    np.testing.assert_array_equal(lazy.counts, eager.counts)
    np.testing.assert_array_equal(lazy.upto, eager.upto)


def _presence_frequency_ref(presence, frequency, prompt):
    """vLLM: penalties over the output tokens only."""
    def ref(ids, logits):
        out = logits.copy()
        for r in range(ids.shape[0]):
            counts = np.bincount(ids[r, prompt:], minlength=logits.shape[1])
            out[r] -= frequency * counts
            out[r] -= presence * (counts > 0)
        return out
    return ref


@pytest.mark.parametrize("presence,frequency", [(0.5, 0.0), (0.0, 0.7), (1.5, -0.4),
                                                (-2.0, 2.0)])
def test_presence_frequency_steps(presence, frequency):
    state = _run_steps(Pn.PresenceFrequencyPenalty(presence, frequency),
                       _presence_frequency_ref(presence, frequency, 6), steps=9, seed=2)
    assert state.counts.sum() == 3 * 9 - 3      # the last written token is not seen yet


def test_counts_catch_up_when_several_slots_are_new():
    """A driver writing several tokens between calls (e.g. speculative) is counted right."""
    rs = np.random.RandomState(5)
    seq, mask, script = _buffer(rs, batch=2, start=2, prompt=5, pads=(0, 1), steps=6,
                                vocab=10)
    p = Pn.PresenceFrequencyPenalty(0.0, 1.0)
    ctx = Context(jnp.asarray(seq), jnp.asarray(mask), jnp.asarray(7, jnp.int32),
                  jnp.asarray(2, jnp.int32))
    _, state = p(jnp.zeros((2, 10)), p.init(ctx), ctx)
    seq[:, 7:11], mask[:, 7:11] = script[:, :4], 1
    ctx = ctx.replace(sequences=jnp.asarray(seq), attention_mask=jnp.asarray(mask),
                      cur=jnp.asarray(11, jnp.int32))
    out, state = _step(p, jnp.zeros((2, 10)), state, ctx)
    expected = -np.stack([np.bincount(script[r, :4], minlength=10) for r in range(2)])
    np.testing.assert_allclose(out, expected)
    out, state = _step(p, jnp.zeros((2, 10)), state, ctx)       # same cur: nothing new
    np.testing.assert_allclose(out, expected)


def test_reorder_state_follows_rows():
    theirs = hf.RepetitionPenaltyLogitsProcessor(1.3, _pads_tensor((0, 2, 4)))
    p = Pn.RepetitionPenalty(1.3)
    state = _run_steps(p, lambda ids, lg: _hf(theirs, ids, lg))
    rows = jnp.asarray([2, 2, 0])
    moved = p.reorder_state(state, rows)
    np.testing.assert_array_equal(moved.counts, np.asarray(state.counts)[[2, 2, 0]])
    np.testing.assert_array_equal(moved.upto, np.asarray(state.upto)[[2, 2, 0]])


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_steps_across_prompt_boundary(n):
    """n-grams of the caller's ids (pads included, as transformers) and generated tokens;
    never over the bucket junk before start (which repeats the prompt tail)."""
    theirs = hf.NoRepeatNGramLogitsProcessor(n)
    _run_steps(Pn.NoRepeatNGram(n), lambda ids, lg: _hf(theirs, ids, lg), vocab=6,
               steps=9, seed=n)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_encoder_no_repeat_ngram_steps(n):
    enc = np.random.RandomState(9).randint(0, 6, (3, 7))
    theirs = hf.EncoderNoRepeatNGramLogitsProcessor(n, torch.tensor(enc))
    _run_steps(Pn.EncoderNoRepeatNGram(n, enc), lambda ids, lg: _hf(theirs, ids, lg),
               vocab=6, steps=8, seed=n)


def _words_across_boundary(prompt, script):
    """Script the generated tokens so bad words / biases straddle the prompt end."""
    script = script.copy()
    script[:, 0] = 5
    script[:, 1] = 7
    return script


def test_bad_words_and_sequence_bias_steps_across_prompt_boundary():
    rs = np.random.RandomState(0)
    seq, _, _ = _buffer(rs, batch=3, start=3, prompt=6, pads=(0, 2, 4), steps=7, vocab=12)
    last = [int(x) for x in seq[:, 3 + 5]]                  # each row's last prompt token
    bad = [[last[0], 5, 9], [last[1], 5], [5, 7, 1], [4], [11], [last[2], 5, 7, 3]]
    theirs = hf.NoBadWordsLogitsProcessor(bad, [11, 10])
    _run_steps(Pn.NoBadWords(bad, [11, 10]), lambda ids, lg: _hf(theirs, ids, lg),
               script_fn=_words_across_boundary)
    bias = [[[last[0], 5, 9], -4.0], [[last[1], 5], 2.5], [[5, 7, 1], 1.0], [[4], -1.5],
            [[last[2], 5, 7, 3], 3.0], [[0, 0, 2], 0.5]]             # pad tokens count
    theirs = hf.SequenceBiasLogitsProcessor(bias)
    _run_steps(Pn.SequenceBias(bias), lambda ids, lg: _hf(theirs, ids, lg),
               script_fn=_words_across_boundary)


def test_short_prompt_never_matches_bucket_padding():
    """Prefixes longer than the caller's ids never match (transformers skips them), even
    when the bucket padding before ``start`` would complete them."""
    p0, p1, z, c = 4, 6, 9, 2
    seq = np.array([[p1, z, c, p0, p1, 0, 0]] * 2, np.int32)
    mask = np.array([[0, 0, 0, 1, 1, 0, 0]] * 2, np.int32)
    ctx = Context(jnp.asarray(seq), jnp.asarray(mask), jnp.asarray(5, jnp.int32),
                  jnp.asarray(3, jnp.int32))
    logits = _logits(np.random.RandomState(0), 2, 12, holes=0.0)
    ids = seq[:, 3:5]
    words = [[c, p0, p1, 1], [z, c, p0, p1, 3], [p0, p1, 5]]
    for ours, theirs in [
        (Pn.NoBadWords(words), hf.NoBadWordsLogitsProcessor(words)),
        (Pn.SequenceBias([[w, 2.0] for w in words]),
         hf.SequenceBiasLogitsProcessor([[w, 2.0] for w in words])),
        (Pn.NoRepeatNGram(2), hf.NoRepeatNGramLogitsProcessor(2)),
        (Pn.NoRepeatNGram(3), hf.NoRepeatNGramLogitsProcessor(3)),
        (Pn.EncoderNoRepeatNGram(4, [[c, p0, p1, 7, z, p0, p1, 8]] * 2),
         hf.EncoderNoRepeatNGramLogitsProcessor(4, torch.tensor([[c, p0, p1, 7, z, p0, p1, 8]]
                                                                * 2))),
        (Pn.EncoderNoRepeatNGram(3, [[c, p0, p1, 7, z, p0, p1, 8]] * 2),
         hf.EncoderNoRepeatNGramLogitsProcessor(3, torch.tensor([[c, p0, p1, 7, z, p0, p1, 8]]
                                                                * 2))),
    ]:
        out, _ = _step(ours, logits, ours.init(ctx), ctx)
        _close(out, _hf(theirs, ids, logits))
    out = np.asarray(_step(Pn.NoBadWords(words), logits, (), ctx)[0])
    assert np.isneginf(out[:, 5]).all() and np.isfinite(out[:, [1, 3, z]]).all()


def test_exponential_decay_steps_with_bucket_padding():
    theirs = hf.ExponentialDecayLengthPenalty((2, 1.6), [3, 8], 6)
    _run_steps(Pn.ExponentialDecayLengthPenalty((2, 1.6), [3, 8], 6),
               lambda ids, lg: _hf(theirs, ids, lg), steps=8)


def test_logit_bias():
    rs = np.random.RandomState(4)
    logits = _logits(rs, 3, 20)
    out = np.asarray(apply(Pn.LogitBias({3: 2.0, "5": -100, 19: 0.5, 25: 9.0}),
                           np.zeros((3, 1), np.int32), logits))
    expected = logits.copy()
    expected[:, 3] += 2.0
    expected[:, 5] -= 100
    expected[:, 19] += 0.5                                          # 25: outside the vocab
    _close(out, expected)


def test_bad_constructor_values_name_the_field():
    for make, field in [
        (lambda: Pn.RepetitionPenalty(0.0), "penalty"),
        (lambda: Pn.RepetitionPenalty(1.2, prompt_ignore_length=-1), "prompt_ignore_length"),
        (lambda: Pn.RepetitionPenalty(1.2, prompt_ignore_length=[[1]]),
         "prompt_ignore_length"),
        (lambda: Pn.EncoderRepetitionPenalty(-1.0, [[1, 2]]), "penalty"),
        (lambda: Pn.NoRepeatNGram(0), "ngram_size"),
        (lambda: Pn.EncoderNoRepeatNGram(0, [[1, 2]]), "encoder_ngram_size"),
        (lambda: Pn.NoBadWords([]), "bad_words_ids"),
        (lambda: Pn.NoBadWords([[1, -2]]), "bad_words_ids"),
        (lambda: Pn.NoBadWords([[1]], eos_token_id=[-3]), "eos_token_id"),
        (lambda: Pn.SequenceBias({}), "sequence_bias"),
        (lambda: Pn.SequenceBias({3: 1.0}), "sequence_bias"),
        (lambda: Pn.SequenceBias([[[1, 2], "x"]]), "sequence_bias"),
        (lambda: Pn.PresenceFrequencyPenalty(presence_penalty=2.5), "presence_penalty"),
        (lambda: Pn.PresenceFrequencyPenalty(frequency_penalty=-3), "frequency_penalty"),
        (lambda: Pn.LogitBias({"a": 1.0}), "logit_bias"),
        (lambda: Pn.LogitBias([(1, 2.0)]), "logit_bias"),
        (lambda: Pn.ExponentialDecayLengthPenalty((1,), 2, 3),
         "exponential_decay_length_penalty"),
        (lambda: Pn.ExponentialDecayLengthPenalty((1, 1.1), None, 3), "eos_token_id"),
    ]:
        with pytest.raises(ValueError, match=field):
            make()


def test_eos_only_bad_words_is_a_no_op():
    """transformers raises (empty sequence_bias) when every bad word is an eos; we allow it."""
    logits = _logits(np.random.RandomState(0), 2, 10)
    out = apply(Pn.NoBadWords([[2], [3]], eos_token_id=[2, 3]), np.ones((2, 3), int), logits)
    _close(out, logits)


# --- compile counts ---------------------------------------------------------------------

@jax.jit
def _init_and_step(proc, ctx0, ctx1, logits):
    state = proc.init(ctx0)
    out, state = proc(logits, state, ctx0)
    return proc(out, state, ctx1)[0]


def _two_ctx(batch=2, vocab=16):
    seq = np.random.RandomState(0).randint(0, vocab, (batch, 12)).astype(np.int32)
    mask = np.ones_like(seq)
    c0 = Context(jnp.asarray(seq), jnp.asarray(mask), jnp.asarray(8, jnp.int32),
                 jnp.asarray(1, jnp.int32))
    return c0, c0.replace(cur=jnp.asarray(9, jnp.int32))


VARIANTS = [
    [Pn.RepetitionPenalty(1.3), Pn.RepetitionPenalty(0.7, prompt_ignore_length=3),
     Pn.RepetitionPenalty(2.5, prompt_ignore_length=0)],
    [Pn.RepetitionPenalty(1.3, prompt_ignore_length=[1, 4]),
     Pn.RepetitionPenalty(1.1, prompt_ignore_length=np.array([0, 2]))],
    [Pn.PresenceFrequencyPenalty(0.5, 0.1), Pn.PresenceFrequencyPenalty(-1, 2),
     Pn.PresenceFrequencyPenalty(frequency_penalty=0.3)],
    [Pn.EncoderRepetitionPenalty(1.5, [[1, 2, 3]] * 2),
     Pn.EncoderRepetitionPenalty(0.5, [[4, 5, 6, 7]] * 2)],
    [Pn.EncoderNoRepeatNGram(2, [[1, 2, 3]] * 2), Pn.EncoderNoRepeatNGram(2, [[3, 2, 1]] * 2)],
    [Pn.NoBadWords([[1], [2, 3]], 5), Pn.NoBadWords([[4], [7, 8], [9]], [5, 6]),
     Pn.NoBadWords([[6, 2]], 1)],
    [Pn.SequenceBias({(1,): 2.0, (2, 3): -1.0}), Pn.SequenceBias([[[4], -0.5], [[5, 9], 3.0]]),
     Pn.SequenceBias({(7,): 1.0, (8,): 4.0, (1, 2, 3): 0.1})],
    [Pn.LogitBias({1: 2.0}), Pn.LogitBias({"3": -1.0, 5: 0.5, 6: 1.0})],
    [Pn.ExponentialDecayLengthPenalty((1, 1.5), 2, 3),
     Pn.ExponentialDecayLengthPenalty((4, 0.9), [2, 7], 6)],
]


@pytest.mark.parametrize("variants", VARIANTS, ids=lambda v: type(v[0]).__name__)
def test_changing_numbers_does_not_recompile(variants, count_compiles):
    c0, c1 = _two_ctx()
    logits = jnp.asarray(_logits(np.random.RandomState(0), 2, 16))
    outs = [np.asarray(_init_and_step(variants[0], c0, c1, logits))]
    with count_compiles() as c:
        outs += [np.asarray(_init_and_step(v, c0, c1, logits)) for v in variants[1:]]
    assert c.count == 0
    assert not all(np.array_equal(outs[0], o, equal_nan=True) for o in outs[1:])


# --- property tests ---------------------------------------------------------------------

def _make(kind: str, x: float, n: int, rows: slice, enc: np.ndarray, words):
    """Processor ``kind`` for the batch rows ``rows`` (per-row data sliced)."""
    return {
        "rep": lambda: Pn.RepetitionPenalty(0.2 + 3 * x, prompt_ignore_length=n % 3),
        "rep_rows": lambda: Pn.RepetitionPenalty(0.2 + 3 * x,
                                                 prompt_ignore_length=np.arange(8)[rows]),
        "presfreq": lambda: Pn.PresenceFrequencyPenalty(4 * x - 2, 2 - 4 * x),
        "enc_rep": lambda: Pn.EncoderRepetitionPenalty(0.2 + 3 * x, enc[rows]),
        "ngram": lambda: Pn.NoRepeatNGram(n),
        "enc_ngram": lambda: Pn.EncoderNoRepeatNGram(n, enc[rows]),
        "bad": lambda: Pn.NoBadWords(words, [n]),
        "seq": lambda: Pn.SequenceBias({tuple(w): 5 * x - 2.5 for w in words}),
        "logit_bias": lambda: Pn.LogitBias({w[-1]: 4 * x - 2 for w in words}),
        "decay": lambda: Pn.ExponentialDecayLengthPenalty((n, 0.5 + x), [n, n + 1], 1),
    }[kind]()


KINDS = ["rep", "rep_rows", "presfreq", "enc_rep", "ngram", "enc_ngram", "bad", "seq",
         "logit_bias", "decay"]


@st.composite
def _problem(draw):
    b = draw(st.integers(1, 4))
    v = draw(st.integers(2, 24))
    length = draw(st.integers(1, 10))
    start = draw(st.integers(0, 3))
    prompt = draw(st.integers(1, length))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(KINDS))
    x = draw(st.floats(0.0, 1.0))
    n = draw(st.integers(1, 4))
    words = draw(st.lists(st.lists(st.integers(0, v - 1), min_size=1, max_size=3),
                          min_size=1, max_size=5))
    return b, v, length, start, prompt, seed, kind, x, n, words


@settings(max_examples=60, deadline=None)
@given(problem=_problem())
@example(
    problem=(1, 2, 1, 0, 1, 0, "enc_ngram", 0.0, 3, [[0]]),
)  # buffer shorter than the n-gram prefix
def test_properties(problem):
    """Shape/dtype kept; -inf never resurrected; jitted == unjitted == row by row."""
    b, v, length, start, prompt, seed, kind, x, n, words = problem
    rs = np.random.RandomState(seed)
    seq = rs.randint(0, v, (b, start + length)).astype(np.int32)
    mask = np.ones_like(seq)
    mask[:, :start] = 0
    mask[:, start: start + rs.randint(0, prompt)] = 0         # left padding
    enc = rs.randint(0, v, (8, 5))
    logits = _logits(rs, b, v, holes=0.3)

    def ctxs(rows):
        c0 = Context(jnp.asarray(seq[rows]), jnp.asarray(mask[rows]),
                     jnp.asarray(start + prompt, jnp.int32), jnp.asarray(start, jnp.int32))
        return c0, c0.replace(cur=jnp.asarray(start + length, jnp.int32))

    def run(rows, jit):
        proc = _make(kind, x, n, rows, enc, words)
        c0, c1 = ctxs(rows)
        if jit:
            return np.asarray(_init_and_step(proc, c0, c1, jnp.asarray(logits[rows])))
        out, state = proc(jnp.asarray(logits[rows]), proc.init(c0), c0)
        return np.asarray(proc(out, state, c1)[0])

    out = run(slice(0, b), jit=False)
    assert out.shape == logits.shape and out.dtype == np.float32
    assert np.isneginf(out[np.isneginf(logits)]).all()
    assert not np.isnan(out).any()
    np.testing.assert_allclose(run(slice(0, b), jit=True), out, rtol=1e-6, atol=1e-6)
    for r in range(b):
        np.testing.assert_allclose(run(slice(r, r + 1), jit=False), out[r:r + 1],
                                   rtol=1e-6, atol=1e-6)


# --- end to end: greedy generate through prefill + the while_loop -------------------------

def _generate_case(proc, reference):
    """jaxgen.generate (bucketed, left-padded batch) vs a host greedy loop applying the
    transformers processor to the growing input_ids."""
    import jaxgen
    from tests.stubs import TableLM, left_padded_prompts, table_params

    vocab, eos, new = 16, 15, 10
    table = np.random.RandomState(0).randn(vocab, vocab).astype(np.float32)
    table[:, 4] += 1.5                                   # a favourite token: repetition
    table[:, eos] = -50.0                                # never finishes
    ids, mask = left_padded_prompts(seed=1, lengths=(5, 9, 3), vocab=vocab, low=1)
    out = np.asarray(jaxgen.generate(TableLM(vocab_size=vocab), table_params(table), ids,
                                     mask, max_new_tokens=new, pad_token_id=0,
                                     eos_token_id=eos, logits_processor=[proc]))
    seqs = ids.copy()
    for _ in range(new):
        logits = table[seqs[:, -1]]
        nxt = np.argmax(reference(seqs, logits), axis=-1)
        seqs = np.concatenate([seqs, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(out, seqs)
    return out


def test_generate_end_to_end():
    pads = torch.tensor([4, 0, 6])                       # left_padded_prompts (5, 9, 3)
    rep = hf.RepetitionPenaltyLogitsProcessor(1.8, prompt_ignore_length=pads)
    out = _generate_case(Pn.RepetitionPenalty(1.8), lambda i, lg: _hf(rep, i, lg))
    assert len(set(out[1, 9:].tolist())) > 3
    ngram = hf.NoRepeatNGramLogitsProcessor(2)
    _generate_case(Pn.NoRepeatNGram(2), lambda i, lg: _hf(ngram, i, lg))
    _generate_case(Pn.PresenceFrequencyPenalty(0.4, 0.9),
                   _presence_frequency_ref(0.4, 0.9, 9))
