"""logits-processor-zoo in JAX: each processor's effect through ``generate`` on stub models
(batches of rows with different prompts, so per-row state), parity with the original
PyTorch library step by step, jit, and no recompiles when numbers change."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgen
from jaxgen.decoding import run_steps
from jaxgen.generate import finish, prepare, start
from jaxgen.processors import apply
from jaxgen.processors import zoo as Z
from jaxgen.processors.base import Context, pad_ids
from jaxgen.tiny import EOS as EOS_STR
from jaxgen.tiny import make_tokenizer
from jaxgen.tokenizer import Tokenizer
from tests.stubs import TableLM, chain_table, table_params

TOK = Tokenizer(make_tokenizer(), eos_token_id=0, pad_token_id=0)
V = TOK.vocab_size            # 384
MODEL = TableLM(vocab_size=V)
EOS = 0


def one(text: str) -> int:
    ids = TOK.encode(text, add_special_tokens=False)
    assert len(ids) == 1, (text, ids)
    return ids[0]


DOT, NL, COLON = one("."), one("\n"), one(":")
TO, BE, SLEEP, THE, END, A = (one(w) for w in (" to", " be", " sleep", " the", " end", " a"))
CHOICES = [one(c) for c in "123"]
# the greedy cycle " to be sleep." repeated (never eos)
CYCLE = {TO: BE, BE: SLEEP, SLEEP: DOT, DOT: TO}


def left_pad(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), EOS, np.int32)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = r
        mask[i, width - len(r):] = 1
    return ids, mask


def gen(table: np.ndarray, rows: list[list[int]], procs: list, **kw) -> np.ndarray:
    """Greedy generation; returns only the new tokens [rows, new]."""
    ids, mask = left_pad(rows)
    kw.setdefault("max_new_tokens", 16)
    out = jaxgen.generate(MODEL, table_params(table), ids, mask, logits_processor=procs,
                          eos_token_id=EOS, pad_token_id=EOS, **kw)
    return np.asarray(out)[:, ids.shape[1]:]


def count_seq(row: np.ndarray, seq: list[int]) -> int:
    n = len(seq)
    return sum(row[i:i + n].tolist() == seq for i in range(len(row) - n + 1))


def ref_cycle(last: int, n_new: int, eos_when) -> list[int]:
    """Greedy on CYCLE where eos wins when ``eos_when(n, last_token)``."""
    out, t = [], last
    for n in range(n_new):
        if eos_when(n, t):
            return out + [EOS] * (n_new - n)
        t = CYCLE[t]
        out.append(t)
    return out


# --- effects through generate (batches of different prompts) ---------------------------

def test_multiple_choice_answers_with_a_choice():
    """Rows list the same three options in different orders; the model "thinks" of
    " be", so with boost_first_words each row answers with the number of its " be"."""
    words = [[SLEEP, THE, BE], [BE, SLEEP, THE], [THE, BE, SLEEP]]
    rows = []
    for i, ws in enumerate(words):
        opts = sum(([NL, c, DOT, w] for c, w in zip(CHOICES, ws, strict=True)), [])
        rows.append([A] * (3 - i) + opts + [NL, COLON])       # different lengths (padding)
    table = np.zeros((V, V), np.float32)
    table[COLON, A] = 8.0      # without constraints the model answers " a"
    table[COLON, BE] = 5.0
    free = gen(table, rows, [], max_new_tokens=2)
    assert (free[:, 0] == A).all()
    plain = gen(table, rows, [Z.MultipleChoice(TOK, choices=["1", "2", "3"])],
                max_new_tokens=2)
    assert np.isin(plain, CHOICES).all()
    boosted = gen(table, rows, [Z.MultipleChoice(TOK, choices=["1", "2", "3"],
                                                 boost_first_words=1.0)], max_new_tokens=2)
    assert np.isin(boosted, CHOICES).all()
    assert boosted[:, 0].tolist() == [CHOICES[2], CHOICES[0], CHOICES[1]]


def test_gen_length_large_boost_ends_sooner():
    table = chain_table(V, CYCLE, margin=5.0)
    rows = [[TO, BE], [SLEEP, DOT], [A, TO, BE, SLEEP]]
    lasts = [r[-1] for r in rows]
    free = gen(table, rows, [])
    assert (free != EOS).all()                                  # never ends by itself
    out = gen(table, rows, [Z.GenLength(TOK, boost_factor=100.0)])
    # eos gets 100 * n**2 / 100 = n**2 after n new tokens: beats the margin 5 at n = 3
    assert out.shape == (3, 4)
    assert out.tolist() == [ref_cycle(t, 4, lambda n, _: n * n > 5) for t in lasts]
    out = gen(table, rows, [Z.GenLength(TOK, boost_factor=100.0, complete_sentences=True)])
    expected = [ref_cycle(t, out.shape[1], lambda n, last: last == DOT and n * n > 5)
                for t in lasts]
    assert out.tolist() == expected and out.shape[1] < 16
    assert len({r.index(EOS) for r in expected}) == 3           # each row ends elsewhere


def test_force_last_phrase_ends_with_the_phrase():
    nxt = {TO: BE, BE: SLEEP}                                   # sleep -> eos (default)
    table = chain_table(V, nxt, margin=5.0)
    rows = [[A, TO], [BE], [A, A, A, SLEEP]]
    phrase = " the end."
    free = gen(table, rows, [])
    out = gen(table, rows, [Z.ForceLastPhrase(phrase, TOK)])
    for f, o in zip(free, out, strict=True):
        assert phrase not in TOK.decode(f, skip_special_tokens=True)
        text = TOK.decode(o, skip_special_tokens=True)
        assert text.endswith(phrase) and text.count(phrase) == 1
        assert EOS in o.tolist()
    assert [TOK.decode(o, skip_special_tokens=True) for o in out] == [
        " be sleep the end.", " sleep the end.", " the end."]


def test_cite_from_prompt_raises_the_share_of_prompt_tokens():
    rs = np.random.RandomState(0)
    table = (rs.rand(V, V) * 0.5).astype(np.float32)
    table[:, 100:110] += 1.0          # the model prefers tokens no prompt has
    table[:, EOS] = -10.0
    rows = [[200, 201, 202, 203], [210, 211, 212], [220, 221]]

    def shares(out):
        return [np.isin(o, r).mean() for o, r in zip(out, rows, strict=True)]

    free = gen(table, rows, [], max_new_tokens=8)
    out = gen(table, rows, [Z.CiteFromPrompt(TOK, boost_factor=2.0)], max_new_tokens=8)
    assert shares(free) == [0.0, 0.0, 0.0]
    assert shares(out) == [1.0, 1.0, 1.0]                       # each row cites its own prompt


@pytest.mark.parametrize("after", [False, True])
def test_trigger_phrase_inserted_exactly_trigger_count_times(after):
    table = chain_table(V, {**CYCLE, END: TO}, margin=5.0)      # after the phrase: " to"
    rows = [[TO, BE], [SLEEP], [A, A, DOT]]
    proc = Z.TriggerPhrase(TOK, " the end", trigger_token_phrase=".", trigger_count=2,
                           trigger_after=after)
    out = gen(table, rows, [proc], max_new_tokens=24)
    for row in out:
        assert count_seq(row, [THE, END]) == 2
        assert count_seq(row, [DOT, THE, END]) == (2 if after else 0)
        dots = np.flatnonzero(row == DOT)
        last_phrase = np.flatnonzero(row == END)[-1]
        # instead of: the first dot comes after both phrases; after: one dot per phrase
        assert (dots > last_phrase).sum() == len(dots) - (2 if after else 0)
    assert len({int(np.flatnonzero(r == THE)[0]) for r in out}) == 3   # per-row triggers


def test_prevent_hallucination_when_confidence_is_low():
    rs = np.random.RandomState(1)
    table = (rs.rand(V, V) * 0.01).astype(np.float32)           # near-flat: top p ~ 1/V
    table[:, [EOS, TO, BE, SLEEP]] = -1.0
    for t, n in {TO: BE, BE: SLEEP, SLEEP: TO}.items():         # a confident cycle
        table[t] = 0.0
        table[t, n] = 10.0
    rows = [[A, TO], [200], [BE], [A, A, 201]]
    phrase = [THE, END, DOT]
    proc = Z.PreventHallucination(TOK, minp=0.4, tolerate=1, phrase=" the end.")
    free = gen(table, rows, [], max_new_tokens=12)
    out = gen(table, rows, [proc], max_new_tokens=12)
    np.testing.assert_array_equal(out[[0, 2]], free[[0, 2]])    # confident rows untouched
    for row in out[[0, 2]]:
        assert count_seq(row, phrase) == 0
    for row in out[[1, 3]]:
        # steps 0, 1 low -> count 2 > tolerate -> phrase at 1..3, reset, again at 6..8
        assert row[1:4].tolist() == phrase and row[6:9].tolist() == phrase


def _drive(procs, rows, chunks, table=None, max_new_tokens=24):
    """Run the loop by hand: ``chunks`` = [(elapsed seconds, steps), ...]."""
    table = chain_table(V, CYCLE, margin=5.0) if table is None else table
    params = table_params(table)
    ids, mask = left_pad(rows)
    prep = prepare(MODEL, ids, mask, logits_processor=procs, max_new_tokens=max_new_tokens,
                   eos_token_id=EOS, pad_token_id=EOS)
    state = start(prep, params)
    for t, k in chunks:
        state = run_steps(prep.strategy, params, state.replace_loop(elapsed=jnp.float32(t)),
                          np.int32(k))
    return np.asarray(finish(prep, state))[:, ids.shape[1]:]


def test_max_time_ends_generation():
    rows = [[TO, BE], [SLEEP], [A, DOT]]
    lasts = [r[-1] for r in rows]
    # prefill + 4 steps before the limit, then time is up: eos on every row
    out = _drive([Z.MaxTime(TOK, max_time=1.0)], rows, [(0.0, 2), (0.5, 2), (1.0, 8)])
    assert out.shape == (3, 6)
    assert out.tolist() == [ref_cycle(t, 6, lambda n, _: n == 5) for t in lasts]
    # complete_sentences: each row ends right after its next sentence end
    out = _drive([Z.MaxTime(TOK, max_time=1.0, complete_sentences=True)], rows,
                 [(0.0, 2), (0.5, 2), (1.5, 16)])
    expected = [ref_cycle(t, out.shape[1], lambda n, last: n >= 5 and last == DOT)
                for t in lasts]
    assert out.tolist() == expected and out.shape[1] < 24


def test_max_time_through_generate():
    """generate drives a clock-reading processor in chunks; time 0 is up at once."""
    out = gen(chain_table(V, CYCLE), [[TO], [A, BE]], [Z.MaxTime(TOK, max_time=0.0)])
    assert out.tolist() == [[EOS], [EOS]]


def test_trigger_phrase_by_time():
    table = chain_table(V, {**CYCLE, END: TO}, margin=5.0)
    rows = [[TO, BE], [SLEEP]]
    proc = Z.TriggerPhrase(TOK, " the end", trigger_time=1.0)
    assert proc.uses_clock
    out = _drive([proc], rows, [(0.0, 3), (2.0, 8)], table=table, max_new_tokens=12)
    for row in out:
        assert count_seq(row[:4], [THE, END]) == 0               # before the time is up
        assert row[4:6].tolist() == [THE, END] and count_seq(row, [THE, END]) == 1


# --- jit, pytree hygiene, compile counts ------------------------------------------------

def _all_procs(tok=TOK) -> list:
    return [
        Z.GenLength(tok, boost_factor=1.0, p=2, complete_sentences=True),
        Z.CiteFromPrompt(tok, boost_factor=1.0, boost_eos=True, conditional_boost_factor=0.5),
        Z.ForceLastPhrase(" the end.", tok),
        Z.MultipleChoice(tok, choices=["1", "2", "3"], delimiter=".", boost_first_words=0.5),
        Z.TriggerPhrase(tok, " the end", trigger_token_phrase=".", trigger_count=2),
        Z.PreventHallucination(tok, minp=0.4, tolerate=1, phrase=" the end."),
        Z.MaxTime(tok, max_time=0.0, complete_sentences=False, boost_token_str=" end"),
    ]


@pytest.mark.parametrize("i", range(7), ids=lambda i: type(_all_procs()[i]).__name__)
def test_each_processor_under_jit(i):
    proc = _all_procs()[i]
    rs = np.random.RandomState(i)
    ids = np.concatenate([rs.randint(1, V, (3, 6)),
                          [[NL, CHOICES[0], DOT, BE, DOT, DOT]] * 3], 1)
    logits = (rs.randn(3, V) * 3).astype(np.float32)
    logits[0, DOT] = logits[1, EOS] = 20.0
    want = np.asarray(apply(proc, ids, logits))
    got = np.asarray(jax.jit(apply)(proc, ids, logits))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert all(isinstance(x, (np.ndarray, jax.Array)) for x in jax.tree.leaves(proc))


def test_tokenizer_is_not_part_of_the_pytree():
    other = Tokenizer(make_tokenizer(), eos_token_id=0, pad_token_id=0)
    for a, b in zip(_all_procs(), _all_procs(other), strict=True):
        ta, tb = jax.tree.structure(a), jax.tree.structure(b)
        assert ta == tb and hash(ta) == hash(tb)
        assert not any(isinstance(x, Tokenizer) for x in vars(a).values())
    assert Z.MaxTime.uses_clock
    assert not Z.TriggerPhrase(TOK, "x", trigger_token_phrase=".").uses_clock


def test_changing_numbers_does_not_recompile(count_compiles):
    cyc = chain_table(V, {**CYCLE, END: TO}, margin=5.0)
    rows = [[TO, BE], [SLEEP], [A, A, DOT]]
    ph = " the end"

    def runs(scale):
        gen(cyc, rows, [Z.GenLength(TOK, 100.0 * scale, p=2, complete_sentences=scale > 1)])
        gen(cyc, rows, [Z.TriggerPhrase(TOK, ph, trigger_token_phrase=".",
                                        trigger_count=int(scale), trigger_after=scale > 1)],
            max_new_tokens=24)
        gen(cyc, rows, [Z.CiteFromPrompt(TOK, scale, scale > 1, -scale)])
        gen(cyc, rows, [Z.PreventHallucination(TOK, minp=0.1 * scale, tolerate=int(scale),
                                               phrase=ph)])
        _drive([Z.MaxTime(TOK, max_time=scale)], rows, [(0.0, 2), (2.0, 8)])

    runs(1)
    with count_compiles() as c:
        runs(2)
        runs(3)
    assert c.count == 0


# --- small semantics --------------------------------------------------------------------

def test_forced_token_wins_in_a_flat_row_and_when_banned():
    proc = Z.MaxTime(TOK, max_time=0.0, boost_token_str=" end")
    flat = np.zeros((2, V), np.float32)
    flat[1, END] = -np.inf                                      # banned by an earlier step
    out = np.asarray(apply(proc, [[TO], [BE]], flat))
    assert (out.argmax(-1) == END).all()
    assert np.isneginf(np.delete(out, END, axis=1)).all()


def test_constructor_errors():
    with pytest.raises(ValueError, match="trigger_token_phrase or trigger_time"):
        Z.TriggerPhrase(TOK, "x")
    with pytest.raises(ValueError, match="Can't convert"):
        Z.MultipleChoice(TOK, choices=["1", " the end of it"])
    with pytest.raises(TypeError, match="tokenizer is required"):
        Z.ForceLastPhrase("x")
    with pytest.raises(TypeError, match="boost_factor"):
        Z.GenLength(TOK)
    with pytest.raises(ValueError, match="no token"):
        Z.ForceLastPhrase("", TOK)
    with pytest.raises(TypeError, match="without its tokenizer"):
        apply(Z.GenLength(boost_factor=1.0), [[1]], np.zeros((1, V), np.float32))


# --- parity with the original PyTorch logits-processor-zoo ------------------------------

@pytest.fixture(scope="module")
def lpz():
    """(torch zoo module, transformers tokenizer on the same BPE); logits-processor-zoo
    is part of the test extra."""
    import transformers

    mod = importlib.import_module("logits_processor_zoo.transformers")

    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=make_tokenizer(),
                                                  eos_token=EOS_STR)
    return mod, hf_tok


def _close(got, want):
    got = np.asarray(got)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    np.testing.assert_allclose(got[np.isfinite(got)], want[np.isfinite(want)],
                               rtol=1e-6, atol=1e-5)


_STEP = jax.jit(lambda proc, x, s, c: proc(x, s, c))


def _parity(ours, theirs, prompt, steps, logits_fn, elapsed=0.0):
    """Run both for ``steps`` steps on the same logits; the next token is the argmax of
    the original's output (so forced phrases feed back)."""
    import torch

    prompt = np.asarray(prompt, np.int32)
    b, p = prompt.shape
    buf = np.zeros((b, p + steps), np.int32)
    buf[:, :p] = prompt

    def ctx(k):
        return Context(sequences=jnp.asarray(buf), attention_mask=jnp.ones_like(buf),
                       cur=jnp.int32(p + k), start=jnp.int32(0), elapsed=jnp.float32(elapsed))

    state = ours.init(ctx(0))
    for k in range(steps):
        x = logits_fn(k)
        want = theirs(torch.tensor(buf[:, :p + k], dtype=torch.long),
                      torch.tensor(x.copy())).numpy()
        got, state = _STEP(ours, jnp.asarray(x), state, ctx(k))
        _close(got, want)
        buf[:, p + k] = want.argmax(-1)
    return buf[:, p:]


