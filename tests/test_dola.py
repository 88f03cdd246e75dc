"""DoLa (``dola_layers``): tokens equal to transformers 4.55's in-tree ``_dola_decoding``;
layer choice, the repetition-penalty advice and bad layers."""

from __future__ import annotations

import numpy as np
import pytest

import jaxgen
from jaxgen.decoding.strategies.dola import candidate_layers
from tests.reference import legacy_outputs
from tests.stubs import left_padded_prompts

SETTINGS = [
    dict(dola_layers="low", repetition_penalty=1.2, max_new_tokens=10),
    dict(dola_layers="high", repetition_penalty=1.2, max_new_tokens=8),
    dict(dola_layers=[0, 1], repetition_penalty=1.5, max_new_tokens=9),
    dict(dola_layers=[1], repetition_penalty=1.2, max_new_tokens=12, eos_token_id=None),
]
PAD = 1


@pytest.fixture(scope="module")
def reference(checkpoints):
    ids, mask = left_padded_prompts(seed=7, lengths=(5, 8, 4))
    return ids, mask, legacy_outputs(checkpoints, SETTINGS, ids, mask, pad=PAD)


@pytest.mark.parametrize("setting", range(len(SETTINGS)))
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_tokens_equal_transformers_455(checkpoints, reference, name, setting):
    ids, mask, ref = reference
    out = checkpoints[name][1].generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                        pad_token_id=PAD, **SETTINGS[setting])
    np.testing.assert_array_equal(out, np.asarray(ref[(name, setting)]["sequences"]))


def test_candidate_layers_follow_transformers():
    assert candidate_layers("low", 32, tied=False) == tuple(range(0, 16, 2))
    assert candidate_layers("low", 32, tied=True) == tuple(range(2, 16, 2))
    assert candidate_layers("high", 32, tied=True) == tuple(range(16, 32, 2))
    assert candidate_layers("low", 48, tied=False) == tuple(range(0, 20, 2))
    assert candidate_layers("high", 48, tied=False) == tuple(range(28, 48, 2))
    assert candidate_layers("low", 2, tied=True) == (1,)
    assert candidate_layers([0, 5, 30], 12, tied=False) == (0, 5)


def test_layers_beyond_the_model_are_refused_before_compiling(checkpoints, count_compiles):
    lm = checkpoints["llama"][1]            # 2 layers
    with count_compiles() as c, pytest.raises(ValueError, match="dola_layers.*2 layers"):
        lm.generate(input_ids=np.array([[3, 4]]), do_sample=False, dola_layers=[2, 5],
                    repetition_penalty=1.2, max_new_tokens=3)
    assert c.count == 0


def test_low_repetition_penalty_warns_as_transformers(checkpoints):
    lm = checkpoints["gpt2"][1]
    with pytest.warns(jaxgen.config.GenerationConfigWarning, match="repetition_penalty"):
        lm.generate(input_ids=np.array([[3, 4]]), do_sample=False, dola_layers="low",
                    max_new_tokens=2)


def test_sampling_and_raw_logits(checkpoints):
    """DoLa samples from the contrasted logits; the recorded raw logits are the final
    layer's (those of plain decoding for the same tokens)."""
    lm = checkpoints["llama"][1]
    ids, mask = left_padded_prompts(seed=8)
    kw = dict(input_ids=ids, attention_mask=mask, pad_token_id=PAD, max_new_tokens=6,
              return_dict_in_generate=True, output_logits=True, repetition_penalty=1.2)
    out = lm.generate(do_sample=True, top_k=10, dola_layers="high", rng=1, **kw)
    again = lm.generate(do_sample=True, top_k=10, dola_layers="high", rng=1, **kw)
    np.testing.assert_array_equal(out.sequences, again.sequences)
    first = lm.generate(do_sample=False, **kw)
    np.testing.assert_allclose(out.logits[0], first.logits[0], atol=1e-5)
