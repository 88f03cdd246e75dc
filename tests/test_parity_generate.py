"""Greedy generate: token-for-token parity with transformers on tiny random checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.stubs import left_padded_prompts


def _hf_generate(model, ids, mask, **kw):
    with torch.inference_mode():
        return model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                              do_sample=False, pad_token_id=0, **kw).numpy()


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("kw", [
    {"max_new_tokens": 12},
    {"max_length": 15},
    {"max_new_tokens": 10, "min_new_tokens": 4},
])
def test_greedy_matches_transformers(checkpoints, name, kw):
    hf_model, lm = checkpoints[name]
    ids, mask = left_padded_prompts()
    expected = _hf_generate(hf_model, ids, mask, **kw)
    got = lm.generate(input_ids=ids, attention_mask=mask, pad_token_id=0, **kw)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_greedy_with_eos_list_matches_transformers(checkpoints, name):
    hf_model, lm = checkpoints[name]
    ids, mask = left_padded_prompts(seed=1, lengths=(4, 7, 6, 2))
    free = _hf_generate(hf_model, ids, mask, max_new_tokens=16, eos_token_id=None)
    new = free[:, ids.shape[1]:]
    # eos ids that really occur: row 0's 3rd token and row 1's 6th token
    eos = [int(new[0, 2]), int(new[1, 5])]
    expected = _hf_generate(hf_model, ids, mask, max_new_tokens=16, eos_token_id=eos)
    assert (expected[:, ids.shape[1]:] == 0).any(), "some row must finish early"
    got = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16,
                      eos_token_id=eos, pad_token_id=0)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_output_scores_match_transformers(checkpoints, name):
    hf_model, lm = checkpoints[name]
    ids, mask = left_padded_prompts(seed=2)
    with torch.inference_mode():
        ref = hf_model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                                do_sample=False, pad_token_id=0, max_new_tokens=6,
                                min_new_tokens=3, output_scores=True,
                                return_dict_in_generate=True)
    out = lm.generate(input_ids=ids, attention_mask=mask, pad_token_id=0, max_new_tokens=6,
                      min_new_tokens=3, output_scores=True, return_dict_in_generate=True)
    np.testing.assert_array_equal(out.sequences, ref.sequences.numpy())
    assert len(out.scores) == len(ref.scores)
    for ours, theirs in zip(out.scores, ref.scores, strict=True):
        theirs = theirs.numpy()
        np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs))
        np.testing.assert_allclose(ours[np.isfinite(ours)], theirs[np.isfinite(theirs)],
                                   atol=1e-4)