def _bumps(seed, b, events):
    """Random logits with token ``t`` made best for row ``r`` at step ``k`` for each
    ``(k, r, t)`` in events."""
    rs = np.random.RandomState(seed)

    def fn(k):
        x = (rs.randn(b, V) * 3).astype(np.float32)
        for kk, r, t in events:
            if kk == k:
                x[r, t] = x[r].max() + 5.0
        return x
    return fn


def _zoo_sentence_ends(proc, hf_tok):
    """Our processor with the zoo's two sentence-end tokens only."""
    return proc.replace(sentence_end=pad_ids([hf_tok.encode(".", add_special_tokens=False)[-1],
                                              hf_tok.encode("\n", add_special_tokens=False)[-1]]))


PROMPT = [[TO, BE, SLEEP, DOT, TO, BE], [A, THE, END, A, THE, A], [SLEEP, SLEEP, A, 200, 201, 5]]


@pytest.mark.parametrize("kw", [dict(boost_factor=1.0), dict(boost_factor=-0.5, p=1),
                                dict(boost_factor=2.0, complete_sentences=True),
                                dict(boost_factor=0.7, boost_token_str=" end")])
def test_parity_gen_length(lpz, kw):
    mod, hf_tok = lpz
    ours = Z.GenLength(hf_tok, **kw)
    if kw.get("complete_sentences"):
        ours = _zoo_sentence_ends(ours, hf_tok)
    token = END if "boost_token_str" in kw else EOS
    events = [(2, 0, DOT), (3, 1, NL), (5, 0, token), (6, 2, DOT), (7, 1, DOT)]
    _parity(ours, mod.GenLengthLogitsProcessor(hf_tok, **kw), PROMPT, 10,
            _bumps(0, 3, events))


