"""The decode state keeps one cache buffer per layer from the prefill on
(`jaxgen.models.per_layer`), so chunked runs copy no cache between ``run_steps`` calls;
`past_key_values` hands back whole stacks; scanned-layer models keep stacks throughout."""

from __future__ import annotations

import time

import jax
import numpy as np

import jaxgen
from jaxgen.generate import chunks, finish, prepare, start
from jaxgen.models.cache import is_stack
from jaxgen.models.per_layer import Layers
from tests.stubs import left_padded_prompts


def _stacks(tree):
    return [x for x in jax.tree.leaves(tree, is_leaf=is_stack) if is_stack(x)]


def test_prefill_state_is_per_layer_and_chunks_keep_it(checkpoints):
    _, lm = checkpoints["llama"]
    ids, mask = left_padded_prompts(seed=3)
    kw = dict(max_new_tokens=9, pad_token_id=0, eos_token_id=None)
    request = prepare(lm.model, ids, mask, params=lm.params, **kw)
    state = start(request, lm.params)
    stacks = _stacks(state.loop.cache)
    assert stacks and all(isinstance(s.k, Layers) and isinstance(s.v, Layers) for s in stacks)
    after = jaxgen.run_steps(request.strategy, lm.params, state, np.asarray(2, np.int32))
    assert jax.tree.structure(after) == jax.tree.structure(state)   # no retrace per chunk
    request = prepare(lm.model, ids, mask, params=lm.params, **kw)
    request.chunk = 2                                 # two steps per run_steps call
    states = list(chunks(request, lm.params, start(request, lm.params), time.perf_counter()))
    assert len(states) >= 3
    for s in states:
        assert jax.tree.structure(s.loop.cache) == jax.tree.structure(after.loop.cache)
    last = states[-1]
    np.testing.assert_array_equal(finish(request, last), lm.generate(ids, mask, **kw))
    past = lm.generate(ids, mask, **kw, return_dict_in_generate=True).past_key_values
    assert all(not isinstance(s.k, Layers) for s in _stacks(past.cache))


def test_scanned_layers_keep_stacks(tmp_path, checkpoints):
    hf, _ = checkpoints["llama"]
    hf.save_pretrained(tmp_path)
    lm = jaxgen.load(tmp_path, scan_layers=True)
    ids, mask = left_padded_prompts(seed=3)
    request = prepare(lm.model, ids, mask, params=lm.params, max_new_tokens=4, pad_token_id=0)
    stacks = _stacks(start(request, lm.params).loop.cache)
    assert stacks and not any(isinstance(s.k, Layers) for s in stacks)
