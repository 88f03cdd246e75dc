"""Greedy generate: token-for-token parity with transformers on tiny random checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import jaxgen

VOCAB = 97


def _save(model, path):
    model.eval()
    model.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("parity")
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=128, n_embd=32, n_layer=2, n_head=4,
        initializer_range=0.3, bos_token_id=1, eos_token_id=2))
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        initializer_range=0.3, bos_token_id=1, eos_token_id=2, rope_theta=500.0))
    out = {}
    for name, m in [("gpt2", gpt2), ("llama", llama)]:
        path = _save(m, root / name)
        out[name] = (m, jaxgen.load(path))
    return out


def _prompts(seed=0, lengths=(5, 9, 3)):
    rs = np.random.RandomState(seed)
    width = max(lengths)
    ids = np.zeros((len(lengths), width), np.int64)
    mask = np.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, width - n:] = rs.randint(3, VOCAB, size=n)
        mask[r, width - n:] = 1
    return ids, mask


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
    ids, mask = _prompts()
    expected = _hf_generate(hf_model, ids, mask, **kw)
    got = lm.generate(input_ids=ids, attention_mask=mask, pad_token_id=0, **kw)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_greedy_with_eos_list_matches_transformers(checkpoints, name):
    hf_model, lm = checkpoints[name]
    ids, mask = _prompts(seed=1, lengths=(4, 7, 6, 2))
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
    ids, mask = _prompts(seed=2)
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