@pytest.mark.parametrize("kw", [dict(), dict(boost_factor=-1.5, boost_eos=False,
                                             conditional_boost_factor=0.7)])
def test_parity_cite_from_prompt(lpz, kw):
    mod, hf_tok = lpz
    events = [(0, 0, TO), (1, 1, THE), (2, 2, SLEEP), (3, 0, BE), (4, 1, A)]
    _parity(Z.CiteFromPrompt(TOK, **kw), mod.CiteFromPromptLogitsProcessor(hf_tok, **kw),
            PROMPT, 6, _bumps(1, 3, events))


def test_parity_force_last_phrase(lpz):
    mod, hf_tok = lpz
    events = [(1, 0, EOS), (3, 1, EOS), (6, 0, EOS), (8, 0, EOS)]
    out = _parity(Z.ForceLastPhrase(" the end.", hf_tok),
                  mod.ForceLastPhraseLogitsProcessor(" the end.", hf_tok, batch_size=3),
                  PROMPT, 10, _bumps(2, 3, events))
    assert out[0, 1:4].tolist() == [THE, END, DOT] and out[1, 3:6].tolist() == [THE, END, DOT]
    assert out[0, 6] == EOS


def test_parity_multiple_choice(lpz):
    mod, hf_tok = lpz
    c1, c2, c3 = CHOICES
    prompt = [[A, NL, c1, DOT, BE, NL, c2, DOT, THE, NL, c3, DOT, END, NL],
              [A, A, A, A, A, NL, c1, DOT, SLEEP, NL, c3, DOT, BE, NL],     # no "2": stop
              [NL, c2, DOT, BE, NL, c1, DOT, THE, A, A, A, A, A, A]]        # "2" before "1"
    fn = _bumps(3, 3, [(0, 0, BE), (0, 1, SLEEP), (0, 2, THE)])
    for bfw in (0.0, 0.8):
        kw = dict(choices=["1", "2", "3"], delimiter=".", boost_first_words=bfw)
        out = _parity(Z.MultipleChoice(TOK, **kw),
                      mod.MultipleChoiceLogitsProcessor(hf_tok, **kw), prompt, 2, fn)
        assert np.isin(out, CHOICES).all()


