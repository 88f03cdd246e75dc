"""Contrastive search (``penalty_alpha``, ``top_k``): tokens equal to transformers 4.55's
in-tree ``_contrastive_search``; one batched forward of the candidates per step."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

import jaxgen
from jaxgen.models import Llama, LlamaConfig
from tests.reference import legacy_outputs
from tests.stubs import left_padded_prompts

SETTINGS = [
    dict(penalty_alpha=0.6, top_k=4, max_new_tokens=10),
    dict(penalty_alpha=0.3, top_k=2, max_new_tokens=8, repetition_penalty=1.3),
    dict(penalty_alpha=0.9, top_k=6, max_new_tokens=9, no_repeat_ngram_size=2),
    dict(penalty_alpha=0.5, top_k=3, max_new_tokens=12, eos_token_id=None),
]
PAD = 1


@pytest.fixture(scope="module")
def reference(checkpoints):
    """transformers 4.55's outputs for every (model, setting), in one process."""
    ids, mask = left_padded_prompts(seed=5, lengths=(6, 3, 8))
    return ids, mask, legacy_outputs(checkpoints, SETTINGS, ids, mask, pad=PAD)


@pytest.mark.parametrize("setting", range(len(SETTINGS)))
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_tokens_equal_transformers_455(checkpoints, reference, name, setting):
    ids, mask, ref = reference
    lm = checkpoints[name][1]
    out = lm.generate(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=PAD,
                      **SETTINGS[setting])
    np.testing.assert_array_equal(out, np.asarray(ref[(name, setting)]["sequences"]))


@dataclasses.dataclass(frozen=True)
class Counting(Llama):
    """Records the token shape of every ``apply`` it is traced with."""

    calls: list = dataclasses.field(default_factory=list, compare=False, hash=False)

    def apply(self, params, tokens, *args, **kwargs):
        self.calls.append(tuple(tokens.shape))
        return super().apply(params, tokens, *args, **kwargs)


def test_one_batched_forward_per_step():
    model = Counting(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                 num_hidden_layers=2, num_attention_heads=2))
    params = model.init_params(jax.random.key(0))
    ids = np.array([[3, 4, 5], [6, 7, 8]])
    jaxgen.generate(model, params, ids, penalty_alpha=0.6, top_k=5, max_new_tokens=6)
    # the prefill, then candidate passes of 2 rows x 5 candidates, 1 token each (init +
    # the loop body, each traced once): never one pass per candidate
    assert model.calls[0][0] == 2 and set(model.calls[1:]) == {(10, 1)}
    assert len(model.calls) == 3


def test_penalty_alpha_is_traced(checkpoints, count_compiles):
    lm = checkpoints["llama"][1]
    ids, mask = left_padded_prompts(seed=6)
    kw = dict(do_sample=False, top_k=3, max_new_tokens=5, pad_token_id=PAD)
    lm.generate(input_ids=ids, attention_mask=mask, penalty_alpha=0.4, **kw)
    with count_compiles() as c:
        lm.generate(input_ids=ids, attention_mask=mask, penalty_alpha=0.7, **kw)
    assert c.count == 0


@pytest.mark.parametrize("top_k", [0, 1])
def test_penalty_alpha_without_top_k_is_refused(checkpoints, count_compiles, top_k):
    lm = checkpoints["gpt2"][1]
    with count_compiles() as c, pytest.raises(ValueError, match="penalty_alpha.*top_k"):
        lm.generate(input_ids=np.array([[3, 4]]), do_sample=False, penalty_alpha=0.6,
                    top_k=top_k, max_new_tokens=3)
    assert c.count == 0


def test_penalty_alpha_with_sampling_has_no_effect():
    with pytest.raises(ValueError, match="penalty_alpha.*no effect"):
        jaxgen.GenerationConfig(penalty_alpha=0.6, do_sample=True).validate()
