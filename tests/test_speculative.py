"""Speculative decoding (draft model and prompt lookup): greedy equality with plain greedy,
the rejection-sampling rule preserves the target distribution, stops are honoured."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxgen
from jaxgen import stopping as S
from tests.stubs import TableLM, left_padded_prompts, table_params

V = 32
RS = np.random.RandomState(0)
TARGET = table_params((RS.randn(V, V) * 3).astype(np.float32),
                      pos_bias=(RS.randn(256, V) * 0.5).astype(np.float32), max_pos=256)
_half = np.asarray(TARGET["table"]).copy()
_half[: V // 2] = RS.randn(V // 2, V) * 3               # agrees on half of the contexts
DRAFTS = {
    "same": TARGET,                                        # accepts everything
    "half": table_params(_half, pos_bias=np.asarray(TARGET["pos_bias"])),
    "never": table_params(-np.asarray(TARGET["table"]),     # accepts (almost) nothing
                          pos_bias=-np.asarray(TARGET["pos_bias"])),
}
MODEL = TableLM(vocab_size=V)


def _gen(**kw):
    ids, mask = left_padded_prompts(seed=1, lengths=(3, 7, 5, 1), vocab=V)
    kw.setdefault("eos_token_id", None)
    return jaxgen.generate(MODEL, TARGET, ids, mask, max_new_tokens=20, pad_token_id=0, **kw)


@pytest.mark.parametrize("draft", sorted(DRAFTS))
@pytest.mark.parametrize("k", [1, 4, 7])
def test_draft_model_greedy_equals_plain_greedy(draft, k):
    out = _gen(assistant_model=(MODEL, DRAFTS[draft]), num_assistant_tokens=k,
               return_dict_in_generate=True)
    np.testing.assert_array_equal(out.sequences, _gen())
    per_pass = out.speculative["mean_tokens_per_pass"]
    if draft == "same":
        assert per_pass > min(k + 1, 3) - 0.5       # rows accept everything
    if draft == "never":
        assert per_pass < 1.2                       # rows accept (almost) nothing


@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("ngram", [1, 2, 3])
def test_prompt_lookup_greedy_equals_plain_greedy(k, ngram):
    np.testing.assert_array_equal(
        _gen(prompt_lookup_num_tokens=k, max_matching_ngram_size=ngram), _gen())


def test_eos_max_new_tokens_and_criteria_are_honoured():
    plain = _gen()
    eos = [int(plain[0, 9]), int(plain[2, 12])]
    for kw in (dict(assistant_model=(MODEL, DRAFTS["same"]), num_assistant_tokens=5),
               dict(prompt_lookup_num_tokens=4)):
        np.testing.assert_array_equal(_gen(eos_token_id=eos, **kw), _gen(eos_token_id=eos))
        stop = [S.criterion(lambda ctx: ctx.last_tokens == eos[0])]
        np.testing.assert_array_equal(_gen(stopping_criteria=stop, **kw),
                                      _gen(stopping_criteria=stop))


def test_real_checkpoints_greedy(checkpoints):
    _, lm = checkpoints["llama"]
    _, draft = checkpoints["gpt2"]                     # a different model, same vocabulary
    ids, mask = left_padded_prompts(seed=4)
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=15, pad_token_id=1)
    plain = lm.generate(**kw)
    np.testing.assert_array_equal(lm.generate(**kw, assistant_model=draft,
                                              num_assistant_tokens=3), plain)
    np.testing.assert_array_equal(lm.generate(**kw, assistant_model=lm,
                                              num_assistant_tokens=4), plain)
    np.testing.assert_array_equal(lm.generate(**kw, prompt_lookup_num_tokens=5), plain)


def test_sampling_preserves_the_target_distribution():
    """Every row's context gives the same target p and draft q, so every generated token
    after the first (which plain sampling picks) must follow p: chi-square test."""
    from scipy import stats

    p = np.array([0.3, 0.25, 0.2, 0.1, 0.08, 0.04, 0.02, 0.01])
    q = np.array([0.05, 0.4, 0.05, 0.3, 0.05, 0.05, 0.05, 0.05])
    v = len(p)
    model = TableLM(vocab_size=v)
    target = table_params(np.tile(np.log(p), (v, 1)).astype(np.float32))
    draft = table_params(np.tile(np.log(q), (v, 1)).astype(np.float32))
    n = 3000
    out = jaxgen.generate(model, target, np.ones((n, 1), np.int32), do_sample=True, top_k=0,
                          max_new_tokens=4, assistant_model=(model, draft),
                          num_assistant_tokens=2, rng=jax.random.key(0), pad_token_id=0,
                          eos_token_id=None)
    for step in (1, 2, 3):                  # tokens that went through the accept rule
        counts = np.bincount(out[:, 1 + step], minlength=v)
        chi2, pval = stats.chisquare(counts, p * n)
        assert pval > 1e-3, (step, counts, p * n)
    # and the test can fail: the draft's own distribution is rejected
    counts = np.bincount(out[:, 2], minlength=v)
    assert stats.chisquare(counts, q * n)[1] < 1e-6


PROCESSOR_SETTINGS = {
    "repetition": dict(repetition_penalty=1.8),
    "no_repeat_ngram": dict(no_repeat_ngram_size=2),
    "bad_words": dict(bad_words_ids=[[5], [7, 9]]),
    "min_new_tokens": dict(min_new_tokens=8, eos_token_id=[3, 11]),
    "sequence_bias": dict(sequence_bias={(4,): 3.0, (6, 8): -5.0}),
    "all": dict(repetition_penalty=1.3, no_repeat_ngram_size=3, bad_words_ids=[[5]],
                min_new_tokens=6, eos_token_id=[3], sequence_bias={(4,): 2.0}),
}
SPECULATIVE = {
    "draft_same": dict(assistant_model=(MODEL, DRAFTS["same"]), num_assistant_tokens=4),
    "draft_half": dict(assistant_model=(MODEL, DRAFTS["half"]), num_assistant_tokens=3),
    "lookup": dict(prompt_lookup_num_tokens=5, max_matching_ngram_size=2),
}


@pytest.mark.parametrize("setting", sorted(PROCESSOR_SETTINGS))
@pytest.mark.parametrize("spec", sorted(SPECULATIVE))
def test_greedy_with_processors_equals_plain_greedy(setting, spec):
    """The whole processor chain runs on every verified position, with its state."""
    kw = PROCESSOR_SETTINGS[setting]
    plain = _gen(**kw)
    np.testing.assert_array_equal(_gen(**SPECULATIVE[spec], **kw), plain)
    if setting == "repetition":       # and the setting is not a no-op on these prompts
        assert not np.array_equal(plain, _gen())


def test_scores_equal_plain_greedy_scores():
    kw = dict(repetition_penalty=1.5, output_scores=True, return_dict_in_generate=True)
    plain = _gen(**kw)
    ids, mask = left_padded_prompts(seed=1, lengths=(6,), vocab=V)
    one = jaxgen.generate(MODEL, TARGET, ids, mask, max_new_tokens=12, pad_token_id=0,
                          eos_token_id=None, **kw)
    spec = jaxgen.generate(MODEL, TARGET, ids, mask, max_new_tokens=12, pad_token_id=0,
                           eos_token_id=None, prompt_lookup_num_tokens=3, **kw)
    np.testing.assert_array_equal(spec.sequences, one.sequences)
    np.testing.assert_allclose(np.stack(spec.scores), np.stack(one.scores), atol=1e-5)
    assert len(plain.scores) == 20


def test_speculative_limits_are_clear_errors():
    with pytest.raises(ValueError, match="num_beams"):
        _gen(prompt_lookup_num_tokens=3, num_beams=2)
    with pytest.raises(ValueError, match="vocabulary"):
        _gen(assistant_model=(TableLM(vocab_size=V + 1), DRAFTS["same"]))
    with pytest.raises(ValueError, match="num_assistant_tokens_schedule.*allowed: 'constant'"):
        _gen(prompt_lookup_num_tokens=3, num_assistant_tokens_schedule="heuristic")
    with pytest.raises(ValueError, match="assistant_confidence_threshold.*allowed: 0.4"):
        _gen(prompt_lookup_num_tokens=3, assistant_confidence_threshold=0.2)


def test_sliding_window_ring_cache_survives_rewinds(tmp_path):
    """A Mistral-style model keeps a ring of window + K slots for its sliding layers:
    speculative rows that rewind after a partly accepted block still see every key."""
    import torch
    import transformers

    torch.manual_seed(0)
    transformers.MistralForCausalLM(transformers.MistralConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, sliding_window=4,
        max_position_embeddings=128, initializer_range=0.3)).save_pretrained(tmp_path)
    lm = jaxgen.load(tmp_path)
    ids = np.random.RandomState(0).randint(3, 97, (2, 9))
    kw = dict(input_ids=ids, attention_mask=np.ones_like(ids), max_new_tokens=20,
              pad_token_id=0, eos_token_id=None)
    plain = lm.generate(**kw)
    for k in (2, 5):
        np.testing.assert_array_equal(lm.generate(**kw, prompt_lookup_num_tokens=k), plain)
        np.testing.assert_array_equal(
            lm.generate(**kw, assistant_model=lm, num_assistant_tokens=k), plain)
