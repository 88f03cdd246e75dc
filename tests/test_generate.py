"""Greedy and sampling on stub models with known logits: exact tokens."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxgen
from jaxgen import GenerationConfig
from jaxgen import processors as P
from tests.stubs import TableLM, chain_table, table_params

V = 16
PAD = 0
EOS = 15
# greedy successor: t -> t + 1 (mod 14, skipping 0) ; 9 -> 15 (eos)
NEXT = {t: (t % 14) + 1 for t in range(1, 15)}
NEXT[9] = EOS
MODEL = TableLM(vocab_size=V)
PARAMS = table_params(chain_table(V, NEXT))


def reference_greedy(prompt: list[int], n: int, eos=(EOS,)) -> list[int]:
    out, done = [], False
    t = prompt[-1]
    for _ in range(n):
        t = PAD if done else NEXT.get(t, 0)
        out.append(t)
        done = done or t in eos
        if t == PAD and done:
            continue
    return out


def gen(ids, mask=None, **kw):
    kw.setdefault("pad_token_id", PAD)
    kw.setdefault("eos_token_id", EOS)
    return np.asarray(jaxgen.generate(MODEL, PARAMS, ids, mask, **kw))


def test_greedy_exact_tokens_left_padded_batch():
    ids = np.array([[0, 0, 3], [1, 2, 4]], np.int32)
    mask = np.array([[0, 0, 1], [1, 1, 1]], np.int32)
    out = gen(ids, mask, max_new_tokens=4)
    assert out.shape == (2, 7)
    np.testing.assert_array_equal(out[:, :3], ids)
    assert out[0, 3:].tolist() == [4, 5, 6, 7]
    assert out[1, 3:].tolist() == [5, 6, 7, 8]


def test_eos_pads_finished_rows_and_stops_when_all_done():
    ids = np.array([[7], [2]], np.int32)
    out = gen(ids, max_new_tokens=20)
    # row 0: 8, 9, eos, then pad; row 1: 3..9, eos -> loop stops after row 1's eos
    assert out[0, 1:].tolist() == [8, 9, EOS] + [PAD] * 5
    assert out[1, 1:].tolist() == [3, 4, 5, 6, 7, 8, 9, EOS]
    assert out.shape == (2, 9)


def test_list_of_eos_ids():
    out = gen(np.array([[2]]), max_new_tokens=10, eos_token_id=[6, EOS])
    assert out[0, 1:].tolist() == [3, 4, 5, 6]


def test_max_length_and_max_new_tokens():
    ids = np.array([[1, 2, 3]])
    assert gen(ids, max_length=5).shape == (1, 5)
    assert gen(ids, max_new_tokens=2, max_length=100).shape == (1, 5)  # max_new_tokens wins
    with pytest.raises(ValueError, match="max_length"):
        gen(ids, max_length=3)


def test_default_is_twenty_new_tokens():
    nxt = {t: 1 + (t % 13) for t in range(V)}  # never eos
    params = table_params(chain_table(V, nxt))
    out = jaxgen.generate(MODEL, params, np.array([[1, 2]]), pad_token_id=PAD)
    assert out.shape == (1, 22)


def test_min_new_tokens_blocks_eos_then_second_best():
    table = chain_table(V, NEXT)
    table[9, 3] = 4.0  # second best after 9 is 3
    params = table_params(table)
    out = np.asarray(jaxgen.generate(MODEL, params, np.array([[8]]), max_new_tokens=4,
                                     min_new_tokens=3, eos_token_id=EOS, pad_token_id=PAD))
    # 9, then eos banned (2 new < 3) -> 3, then 4 ...
    assert out[0, 1:].tolist() == [9, 3, 4, 5]


def test_min_length_counts_the_prompt():
    table = chain_table(V, NEXT)
    table[9, 3] = 4.0
    params = table_params(table)
    out = np.asarray(jaxgen.generate(MODEL, params, np.array([[7, 8]]), max_new_tokens=4,
                                     min_length=3, eos_token_id=EOS, pad_token_id=PAD))
    # prompt 2 + [9] = 3 tokens >= min_length, so eos is allowed at the next step
    assert out[0, 2:].tolist() == [9, EOS]


def test_output_scores_are_processed_logits():
    table = chain_table(V, NEXT)
    params = table_params(table)
    out = jaxgen.generate(MODEL, params, np.array([[8]]), max_new_tokens=2, min_new_tokens=2,
                          eos_token_id=EOS, pad_token_id=PAD, output_scores=True,
                          return_dict_in_generate=True)
    assert isinstance(out, jaxgen.GenerateOutput)
    assert len(out.scores) == 2
    for step, prev in enumerate([8, 9]):
        expected = table[prev].copy()
        expected[EOS] = -np.inf  # min_new_tokens=2 bans eos in both steps
        np.testing.assert_array_equal(out.scores[step][0], expected)


# --- sampling ---------------------------------------------------------------------------

PROBS = np.array([0.4, 0.3, 0.2, 0.1 - 12 * 1e-4] + [1e-4] * 12)
SAMPLE_PARAMS = table_params(np.tile(np.log(PROBS).astype(np.float32), (V, 1)))


def sample_first(n=256, seed=0, **kw):
    kw = {"top_k": 0, **kw}
    out = jaxgen.generate(MODEL, SAMPLE_PARAMS, np.array([[1]]), do_sample=True,
                          max_new_tokens=1, num_return_sequences=n, rng=jax.random.key(seed),
                          pad_token_id=PAD, **kw)
    return np.asarray(out)[:, 1]


@pytest.mark.parametrize("kw,allowed", [
    ({"top_k": 2}, {0, 1}),
    ({"top_k": 3}, {0, 1, 2}),
    ({"top_p": 0.65}, {0, 1}),            # mass above token 2 is 0.7 >= 0.65
    ({"top_p": 0.75}, {0, 1, 2}),
    ({"min_p": 0.6}, {0, 1}),             # 0.2 < 0.6 * 0.4
    ({"min_p": 0.4}, {0, 1, 2}),
    ({"top_k": 3, "top_p": 0.65}, {0, 1}),
    ({"temperature": 0.05}, {0}),
])
def test_sampling_masks_exact_sets(kw, allowed):
    tokens = sample_first(**kw)
    assert set(tokens.tolist()) == allowed


def test_sampling_without_filters_reaches_the_tail():
    tokens = sample_first(n=512)
    assert set(tokens.tolist()) >= {0, 1, 2, 3}
    freq = np.bincount(tokens, minlength=V) / len(tokens)
    np.testing.assert_allclose(freq[:3], PROBS[:3], atol=0.07)


def test_sampling_is_seeded_and_rows_are_independent():
    a = sample_first(n=16, seed=1)
    np.testing.assert_array_equal(a, sample_first(n=16, seed=1))
    assert not np.array_equal(a, sample_first(n=16, seed=2))
    # a row's stream does not depend on the rest of the batch
    np.testing.assert_array_equal(sample_first(n=4, seed=1), a[:4])


def test_num_return_sequences_repeats_rows_like_transformers():
    out = jaxgen.generate(MODEL, SAMPLE_PARAMS, np.array([[1, 2], [3, 4]]), do_sample=True,
                          max_new_tokens=3, num_return_sequences=3, pad_token_id=PAD)
    out = np.asarray(out)
    assert out.shape == (6, 5)
    np.testing.assert_array_equal(out[:3, :2], [[1, 2]] * 3)
    np.testing.assert_array_equal(out[3:, :2], [[3, 4]] * 3)


def test_user_processor_and_config_object():
    ban4 = P.stateless(lambda logits, ctx: logits.at[:, 4].set(-np.inf))
    cfg = GenerationConfig(max_new_tokens=3, pad_token_id=PAD, eos_token_id=EOS)
    out = np.asarray(jaxgen.generate(MODEL, PARAMS, np.array([[3]]), config=cfg,
                                     logits_processor=[ban4]))
    assert out[0, 1] != 4


# --- compiles ----------------------------------------------------------------------------

def test_changing_numbers_does_not_recompile(count_compiles):
    ids = np.array([[1, 2, 3], [0, 4, 5]])
    mask = np.array([[1, 1, 1], [0, 1, 1]])
    base = dict(do_sample=True, top_k=40, top_p=0.9, min_p=0.05, temperature=0.7,
                min_new_tokens=2, eos_token_id=[EOS], pad_token_id=PAD, max_new_tokens=10)
    jaxgen.generate(MODEL, SAMPLE_PARAMS, ids, mask, rng=jax.random.key(0), **base)
    variants = [
        dict(temperature=1.3), dict(top_k=7), dict(top_p=0.5), dict(min_p=0.2),
        dict(eos_token_id=[EOS, 3]), dict(max_new_tokens=13), dict(min_new_tokens=5),
    ]
    with count_compiles() as c:
        for i, v in enumerate(variants):
            jaxgen.generate(MODEL, SAMPLE_PARAMS, ids, mask, rng=jax.random.key(i + 1),
                            **{**base, **v})
        jaxgen.generate(MODEL, SAMPLE_PARAMS, ids, mask, rng=7, **base)  # int seed
        jaxgen.generate(MODEL, SAMPLE_PARAMS, ids[:, 1:], mask[:, 1:], rng=7, **base)  # width
    assert c.count == 0


def test_greedy_knobs_do_not_recompile(count_compiles):
    ids = np.array([[1, 2, 3]])
    gen(ids, max_new_tokens=5, min_new_tokens=1)
    with count_compiles() as c:
        gen(ids, max_new_tokens=7, min_new_tokens=3, eos_token_id=[EOS, 6], pad_token_id=1)
    assert c.count == 0


# --- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("ids,mask,kw,exc,field", [
    (np.array([[1, V]]), None, {}, ValueError, "input_ids"),
    (np.array([[-1, 2]]), None, {}, ValueError, "input_ids"),
    (np.zeros((0, 3), np.int32), None, {}, ValueError, "input_ids"),
    (np.array([1, 2]), None, {}, ValueError, "input_ids"),
    (np.array([[1.0, 2.0]]), None, {}, TypeError, "input_ids"),
    (np.array([[1, 2]]), np.array([[1, 1, 1]]), {}, ValueError, "attention_mask"),
    (np.array([[1, 2]]), np.array([[1, 0]]), {}, ValueError, "attention_mask"),
    (np.array([[1, 2]]), None, {"temperature": -1.0, "do_sample": True}, ValueError,
     "temperature"),
    (np.array([[1, 2]]), None, {"top_p": 1.5, "do_sample": True}, ValueError, "top_p"),
    (np.array([[1, 2]]), None, {"max_new_tokens": 0}, ValueError, "max_new_tokens"),
    (np.array([[1, 2]]), None, {"num_return_sequences": 2}, ValueError,
     "num_return_sequences"),
    (np.array([[1, 2]]), None, {"temprature": 0.5}, TypeError, "temperature"),
    (np.array([[1, 2]]), None, {"eos_token_id": V + 3}, ValueError, "eos_token_id"),
])
def test_bad_input_raises_before_compiling(ids, mask, kw, exc, field, count_compiles):
    with count_compiles() as c, pytest.raises(exc, match=field):
        jaxgen.generate(MODEL, PARAMS, ids, mask, **kw)
    assert c.count == 0


def test_greedy_num_return_sequences_is_refused_through_a_model_config():
    """transformers: "Greedy methods without beam search do not support
    num_return_sequences different than 1"; the bundled model's config samples, so the
    caller's do_sample=False makes it greedy."""
    lm = jaxgen.load()
    inputs = lm.tokenizer(["To be"])
    with pytest.raises(ValueError, match="num_return_sequences"):
        lm.generate(**inputs, do_sample=False, num_return_sequences=2, max_new_tokens=3)
    assert lm.generate(**inputs, num_return_sequences=2, max_new_tokens=3).shape[0] == 2
