"""Load-time preparation (`jaxgen.quant`): scanned layers give the unscanned tokens and
cache on every family; int8 weights and an int8 KV cache stay close to float; bad
settings are refused by name."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxgen
from jaxgen.models import load_checkpoint, logits, quant
from jaxgen.models.quant import Int8KVCache, QTensor, quantize
from jaxgen.quant import is_quantized, prepare
from tests.test_families import CASES, EOS, PAD, PROMPT, _randomize

FAMILIES = ("gemma2", "gemma3", "olmo2", "phi3", "qwen3", "smollm3", "mistral")


@pytest.fixture(scope="module", params=FAMILIES)
def checkpoint(request, tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp(request.param)
    _randomize(CASES[request.param].make()).save_pretrained(path)
    return load_checkpoint(path)[:2]


def _greedy(model, params, n: int = 10) -> np.ndarray:
    ids, mask = PROMPT
    return np.asarray(jaxgen.generate(model, params, ids, mask, pad_token_id=PAD,
                                      eos_token_id=EOS, max_new_tokens=n, do_sample=False))


def test_scanned_layers_give_the_same_tokens_and_cache(checkpoint):
    model, params = checkpoint
    scanned, stacked = prepare(model, params, scan_layers=True, quantize=None,
                               kv_cache_dtype=None)
    assert scanned.scan_layers and "layers" in stacked and "layers_0" not in stacked
    np.testing.assert_array_equal(_greedy(scanned, stacked), _greedy(model, params))
    ids, mask = PROMPT
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    caches = [m.apply(p, ids, pos, m.init_cache(2, 16), np.pad(mask, ((0, 0), (0, 10))))[1]
              for m, p in ((scanned, stacked), (model, params))]
    for a, b in zip(jax.tree.leaves(caches[0]), jax.tree.leaves(caches[1]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)


def _stacks(cache):
    """The cache stacks of a cache (through `LayerCaches` / `TokenCache`)."""
    if hasattr(cache, "stacks"):
        return [s for c in cache.stacks.values() for s in _stacks(c)]
    return _stacks(cache.inner) if hasattr(cache, "inner") else [cache]


def test_int8_weights_and_cache_stay_close_to_float(checkpoint):
    model, params = checkpoint
    q_model, q_params = prepare(model, params, scan_layers=True, quantize="int8",
                                kv_cache_dtype="int8")
    assert is_quantized(q_params) and not is_quantized(params)
    full = [s for s in _stacks(q_model.init_cache(2, 16)) if type(s).__name__ != "RingCache"]
    assert all(isinstance(s, Int8KVCache) for s in full)
    ids, mask = PROMPT
    ref, got = (np.asarray(logits(m, p, ids, mask)) for m, p in
                ((model, params), (q_model, q_params)))
    real = mask.astype(bool)
    diff, scale = np.abs(ref - got)[real], np.abs(ref[real])
    # 32-wide random layers are int8's worst case: measured mean 0.7-3.7%, max 0.7-7%
    assert 0 < diff.mean() / scale.mean() < 0.05 and diff.max() / scale.max() < 0.15


def test_int8_kernels_are_a_quarter_of_the_bytes():
    lm, q = jaxgen.load(), jaxgen.load(quantize="int8")
    kernel = q.params["layers_0"]["mlp"]["up_proj"]["kernel"]
    assert isinstance(kernel, QTensor) and kernel.q.dtype == jnp.int8
    size = sum(x.nbytes for x in jax.tree.leaves(lm.params))
    q_size = sum(x.nbytes for x in jax.tree.leaves(q.params))
    assert q_size < 0.3 * size, (q_size, size)
    ids = lm.tokenizer(["ROMEO:\n"])
    ref = np.asarray(lm.generate(**ids, max_new_tokens=60, do_sample=False))
    got = np.asarray(q.generate(**ids, max_new_tokens=60, do_sample=False))
    np.testing.assert_array_equal(got[:, :12], ref[:, :12])  # measured: they part at 13
    agree = (np.asarray(logits(q.model, q.params, ref)).argmax(-1) ==
             np.asarray(logits(lm.model, lm.params, ref)).argmax(-1)).mean()
    assert agree > 0.85, agree


def test_quantize_matches_its_dequantized_weights():
    x = jax.random.normal(jax.random.key(0), (16, 8)) * jnp.arange(1, 9)
    w = quantize(x, axis=0)
    assert w.scale.shape == (1, 8)
    np.testing.assert_allclose(np.asarray(w.dequantize()), np.asarray(x),
                               atol=float(np.abs(x).max(0).max()) / 127 / 2 + 1e-6)


@pytest.mark.parametrize("field,value", [("quantize", "int4"), ("kv_cache_dtype", "fp8")])
def test_bad_settings_are_refused_by_name(field, value):
    with pytest.raises(ValueError, match=rf"{field} must be one of .*'int8'"):
        jaxgen.load(**{field: value})


def test_gpt2_refuses_int8_by_name():
    gpt2 = jaxgen.models.GPT2(jaxgen.models.GPT2Config(
        vocab_size=32, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="quantize='int8' is for the decoder families"):
        prepare(gpt2, gpt2.init_params(jax.random.key(0)), scan_layers=False,
                quantize="int8", kv_cache_dtype=None)


def test_every_strategy_runs_on_int8_and_speculation_stays_exact(tmp_path):
    """int8 weights + int8 cache through greedy, sampling, beams (reorder_cache), prompt
    lookup (rewinds) and contrastive search; prompt lookup equals plain greedy."""
    q = jaxgen.load(quantize="int8", kv_cache_dtype="int8")
    ids = q.tokenizer(["ROMEO:\nO, ROMEO:\nO,"])
    greedy = np.asarray(q.generate(**ids, max_new_tokens=16, do_sample=False))
    lookup = np.asarray(q.generate(**ids, max_new_tokens=16, do_sample=False,
                                   prompt_lookup_num_tokens=3))
    np.testing.assert_array_equal(lookup, greedy)
    for kw in (dict(do_sample=True, top_k=20), dict(num_beams=3, do_sample=False),
               dict(penalty_alpha=0.6, top_k=4)):
        out = np.asarray(q.generate(**ids, max_new_tokens=8, rng=1, **kw))
        assert out.shape == (1, ids["input_ids"].shape[1] + 8), kw


def test_scanned_params_save_in_the_hugging_face_layout(tmp_path):
    from jaxgen.models import save_checkpoint

    lm = jaxgen.load(scan_layers=True)
    save_checkpoint(lm.model, lm.params, tmp_path)
    back = load_checkpoint(tmp_path)[1]
    np.testing.assert_array_equal(
        np.asarray(back["layers_1"]["mlp"]["up_proj"]["kernel"]),
        np.asarray(lm.params["layers"][0]["0"]["mlp"]["up_proj"]["kernel"][1]))
    with pytest.raises(ValueError, match="int8"):
        save_checkpoint(*prepare(lm.model, lm.params, scan_layers=False, quantize="int8",
                                 kv_cache_dtype=None), tmp_path)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_one_row_dot_equals_its_row_in_a_batch(dtype):
    """A one-row half-precision dot (padded to two rows for XLA:CPU's fast kernel) gives
    exactly the row a two-row dot gives, for ``x @ w`` and the tied head ``x @ table.T``,
    with extra leading dims, in ``x``'s dtype."""
    rs = np.random.RandomState(0)
    x2 = jnp.asarray(rs.standard_normal((2, 1, 48)), dtype)
    w = jnp.asarray(rs.standard_normal((48, 80)) * 0.1, dtype)
    table = jnp.asarray(rs.standard_normal((80, 48)) * 0.1, dtype)
    for fn, arg in ((quant.matmul, w), (quant.matmul_t, table)):
        one, two = jax.jit(fn)(x2[:1], arg), jax.jit(fn)(x2, arg)
        assert one.shape == (1, 1, 80) and one.dtype == jnp.dtype(dtype)
        f32 = np.float32
        np.testing.assert_array_equal(np.asarray(one, f32), np.asarray(two[:1], f32))
        flat = jax.jit(fn)(x2[0, 0], arg)                      # no leading dims at all
        np.testing.assert_array_equal(np.asarray(flat, f32), np.asarray(one[0, 0], f32))