@pytest.mark.parametrize("after", [False, True])
def test_parity_trigger_phrase(lpz, after):
    mod, hf_tok = lpz
    kw = dict(phrase=" the end", trigger_token_phrase=".", trigger_count=2,
              trigger_after=after)
    events = [(0, 0, DOT), (1, 1, DOT), (4, 0, DOT), (5, 1, DOT), (8, 0, DOT), (9, 2, DOT)]
    out = _parity(Z.TriggerPhrase(TOK, **kw),
                  mod.TriggerPhraseLogitsProcessor(hf_tok, batch_size=3, **kw), PROMPT, 12,
                  _bumps(4, 3, events))
    assert [count_seq(r, [THE, END]) for r in out] == [2, 2, 1]


def test_parity_prevent_hallucination(lpz):
    mod, hf_tok = lpz
    rs = np.random.RandomState(5)
    confident = rs.rand(16, 3) < 0.5

    def fn(k):
        x = (rs.randn(3, V) * 0.1).astype(np.float32)
        for r in range(3):
            if confident[k, r]:
                x[r, rs.randint(V)] += 20.0
        return x

    kw = dict(minp=0.4, tolerate=1, phrase=" the end.")
    out = _parity(Z.PreventHallucination(TOK, **kw),
                  mod.PreventHallucinationLogitsProcessor(hf_tok, batch_size=3, **kw), PROMPT,
                  16, fn)
    assert sum(count_seq(r, [THE, END, DOT]) for r in out) >= 3


