"""``past_key_values``: continuing from the cache of an earlier call equals a fresh call on
the whole conversation, compiles once per bucket, and refuses a cache that does not fit."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import jaxgen
from jaxgen.generate import prepare
from tests.stubs import left_padded_prompts

PAD = 1
GREEDY = dict(do_sample=False, pad_token_id=PAD, eos_token_id=None)


def _turn(out, extra, mask):
    """The conversation so far plus ``extra`` new ids per row, and its mask."""
    rows = out.sequences.shape[0]
    new = np.broadcast_to(np.asarray(extra), (rows, len(extra)))
    ids = np.concatenate([out.sequences, new], axis=1)
    grown = np.ones((rows, ids.shape[1] - mask.shape[1]), mask.dtype)
    return ids, np.concatenate([mask, grown], axis=1)


def _equal_to_fresh(lm, ids, mask, past, **kw):
    args = dict(input_ids=ids, attention_mask=mask, return_dict_in_generate=True,
                output_logits=True, **GREEDY, **kw)
    cont = lm.generate(past_key_values=past, **args)
    fresh = lm.generate(**args)
    np.testing.assert_array_equal(cont.sequences, fresh.sequences)
    for a, b in zip(cont.logits, fresh.logits, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    return cont


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_continuation_equals_a_fresh_generate(checkpoints, name):
    lm = checkpoints[name][1]
    ids, mask = left_padded_prompts(seed=10, lengths=(4, 9, 6))
    out = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5,
                      return_dict_in_generate=True, **GREEDY)
    past = out.past_key_values
    assert past.get_seq_length() == out.sequences.shape[1] - 1 and out.cache is past
    ids2, mask2 = _turn(out, [7, 8, 9, 10], mask)
    cont = _equal_to_fresh(lm, ids2, mask2, past, max_new_tokens=6)
    # and again from the continuation's own cache, across a prompt bucket (16 -> 32)
    ids3, mask3 = _turn(cont, list(range(20, 32)), mask2)
    _equal_to_fresh(lm, ids3, mask3, cont.past_key_values, max_new_tokens=4)


def test_only_new_tokens_are_fed(checkpoints):
    lm = checkpoints["llama"][1]
    ids, mask = left_padded_prompts(seed=11, lengths=(12, 14))
    out = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10,
                      return_dict_in_generate=True, **GREEDY)
    ids2, mask2 = _turn(out, [5, 6, 7], mask)
    request = prepare(lm.model, ids2, mask2, past_key_values=out.past_key_values,
                      max_new_tokens=3, params=lm.params, **GREEDY)
    assert request.prompt_end == 32 and request.feed == 16     # 4 new tokens -> 16 slots
    assert request.fed == request.prompt_end - 16


def test_no_recompile_per_turn_length(checkpoints, count_compiles):
    lm = checkpoints["gpt2"][1]
    ids, mask = left_padded_prompts(seed=12, lengths=(3, 5))
    out = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4,
                      return_dict_in_generate=True, **GREEDY)
    kw = dict(max_new_tokens=4, past_key_values=out.past_key_values, **GREEDY)
    lm.generate(*_turn(out, [3, 4], mask), **kw)
    with count_compiles() as c:          # other new-token counts, same buckets
        lm.generate(*_turn(out, [3, 4, 5, 6, 7], mask), **kw)
        lm.generate(*_turn(out, [9], mask), **kw)
    assert c.count == 0


def test_beam_search_and_sampling_continue_from_a_greedy_cache(checkpoints):
    lm = checkpoints["gpt2"][1]
    ids, mask = left_padded_prompts(seed=13, lengths=(5, 3))
    out = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4,
                      return_dict_in_generate=True, **GREEDY)
    ids2, mask2 = _turn(out, [11, 12], mask)
    for kw in (dict(num_beams=3, num_return_sequences=2), dict(do_sample=True, top_k=5,
                                                                num_return_sequences=2)):
        args = dict(input_ids=ids2, attention_mask=mask2, max_new_tokens=5, rng=4,
                    pad_token_id=PAD, eos_token_id=None, **kw)
        cont = lm.generate(past_key_values=out.past_key_values, **args)
        np.testing.assert_array_equal(cont, lm.generate(**args))


def test_contrastive_search_prefills_everything_from_a_cache(checkpoints):
    lm = checkpoints["llama"][1]
    ids, mask = left_padded_prompts(seed=14, lengths=(4, 6))
    out = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3,
                      return_dict_in_generate=True, **GREEDY)
    ids2, mask2 = _turn(out, [3, 4], mask)
    args = dict(input_ids=ids2, attention_mask=mask2, max_new_tokens=4, penalty_alpha=0.5,
                top_k=3, **GREEDY)
    np.testing.assert_array_equal(lm.generate(past_key_values=out.past_key_values, **args),
                                  lm.generate(**args))


def test_bad_caches_name_the_field_before_compiling(checkpoints, count_compiles):
    gpt2, llama = checkpoints["gpt2"][1], checkpoints["llama"][1]
    ids, mask = left_padded_prompts(seed=15, lengths=(4, 6))
    out = gpt2.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3,
                        return_dict_in_generate=True, **GREEDY)
    past = out.past_key_values
    ids2, mask2 = _turn(out, [3, 4], mask)
    cases = [
        (llama, ids2, mask2, "another model"),
        (gpt2, ids2[:1], mask2[:1], "batch size"),
        (gpt2, np.where(np.arange(ids2.shape[1]) == 2, 50, ids2), mask2, "prefix"),
        (gpt2, out.sequences[:, :4], mask[:, :4], "only 4"),
    ]
    with count_compiles() as c:
        for lm, i, m, what in cases:
            with pytest.raises(ValueError, match=f"past_key_values.*{what}|{what}.*"):
                lm.generate(input_ids=i, attention_mask=m, past_key_values=past,
                            max_new_tokens=2, **GREEDY)
        with pytest.raises(TypeError, match="past_key_values"):
            gpt2.generate(input_ids=ids2, attention_mask=mask2, past_key_values=object(),
                          max_new_tokens=2, **GREEDY)
    assert c.count == 0


def test_sliding_window_caches_are_refused():
    model = jaxgen.models.Llama(jaxgen.models.LlamaConfig(
        vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, model_type="mistral", sliding_window=4))
    params = model.init_params(jax.random.key(0))
    out = jaxgen.generate(model, params, np.array([[1, 2, 3]]), max_new_tokens=2,
                          return_dict_in_generate=True)
    with pytest.raises(ValueError, match="past_key_values.*sliding"):
        jaxgen.generate(model, params, np.concatenate([out.sequences, [[4]]], 1),
                        past_key_values=out.past_key_values, max_new_tokens=2)
