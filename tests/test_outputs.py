"""``output_logits`` / ``output_hidden_states`` / ``output_attentions``: transformers 5's
layout and values, only allocated when asked, and refused by name where not given."""

from __future__ import annotations

import contextlib

import jax
import numpy as np
import pytest
import torch

import jaxgen
from jaxgen.generate import prepare, start
from tests.stubs import TableLM, chain_table, left_padded_prompts, table_params

PAD = 1
ALL = dict(return_dict_in_generate=True, output_logits=True, output_hidden_states=True,
           output_attentions=True)


@contextlib.contextmanager
def eager(hf_model):
    """transformers returns attentions with eager attention only (sdpa by default)."""
    was = hf_model.config._attn_implementation
    hf_model.set_attn_implementation("eager")
    try:
        yield hf_model
    finally:
        hf_model.set_attn_implementation(was)


def _both(checkpoints, name, ids, mask, **kw):
    hf_model, lm = checkpoints[name]
    with eager(hf_model), torch.inference_mode():
        ref = hf_model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                                pad_token_id=PAD, **ALL, **kw)
    out = lm.generate(input_ids=ids, attention_mask=mask, pad_token_id=PAD, **ALL, **kw)
    return out, ref


def _close(a, b, rows=None):
    a, b = np.asarray(a), b.numpy()
    assert a.shape == b.shape
    if rows is not None:
        a, b = a[rows], b[rows]
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def _compare_steps(out, ref, mask, steps):
    real = mask.astype(bool)                            # prompt positions that are not padding
    for s in steps:
        _close(out.logits[s], ref.logits[s])
        for got, want in zip(out.hidden_states[s], ref.hidden_states[s], strict=True):
            _close(got, want, real if s == 0 else None)
        for got, want in zip(out.attentions[s], ref.attentions[s], strict=True):
            if s == 0:   # [rows, heads, W, W]: compare the real query rows
                _close(np.transpose(got, (0, 2, 1, 3)),
                       torch.permute(want, (0, 2, 1, 3)), real)
            else:
                _close(got, want)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_greedy_outputs_match_transformers(checkpoints, name):
    ids, mask = left_padded_prompts()
    out, ref = _both(checkpoints, name, ids, mask, do_sample=False, max_new_tokens=6)
    np.testing.assert_array_equal(out.sequences, ref.sequences.numpy())
    assert len(out.logits) == len(ref.logits) == len(out.hidden_states) == len(out.attentions)
    layers = checkpoints[name][1].model.config
    n = getattr(layers, "num_hidden_layers", None) or layers.n_layer
    assert len(out.hidden_states[0]) == n + 1 and len(out.attentions[0]) == n
    assert out.attentions[3][0].shape[-1] == ids.shape[1] + 3
    _compare_steps(out, ref, mask, range(len(ref.logits)))


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_sampling_first_step_matches_transformers(checkpoints, name):
    ids, mask = left_padded_prompts(seed=2)
    out, ref = _both(checkpoints, name, ids, mask, do_sample=True, top_k=5,
                     num_return_sequences=2, max_new_tokens=4)
    assert out.sequences.shape[0] == ref.sequences.shape[0] == 2 * len(ids)
    _compare_steps(out, ref, np.repeat(mask, 2, axis=0), [0])


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_beam_outputs_match_transformers(checkpoints, name):
    """Every step's arrays are the running beams in that step's order (not reordered)."""
    ids, mask = left_padded_prompts(seed=1)
    out, ref = _both(checkpoints, name, ids, mask, do_sample=False, num_beams=3,
                     max_new_tokens=5, output_scores=True)
    np.testing.assert_array_equal(out.sequences, ref.sequences.numpy())
    np.testing.assert_array_equal(out.beam_indices, ref.beam_indices.numpy())
    assert len(out.logits) == len(ref.logits)
    _compare_steps(out, ref, np.repeat(mask, 3, axis=0), range(len(ref.logits)))


def test_speculative_gives_logits_and_hidden_states_of_greedy():
    lm = jaxgen.load()
    inputs = lm.tokenizer(["ROMEO:\nWhat light through yonder", "JULIET:\n"])
    kw = dict(do_sample=False, max_new_tokens=10, pad_token_id=0, eos_token_id=None,
              return_dict_in_generate=True, output_logits=True, output_hidden_states=True)
    greedy = lm.generate(**inputs, **kw)
    spec = lm.generate(**inputs, **kw, prompt_lookup_num_tokens=3)
    np.testing.assert_array_equal(spec.sequences, greedy.sequences)
    for a, b in zip(spec.logits, greedy.logits, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4)
    for a, b in zip(spec.hidden_states[1:], greedy.hidden_states[1:], strict=True):
        np.testing.assert_allclose(a[-1], b[-1], atol=1e-4)


def test_refused_outputs_name_the_field_before_compiling(count_compiles):
    lm = jaxgen.load()
    inputs = lm.tokenizer(["ROMEO:\n"])
    stub, params = TableLM(vocab_size=8), table_params(chain_table(8, {1: 2}))
    with count_compiles() as c:
        with pytest.raises(ValueError, match="output_attentions"):
            lm.generate(**inputs, do_sample=False, prompt_lookup_num_tokens=3,
                        return_dict_in_generate=True, output_attentions=True)
        with pytest.raises(ValueError, match="output_hidden_states"):
            jaxgen.generate(stub, params, np.array([[1]]), max_new_tokens=2,
                            return_dict_in_generate=True, output_hidden_states=True)
    assert c.count == 0
    # raw logits need nothing from the model
    out = jaxgen.generate(stub, params, np.array([[1]]), max_new_tokens=2,
                          return_dict_in_generate=True, output_logits=True)
    assert out.logits[0].shape == (1, 8) and out.logits[0][0, 2] == 5.0


def test_nothing_is_allocated_unless_asked():
    lm = jaxgen.load()
    inputs = lm.tokenizer(["ROMEO:\n"])
    plain = prepare(lm.model, inputs["input_ids"], max_new_tokens=4, do_sample=False,
                    params=lm.params)
    asked = prepare(lm.model, inputs["input_ids"], max_new_tokens=4, do_sample=False,
                    params=lm.params, return_dict_in_generate=True, output_logits=True)
    a, b = start(plain, lm.params), start(asked, lm.params)
    assert a.loop.trace is None and b.loop.trace.logits is not None
    assert len(jax.tree.leaves(b)) == len(jax.tree.leaves(a)) + 1


def test_models_logits_can_return_hidden_states(checkpoints):
    hf_model, lm = checkpoints["llama"]
    ids, mask = left_padded_prompts(seed=4)
    out, hidden = jaxgen.models.logits(lm.model, lm.params, ids, mask, output_hidden_states=True)
    with torch.inference_mode():
        ref = hf_model(torch.tensor(ids), attention_mask=torch.tensor(mask),
                       output_hidden_states=True)
    real = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(out)[real], ref.logits.numpy()[real], atol=1e-4)
    for got, want in zip(hidden, ref.hidden_states, strict=True):
        np.testing.assert_allclose(np.asarray(got)[real], want.numpy()[real], atol=1e-4)
