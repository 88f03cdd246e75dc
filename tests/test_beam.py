"""Beam search and beam sampling: parity with transformers, stub-model behaviour."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

import jaxgen
from tests.stubs import TableLM, left_padded_prompts, table_params

PAD = 1  # not 0: transformers fills beam outputs with eos when pad_token_id == 0


def _hf_beam(model, ids, mask, **kw):
    with torch.inference_mode():
        return model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                              do_sample=False, pad_token_id=PAD, **kw)


def _compare(checkpoints, name, ids, mask, **kw):
    hf_model, lm = checkpoints[name]
    ref = _hf_beam(hf_model, ids, mask, return_dict_in_generate=True, output_scores=True,
                   **kw)
    out = lm.generate(input_ids=ids, attention_mask=mask, pad_token_id=PAD,
                      return_dict_in_generate=True, output_scores=True, **kw)
    np.testing.assert_array_equal(out.sequences, ref.sequences.numpy())
    np.testing.assert_allclose(out.sequences_scores, ref.sequences_scores.numpy(), atol=1e-4)
    np.testing.assert_array_equal(out.beam_indices, ref.beam_indices.numpy())
    return out, ref


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("kw", [
    dict(num_beams=2, max_new_tokens=8),
    dict(num_beams=4, max_new_tokens=10, num_return_sequences=2),
    dict(num_beams=3, max_new_tokens=7, num_return_sequences=3, length_penalty=0.6),
    dict(num_beams=4, max_new_tokens=9, length_penalty=2.0),
])
def test_beam_search_matches_transformers(checkpoints, name, kw):
    ids, mask = left_padded_prompts()
    _compare(checkpoints, name, ids, mask, **kw)


def _eos_from_free_run(checkpoints, name, ids, mask, picks):
    hf_model, _ = checkpoints[name]
    free = _hf_beam(hf_model, ids, mask, num_beams=4, max_new_tokens=12,
                    eos_token_id=None).numpy()[:, ids.shape[1]:]
    return sorted({int(free[r, c]) for r, c in picks} - {PAD})


@pytest.mark.parametrize("name", ["gpt2", "llama"])
@pytest.mark.parametrize("early_stopping", [True, False, "never"])
@pytest.mark.parametrize("length_penalty", [0.6, 1.0, 2.0])
def test_early_stopping_modes_with_eos_sets(checkpoints, name, early_stopping,
                                            length_penalty):
    ids, mask = left_padded_prompts(seed=3, lengths=(4, 7, 6))
    eos = _eos_from_free_run(checkpoints, name, ids, mask, [(0, 2), (1, 4), (2, 1)])
    out, _ = _compare(checkpoints, name, ids, mask, num_beams=4, max_new_tokens=12,
                      num_return_sequences=4, eos_token_id=eos,
                      early_stopping=early_stopping, length_penalty=length_penalty)
    new = out.sequences[:, ids.shape[1]:]
    assert np.isin(new, eos).any(), "some hypothesis must end with an eos"


def test_early_stopping_modes_can_differ(checkpoints):
    """Over a small grid, the three modes do not always agree (and each matched
    transformers above): the test data really exercises the modes."""
    hf_model, _ = checkpoints["gpt2"]
    differ = False
    for seed in range(6):
        ids, mask = left_padded_prompts(seed=seed, lengths=(4, 6))
        eos = _eos_from_free_run(checkpoints, "gpt2", ids, mask, [(0, 1), (1, 3)])
        outs = [_hf_beam(hf_model, ids, mask, num_beams=3, max_new_tokens=10,
                         eos_token_id=eos, early_stopping=mode, length_penalty=2.0).numpy()
                for mode in (True, False, "never")]
        same = all(o.shape == outs[0].shape and (o == outs[0]).all() for o in outs)
        if not same:
            differ = True
            for mode, ref in zip((True, False, "never"), outs, strict=True):
                got = checkpoints["gpt2"][1].generate(
                    input_ids=ids, attention_mask=mask, num_beams=3, max_new_tokens=10,
                    eos_token_id=eos, early_stopping=mode, length_penalty=2.0,
                    pad_token_id=PAD)
                np.testing.assert_array_equal(got, ref)
            break
    assert differ


# --- stub models ------------------------------------------------------------------------

V = 6
EOS = 5


def _stub_params(rows: dict[int, list[float]]):
    """Next-token probabilities by last token (log taken), others uniform."""
    table = np.full((V, V), np.log(1.0 / V), np.float32)
    for t, probs in rows.items():
        table[t] = np.log(np.asarray(probs, np.float64) + 1e-12)
    return table_params(table)


def test_beam_finds_higher_scoring_sequence_than_greedy():
    # from 0: greedy takes 1 (0.6) then 1->eos... (0.3); beam takes 2 (0.4) then 2->eos (1.0)
    params = _stub_params({0: [0, .6, .4, 0, 0, 0], 1: [0, 0, 0, .35, .35, .3],
                           2: [0, 0, 0, 0, 0, 1.0], 3: [0, 0, 0, 0, 0, 1.0],
                           4: [0, 0, 0, 0, 0, 1.0]})
    model = TableLM(vocab_size=V)
    kw = dict(max_new_tokens=3, eos_token_id=EOS, pad_token_id=0)
    greedy = np.asarray(jaxgen.generate(model, params, np.array([[0]]), **kw))
    beam = jaxgen.generate(model, params, np.array([[0]]), num_beams=2, output_scores=True,
                           return_dict_in_generate=True, **kw)
    assert greedy[0, 1:3].tolist() == [1, 3]
    assert beam.sequences[0, 1:3].tolist() == [2, EOS]
    # log(0.4 * 1.0) / 2 > log(0.6 * 0.35 * 1.0) / 3
    np.testing.assert_allclose(beam.sequences_scores[0], np.log(0.4) / 2, atol=1e-5)


def test_early_stopping_changes_the_result_on_a_stub():
    # from 0: eos right away (0.5) or 1 (0.5) -> 1 then 1 (0.99) ... a long sequence that
    # scores better per token with length_penalty=2.0 if the search keeps going.
    params = _stub_params({0: [0, .5, 0, 0, 0, .5], 1: [0, .99, 0, 0, 0, .01]})
    model = TableLM(vocab_size=V)
    kw = dict(max_new_tokens=6, eos_token_id=EOS, pad_token_id=0, num_beams=2,
              length_penalty=2.0)
    early = np.asarray(jaxgen.generate(model, params, np.array([[0]]), early_stopping=True,
                                       **kw))
    never = np.asarray(jaxgen.generate(model, params, np.array([[0]]),
                                       early_stopping="never", **kw))
    # True stops once both beams are finished: [0, eos] (score log .5 / 1) wins.
    # "never" keeps searching: 0 1 1 1 1 1 1 scores (log .5 + 5 log .99) / 6**2, higher.
    assert early.tolist() == [[0, EOS]]
    assert never.tolist() == [[0, 1, 1, 1, 1, 1, 1]]


# --- beam sampling ------------------------------------------------------------------------

def test_seed_example_beam_sampling(checkpoints):
    _, lm = checkpoints["llama"]
    ids, mask = left_padded_prompts(seed=5, lengths=(6, 3))
    kw = dict(input_ids=ids, attention_mask=mask, num_beams=4, do_sample=True,
              max_new_tokens=20, num_return_sequences=3, pad_token_id=PAD)
    a = lm.generate(**kw, rng=jax.random.key(0))
    assert a.shape[0] == 6
    for row in range(2):
        cands = {tuple(x) for x in a[3 * row:3 * row + 3].tolist()}
        assert len(cands) == 3
    np.testing.assert_array_equal(a, lm.generate(**kw, rng=jax.random.key(0)))
    b = lm.generate(**kw, rng=jax.random.key(1))
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_beam_sampling_at_low_temperature_is_beam_search(checkpoints):
    _, lm = checkpoints["gpt2"]
    ids, mask = left_padded_prompts(seed=7)
    kw = dict(input_ids=ids, attention_mask=mask, num_beams=3, max_new_tokens=8,
              num_return_sequences=2, pad_token_id=PAD)
    beam = lm.generate(**kw)
    for seed in range(3):
        sampled = lm.generate(**kw, do_sample=True, temperature=1e-4, top_k=0,
                              rng=jax.random.key(seed))
        np.testing.assert_array_equal(sampled, beam)


def test_beam_knobs_do_not_recompile(checkpoints, count_compiles):
    _, lm = checkpoints["gpt2"]
    ids, mask = left_padded_prompts(seed=8)
    kw = dict(input_ids=ids, attention_mask=mask, num_beams=2, pad_token_id=PAD,
              early_stopping=True)
    lm.generate(**kw, max_new_tokens=5, length_penalty=1.0, eos_token_id=[2])
    with count_compiles() as c:
        lm.generate(**kw, max_new_tokens=7, length_penalty=0.3, eos_token_id=[7])
    assert c.count == 0


@pytest.mark.parametrize("normalize", [False, True])
def test_compute_transition_scores_matches_transformers(checkpoints, normalize):
    hf_model, lm = checkpoints["llama"]
    ids, mask = left_padded_prompts(seed=9)
    eos = [2, 7]
    kw = dict(num_beams=3, max_new_tokens=8, num_return_sequences=2, eos_token_id=eos)
    ref = _hf_beam(hf_model, ids, mask, return_dict_in_generate=True, output_scores=True,
                   **kw)
    out = lm.generate(input_ids=ids, attention_mask=mask, pad_token_id=PAD,
                      return_dict_in_generate=True, output_scores=True, **kw)
    expected = hf_model.compute_transition_scores(ref.sequences, ref.scores,
                                                  ref.beam_indices, normalize_logits=normalize)
    got = jaxgen.compute_transition_scores(out.sequences, out.scores, out.beam_indices,
                                           normalize_logits=normalize)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-4)
    if not normalize:  # summed transition scores / length**lp = sequences_scores
        lengths = (out.beam_indices >= 0).sum(-1)
        np.testing.assert_allclose(got.sum(-1) / lengths, out.sequences_scores, atol=1e-4)


def test_compute_transition_scores_for_sampling(checkpoints):
    _, lm = checkpoints["gpt2"]
    ids, mask = left_padded_prompts(seed=10)
    out = lm.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=5,
                      pad_token_id=PAD, eos_token_id=None, return_dict_in_generate=True,
                      output_scores=True, rng=jax.random.key(3))
    got = jaxgen.compute_transition_scores(out.sequences, out.scores)
    new = out.sequences[:, ids.shape[1]:]
    for step in range(new.shape[1]):
        np.testing.assert_array_equal(
            got[:, step], out.scores[step][np.arange(len(new)), new[:, step]])
    assert np.isfinite(got).all()
