"""Per-row cursors and per-row numbers: every built-in processor and stopping criterion
gives the same results for a scalar ``ctx.cur`` / ``ctx.start`` and for the equivalent
``[rows]`` vectors, a batch with different cursors (or different numbers) per row equals
each row run alone, and the scalar path stays the scalar path."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import processors as P
from jaxgen import stopping as S
from jaxgen.processors import zoo as Z
from jaxgen.processors.base import Context
from jaxgen.tiny import make_tokenizer
from jaxgen.tokenizer import Tokenizer

TOK = Tokenizer(make_tokenizer(), eos_token_id=0, pad_token_id=0)
V = TOK.vocab_size
EOS = 0
ROWS, LENGTH, STEPS = 3, 20, 3


def _one(text: str) -> int:
    (tok,) = TOK.encode(text, add_special_tokens=False)
    return tok


DOT, TO, BE, THE, END = (_one(t) for t in (".", " to", " be", " the", " end"))
POOL = np.array([DOT, TO, BE, THE, END, EOS, 5, 7])     # few tokens: n-grams repeat


@dataclasses.dataclass(frozen=True)
class BigramLM:
    """A CausalLM stub for UnbatchedClassifierFreeGuidance: logits = params[token]."""

    vocab_size: int = V

    def init_cache(self, rows: int, length: int) -> dict[str, Any]:
        return {"k": jnp.zeros((1, rows, length), jnp.float32)}

    def apply(self, params, ids, positions, cache, mask):
        return params[ids], cache


LM_PARAMS = jnp.asarray(np.random.RandomState(9).randn(V, V).astype(np.float32))
ENC = np.random.RandomState(3).choice(POOL, (ROWS, 6)).astype(np.int32)
TABLE = [[TO, BE, 3], [DOT], [THE, END, EOS, 9]]


def _allowed(batch_id, ctx):
    return (jnp.arange(V)[None, :] % 4) == (ctx.last_tokens[:, None] % 4)


# (name, make(rows) -> processor for those batch rows, doubled logits rows?)
Make = Callable[[slice], Any]
PROCESSORS: list[tuple[str, Make]] = [
    ("Temperature", lambda r: P.Temperature(0.7)),
    ("TopK", lambda r: P.TopK(7)),
    ("TopP", lambda r: P.TopP(0.8)),
    ("MinP", lambda r: P.MinP(0.1)),
    ("Typical", lambda r: P.Typical(0.9)),
    ("Epsilon", lambda r: P.Epsilon(0.01)),
    ("Eta", lambda r: P.Eta(0.01)),
    ("TopH", lambda r: P.TopH(0.5)),
    ("RepetitionPenalty", lambda r: P.RepetitionPenalty(1.5)),
    ("RepetitionPenalty ignore rows",
     lambda r: P.RepetitionPenalty(0.7, prompt_ignore_length=np.array([1, 0, 2])[r])),
    ("RepetitionPenalty vocab", lambda r: P.RepetitionPenalty(1.3, vocab_size=V)),
    ("PresenceFrequencyPenalty", lambda r: P.PresenceFrequencyPenalty(0.5, 0.3)),
    ("EncoderRepetitionPenalty", lambda r: P.EncoderRepetitionPenalty(1.5, ENC[r])),
    ("NoRepeatNGram 1", lambda r: P.NoRepeatNGram(1)),
    ("NoRepeatNGram 2", lambda r: P.NoRepeatNGram(2)),
    ("NoRepeatNGram 3", lambda r: P.NoRepeatNGram(3)),
    ("EncoderNoRepeatNGram", lambda r: P.EncoderNoRepeatNGram(2, ENC[r])),
    ("NoBadWords", lambda r: P.NoBadWords([[TO], [BE, DOT], [THE, END, TO], [EOS]], EOS)),
    ("SequenceBias", lambda r: P.SequenceBias({(TO,): 1.5, (BE, DOT): -2.0,
                                                (THE, END, TO): 3.0})),
    ("LogitBias", lambda r: P.LogitBias({TO: 2.0, 7: -1.0})),
    ("ExponentialDecayLengthPenalty",
     lambda r: P.ExponentialDecayLengthPenalty((2, 1.5), [EOS, DOT], 1)),
    ("MinLength", lambda r: P.MinLength(10, [EOS, DOT])),
    ("MinNewTokensLength", lambda r: P.MinNewTokensLength(3, 5, EOS)),
    ("ForcedBOSToken", lambda r: P.ForcedBOSToken(TO)),
    ("ForcedEOSToken", lambda r: P.ForcedEOSToken(11, [EOS, DOT])),
    ("SuppressTokens", lambda r: P.SuppressTokens([TO, BE])),
    ("SuppressTokensAtBegin", lambda r: P.SuppressTokensAtBegin([TO, 5], 2)),
    ("InfNanRemove", lambda r: P.InfNanRemove()),
    ("LogitNormalization", lambda r: P.LogitNormalization()),
    ("PrefixConstrained fn", lambda r: P.PrefixConstrained(_allowed, 1)),
    ("PrefixConstrained table", lambda r: P.PrefixConstrained.from_token_lists(TABLE[r])),
    ("ClassifierFreeGuidance", lambda r: P.ClassifierFreeGuidance(1.5)),
    ("UnbatchedClassifierFreeGuidance",
     lambda r: P.UnbatchedClassifierFreeGuidance(1.5, BigramLM(), LM_PARAMS)),
    ("Watermark lefthash", lambda r: P.Watermark(V, context_width=2)),
    ("Watermark selfhash", lambda r: P.Watermark(V, seeding_scheme="selfhash",
                                                 context_width=3)),
    ("Stateless", lambda r: P.stateless(lambda lg, ctx: lg + ctx.cur_len_col)),
    ("Chain", lambda r: P.chain(P.RepetitionPenalty(1.2), P.NoRepeatNGram(2), P.TopK(9))),
    ("zoo GenLength", lambda r: Z.GenLength(TOK, boost_factor=1.0, p=2,
                                           complete_sentences=True)),
    ("zoo CiteFromPrompt", lambda r: Z.CiteFromPrompt(TOK, 1.0, True, 0.5)),
    ("zoo ForceLastPhrase", lambda r: Z.ForceLastPhrase(" the end.", TOK)),
    ("zoo MultipleChoice", lambda r: Z.MultipleChoice(TOK, choices=["1", "2"],
                                                      boost_first_words=0.5)),
    ("zoo TriggerPhrase", lambda r: Z.TriggerPhrase(TOK, " the end", trigger_token_phrase=".",
                                                    trigger_count=2)),
    ("zoo PreventHallucination", lambda r: Z.PreventHallucination(TOK, minp=0.4, tolerate=1,
                                                                  phrase=" the end.")),
    ("zoo MaxTime", lambda r: Z.MaxTime(TOK, max_time=0.0, complete_sentences=True)),
]

CRITERIA: list[tuple[str, Make]] = [
    ("EosToken", lambda r: S.EosToken([EOS, DOT])),
    ("MaxLength", lambda r: S.MaxLength(11)),
    ("MaxNewTokens", lambda r: S.MaxNewTokens(2, start_length=8)),
    ("StopStrings", lambda r: S.StopStrings(["e end", "."], TOK)),
    ("Lambda", lambda r: S.criterion(lambda ctx: ctx.last_tokens == TO)),
]


# --- the driver: init, then STEPS steps writing a token at each row's cursor -------------

def _buffer(seed: int, start: np.ndarray, cur: np.ndarray):
    """Buffer [ROWS, LENGTH]: junk before ``start`` (mask 0), a left pad, the prompt up to
    ``cur``, nothing after; plus the logits and tokens of every step."""
    rs = np.random.RandomState(seed)
    seq = rs.choice(POOL, (ROWS, LENGTH)).astype(np.int32)
    mask = np.zeros((ROWS, LENGTH), np.int32)
    for r in range(ROWS):
        mask[r, start[r] + (r == 1): cur[r]] = 1          # row 1 starts with a left pad
        seq[r, cur[r]:] = 0
    logits = (rs.randn(STEPS, 2 * ROWS, V) * 3).astype(np.float32)
    logits[0, 1, EOS] = logits[1, 2, DOT] = 30.0          # ForceLastPhrase, TriggerPhrase
    tokens = rs.choice(POOL, (STEPS, ROWS)).astype(np.int32)
    return seq, mask, logits, tokens


def _ctx(seq, mask, cur, start):
    return Context(sequences=seq, attention_mask=mask, cur=cur, start=start)


def _write(seq, mask, cur, tok):
    rows = jnp.arange(seq.shape[0])
    cur = jnp.broadcast_to(cur, (seq.shape[0],))
    return seq.at[rows, cur].set(tok), mask.at[rows, cur].set(1)


def _logits_for(proc, logits, n):
    """The first ``n`` rows of ``logits`` [2n, vocab]; ClassifierFreeGuidance takes all
    (conditional rows, then unconditional ones)."""
    return logits if isinstance(proc, P.ClassifierFreeGuidance) else logits[:n]


@jax.jit
def _run_processor(proc, seq, mask, cur, start, logits, tokens):
    state = proc.init(_ctx(seq, mask, cur, start))
    outs = []
    for k in range(STEPS):
        out, state = proc(_logits_for(proc, logits[k], seq.shape[0]), state,
                          _ctx(seq, mask, cur, start))
        outs.append(out)
        seq, mask = _write(seq, mask, cur, tokens[k])
        cur = cur + 1
    return jnp.stack(outs), state


@jax.jit
def _run_criterion(crit, seq, mask, cur, start, logits, tokens):
    done = []
    for k in range(STEPS):
        seq, mask = _write(seq, mask, cur, tokens[k])
        cur = cur + 1
        done.append(crit(_ctx(seq, mask, cur, start)))
    return jnp.stack(done), ()


def _run(kind, obj, seq, mask, cur, start, logits, tokens):
    fn = _run_processor if kind == "processor" else _run_criterion
    return fn(obj, jnp.asarray(seq), jnp.asarray(mask), jnp.asarray(cur, jnp.int32),
              jnp.asarray(start, jnp.int32), jnp.asarray(logits), jnp.asarray(tokens))


def _same(a, b, exact=True):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    if exact or a.dtype.kind != "f":
        np.testing.assert_array_equal(a, b)
    else:
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)


CASES = [("processor", n, m) for n, m in PROCESSORS] + [("criterion", n, m) for n, m in CRITERIA]


@pytest.mark.parametrize("kind,name,make", CASES, ids=[c[1] for c in CASES])
def test_vector_cursor_equal_entries_equals_scalar(kind, name, make):
    seq, mask, logits, tokens = _buffer(0, np.full(ROWS, 2), np.full(ROWS, 9))
    obj = make(slice(None))
    out_s, st_s = _run(kind, obj, seq, mask, 9, 2, logits, tokens)
    out_v, st_v = _run(kind, obj, seq, mask, np.full(ROWS, 9), np.full(ROWS, 2), logits,
                       tokens)
    _same(out_s, out_v)
    for a, b in zip(jax.tree.leaves(st_s), jax.tree.leaves(st_v), strict=True):
        _same(a, b)


@pytest.mark.parametrize("kind,name,make", CASES, ids=[c[1] for c in CASES])
def test_different_cursors_per_row_equal_each_row_alone(kind, name, make):
    start, cur = np.array([2, 0, 5]), np.array([3, 9, 14])
    seq, mask, logits, tokens = _buffer(1, start, cur)
    out, state = _run(kind, make(slice(None)), seq, mask, cur, start, logits, tokens)
    for r in range(ROWS):
        rows = slice(r, r + 1)
        alone, alone_state = _run(kind, make(rows), seq[rows], mask[rows], cur[r], start[r],
                                  logits[:, [r, ROWS + r]], tokens[:, rows])
        _same(out[:, rows], alone, exact=False)
        for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(alone_state), strict=True):
            a, b = np.asarray(a), np.asarray(b)
            if a.ndim and a.shape[0] == ROWS and a.shape[1:] == b.shape[1:] and b.shape[0] == 1:
                _same(a[r:r + 1], b, exact=False)


# --- per-row numbers ----------------------------------------------------------------------

PER_ROW: list[tuple[str, Callable[[Any], Any], list[Any]]] = [
    ("Temperature", lambda v: P.Temperature(v), [0.5, 1.0, 2.0]),
    ("TopK", lambda v: P.TopK(v), [1, 5, 40]),
    ("TopK keep", lambda v: P.TopK(v, min_tokens_to_keep=3), [1, 5, 40]),
    ("TopP", lambda v: P.TopP(v), [0.3, 0.9, 0.99]),
    ("TopP keep", lambda v: P.TopP(v, min_tokens_to_keep=4), [0.01, 0.5, 0.95]),
    ("MinP", lambda v: P.MinP(v), [0.05, 0.3, 0.0]),
    ("Typical", lambda v: P.Typical(v), [0.2, 0.9, 0.99]),
    ("Epsilon", lambda v: P.Epsilon(v), [0.001, 0.01, 0.05]),
    ("Eta", lambda v: P.Eta(v), [0.001, 0.01, 0.05]),
    ("TopH", lambda v: P.TopH(v), [0.3, 0.7, 1.0]),
    ("RepetitionPenalty", lambda v: P.RepetitionPenalty(v), [1.3, 0.7, 1.0]),
    ("EncoderRepetitionPenalty", lambda v: P.EncoderRepetitionPenalty(v, [[TO, BE, 5]]),
     [1.5, 0.5, 2.0]),
    ("PresenceFrequencyPenalty presence", lambda v: P.PresenceFrequencyPenalty(v, 0.2),
     [0.5, -1.0, 0.0]),
    ("PresenceFrequencyPenalty frequency", lambda v: P.PresenceFrequencyPenalty(0.1, v),
     [0.5, -1.0, 2.0]),
    ("MinLength", lambda v: P.MinLength(v, [EOS, DOT]), [5, 10, 20]),
    ("MinNewTokensLength", lambda v: P.MinNewTokensLength(3, v, EOS), [1, 7, 9]),
    ("MinNewTokensLength skip", lambda v: P.MinNewTokensLength(v, 5, EOS), [0, 3, 9]),
]


@pytest.mark.parametrize("vocab", [V, 2048])       # 2048: the threshold-search paths
@pytest.mark.parametrize("name,make,values", PER_ROW, ids=[c[0] for c in PER_ROW])
def test_per_row_numbers_equal_each_row_alone(name, make, values, vocab):
    seq, mask, _, tokens = _buffer(2, np.full(ROWS, 2), np.full(ROWS, 9))
    logits = (np.random.RandomState(5).randn(STEPS, 2 * ROWS, vocab) * 3).astype(np.float32)
    logits[:, :, :10] -= 4.0                                # some tokens clearly out
    out, _ = _run("processor", make(np.asarray(values)), seq, mask, 9, 2, logits, tokens)
    for r, v in enumerate(values):
        rows = slice(r, r + 1)
        alone, _ = _run("processor", make(v), seq[rows], mask[rows], 9, 2,
                        logits[:, [r, ROWS + r]], tokens[:, rows])
        _same(out[:, rows], alone, exact=False)


def test_top_k_candidates_per_row():
    logits = jnp.asarray(np.random.RandomState(0).randn(ROWS, 500).astype(np.float32))
    vals, ids = P.TopK([2, 9, 30]).candidates(logits)
    for r, k in enumerate([2, 9, 30]):
        v1, i1 = P.TopK(k, k_max=64).candidates(logits[r:r + 1])
        _same(vals[r:r + 1], v1)
        _same(ids[r:r + 1], i1)


def test_per_row_values_are_checked_at_construction():
    for make, field in [(lambda: P.Temperature([1.0, 0.0]), "temperature"),
                        (lambda: P.TopK([3, 0]), "top_k"),
                        (lambda: P.TopK([3.5]), "top_k"),
                        (lambda: P.TopP([0.5, 1.5]), "top_p"),
                        (lambda: P.MinLength([3, -1], 2), "min_length"),
                        (lambda: P.RepetitionPenalty(np.array([[1.0]])), "penalty")]:
        with pytest.raises(ValueError, match=field):
            make()
    assert P.TopK([3, 100]).k_max == 128
    with pytest.raises(ValueError, match="k_max"):
        P.TopK(jnp.asarray([3, 4]))


# --- the scalar path is unchanged -------------------------------------------------------

def test_context_views():
    seq = jnp.arange(2 * 6, dtype=jnp.int32).reshape(2, 6)
    scalar = Context(seq, jnp.ones_like(seq), jnp.int32(4), jnp.int32(1))
    vector = Context(seq, jnp.ones_like(seq), jnp.asarray([4, 2], jnp.int32),
                     jnp.asarray([1, 0], jnp.int32))
    assert scalar.cur_col.ndim == 0 and scalar.cur_len_col.ndim == 0
    assert vector.cur_col.shape == (2, 1) and vector.cur_len_col.shape == (2, 1)
    assert scalar.cur_rows.tolist() == [4, 4] and vector.start_rows.tolist() == [1, 0]
    assert scalar.last_tokens.tolist() == [3, 9] and vector.last_tokens.tolist() == [3, 7]
    assert scalar.tail(3).tolist() == [[1, 2, 3], [7, 8, 9]]
    assert vector.tail(3).tolist() == [[1, 2, 3], [6, 7, 8]]        # clamped at slot 0
    assert vector.tail(8).tolist() == [[-1, -1, 0, 1, 2, 3, 4, 5], [-1, -1, 6, 7, 8, 9, 10,
                                                                     11]]


def test_scalar_cursor_takes_the_scalar_path():
    """With a scalar cursor the helpers slice (no gather) and the column views are the
    scalars themselves (no broadcast)."""
    seq = jnp.zeros((2, 16), jnp.int32)
    ctx = Context(seq, jnp.ones_like(seq), jnp.int32(9), jnp.int32(1))
    text = str(jax.make_jaxpr(lambda c: (c.last_tokens, c.tail(3)))(ctx))
    assert "gather" not in text and "dynamic_slice" in text
    text = str(jax.make_jaxpr(lambda c: (c.cur_col, c.start_col, c.cur_len_col))(ctx))
    assert "broadcast" not in text and "reshape" not in text
    vec = ctx.replace(cur=jnp.full((2,), 9, jnp.int32))
    assert "gather" in str(jax.make_jaxpr(lambda c: c.last_tokens)(vec))
