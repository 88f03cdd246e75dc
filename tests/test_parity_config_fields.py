"""Every GenerationConfig field that builds a processor: greedy (and beam) generate gives
transformers' tokens on tiny random GPT-2 and Llama checkpoints, left-padded batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.stubs import left_padded_prompts

PAD = 1

FIELDS = [
    dict(repetition_penalty=1.5),
    dict(repetition_penalty=0.7),
    dict(encoder_repetition_penalty=1.8),
    dict(no_repeat_ngram_size=2),
    dict(encoder_no_repeat_ngram_size=2),
    dict(bad_words_ids=[[5], [10, 11], [20, 21, 22]]),
    dict(sequence_bias={(7,): 3.0, (8, 9): -2.0}),
    dict(min_length=12, eos_token_id=[2, 3, 4, 5, 6]),
    dict(min_new_tokens=5, eos_token_id=[2, 3, 4, 5, 6]),
    dict(forced_bos_token_id=17),
    dict(forced_eos_token_id=[30, 31]),
    dict(remove_invalid_values=True),
    dict(exponential_decay_length_penalty=(2, 1.5), eos_token_id=[3, 4]),
    dict(suppress_tokens=[3, 4, 5, 6, 7, 8]),
    dict(begin_suppress_tokens=[3, 4, 5, 6, 7, 8]),
    dict(renormalize_logits=True, repetition_penalty=1.3),
    dict(guidance_scale=1.7),
]


def _hf(model, ids, mask, **kw):
    with torch.inference_mode():
        return model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                              pad_token_id=PAD, **kw).numpy()


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("field", FIELDS, ids=lambda f: "-".join(f))
def test_greedy_field_matches_transformers(checkpoints, name, field):
    hf_model, lm = checkpoints[name]
    ids, mask = left_padded_prompts(seed=11, lengths=(5, 9, 3, 1))
    kw = dict(max_new_tokens=10, do_sample=False, **field)
    np.testing.assert_array_equal(
        lm.generate(input_ids=ids, attention_mask=mask, pad_token_id=PAD, **kw),
        _hf(hf_model, ids, mask, **kw))


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("field", [dict(repetition_penalty=1.6), dict(no_repeat_ngram_size=2),
                                   dict(repetition_penalty=1.3, no_repeat_ngram_size=3)],
                         ids=lambda f: "-".join(f))
def test_beam_search_with_penalties_matches_transformers(checkpoints, name, field):
    hf_model, lm = checkpoints[name]
    ids, mask = left_padded_prompts(seed=12)
    kw = dict(max_new_tokens=10, num_beams=3, num_return_sequences=2, do_sample=False,
              **field)
    np.testing.assert_array_equal(
        lm.generate(input_ids=ids, attention_mask=mask, pad_token_id=PAD, **kw),
        _hf(hf_model, ids, mask, **kw))


SAMPLING_FIELDS = [
    dict(top_k=10, temperature=0.7),
    dict(top_k=0, top_p=0.8),
    dict(top_k=0, min_p=0.2),
    dict(top_k=0, typical_p=0.7),
    dict(top_k=0, epsilon_cutoff=0.02),
    dict(top_k=0, eta_cutoff=0.02),
    dict(top_k=0, top_h=0.5),
    dict(top_k=20, top_p=0.9, typical_p=0.9, epsilon_cutoff=0.001, temperature=1.3),
    dict(top_k=0, repetition_penalty=1.4, renormalize_logits=True, top_p=0.7),
]


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("field", SAMPLING_FIELDS, ids=lambda f: "-".join(f))
def test_sampling_chain_first_step_scores_match_transformers(checkpoints, name, field):
    """The first step's processed scores do not depend on the draw: compare them."""
    hf_model, lm = checkpoints[name]
    ids, mask = left_padded_prompts(seed=13, lengths=(5, 9, 3))
    kw = dict(max_new_tokens=1, do_sample=True, output_scores=True,
              return_dict_in_generate=True, **field)
    with torch.inference_mode():
        ref = hf_model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                                pad_token_id=PAD, **kw).scores[0].numpy()
    got = lm.generate(input_ids=ids, attention_mask=mask, pad_token_id=PAD, **kw).scores[0]
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(ref))
    np.testing.assert_allclose(got[np.isfinite(got)], ref[np.isfinite(ref)], rtol=1e-4,
                               atol=1e-4)


def test_watermarking_config_builds_a_detectable_watermark(checkpoints):
    import jax
    from transformers import WatermarkingConfig

    from jaxgen import processors as P

    _, lm = checkpoints["llama"]
    ids, mask = left_padded_prompts(seed=14, lengths=(4, 4))
    wc = WatermarkingConfig(bias=6.0)
    kw = dict(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0, max_new_tokens=60,
              pad_token_id=PAD, eos_token_id=None, rng=jax.random.key(0))
    marked = lm.generate(watermarking_config=wc, **kw)
    plain = lm.generate(**kw)
    detector = P.Watermark(lm.model.vocab_size, bias=6.0)
    z_marked = np.asarray(P.watermark_score(detector, marked, prompt_length=ids.shape[1]))
    z_plain = np.asarray(P.watermark_score(detector, plain, prompt_length=ids.shape[1]))
    assert (z_marked > 4).all() and (np.abs(z_plain) < 3).all(), (z_marked, z_plain)


def test_processor_numbers_do_not_recompile(checkpoints, count_compiles):
    _, lm = checkpoints["gpt2"]
    ids, mask = left_padded_prompts(seed=15)
    base = dict(do_sample=True, top_k=30, top_p=0.9, typical_p=0.9, epsilon_cutoff=0.001,
                eta_cutoff=0.001, min_p=0.01, temperature=0.8, repetition_penalty=1.2,
                presence_penalty=0.5, frequency_penalty=0.1, logit_bias={5: 1.0, 6: -1.0},
                sequence_bias={(7,): 1.0}, encoder_repetition_penalty=1.1,
                exponential_decay_length_penalty=(3, 1.1), suppress_tokens=[8, 9],
                begin_suppress_tokens=[10], bad_words_ids=[[11, 12]], min_new_tokens=2,
                eos_token_id=[2], max_new_tokens=6)
    lm.generate(input_ids=ids, attention_mask=mask, pad_token_id=PAD, rng=0, **base)
    changed = dict(top_k=12, top_p=0.5, typical_p=0.6, epsilon_cutoff=0.01, eta_cutoff=0.01,
                   min_p=0.2, temperature=1.4, repetition_penalty=1.7, presence_penalty=-0.5,
                   frequency_penalty=0.7, logit_bias={15: 3.0, 16: -1.0},
                   sequence_bias={(17,): -2.0}, encoder_repetition_penalty=0.9,
                   exponential_decay_length_penalty=(1, 1.5), suppress_tokens=[18, 19],
                   begin_suppress_tokens=[20], bad_words_ids=[[21, 22]], min_new_tokens=3,
                   eos_token_id=[3, 4])
    with count_compiles() as c:
        lm.generate(input_ids=ids, attention_mask=mask, pad_token_id=PAD, rng=1,
                    **{**base, **changed})
    assert c.count == 0