@pytest.mark.parametrize("kw", [dict(), dict(complete_sentences=True),
                                dict(boost_token_str="?")])
def test_parity_max_time(lpz, kw):
    # (prompts without the forced token: the original's first step also looks at the
    # prompt for it, ours only at generated tokens)
    mod, hf_tok = lpz
    ours = Z.MaxTime(hf_tok, max_time=0.0, **kw)
    if kw.get("complete_sentences"):
        ours = _zoo_sentence_ends(ours, hf_tok)
    events = [(0, 1, DOT), (2, 2, NL), (3, 0, DOT)]
    # the original's clock has run for > 0 s at its first call: time is up from step 0
    _parity(ours, mod.MaxTimeLogitsProcessor(hf_tok, max_time=0.0, **kw), PROMPT, 6,
            _bumps(6, 3, events))
    late = Z.MaxTime(hf_tok, max_time=1e9, **kw)
    _parity(late, mod.MaxTimeLogitsProcessor(hf_tok, max_time=1e9, **kw), PROMPT, 3,
            _bumps(6, 3, events), elapsed=5.0)


def test_batch_size_argument_of_the_original_is_caught():
    with pytest.raises(TypeError, match="batch_size"):
        Z.TriggerPhrase(TOK, 2, " the end", ".")   # the original: (tokenizer, batch_size, ...)
    with pytest.raises(ValueError, match="batch_size"):
        Z.PreventHallucination(TOK, 4)
