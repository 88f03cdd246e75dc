"""Parity of our Llama / Mistral / Qwen2 / GPT-2 with transformers on tiny random checkpoints."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from jaxgen.models import (
    GPT2,
    CausalLM,
    GPT2Config,
    KVCache,
    Llama,
    LlamaConfig,
    load_checkpoint,
    logits,
    positions_from_mask,
)
from jaxgen.models.cache import RingCache

VOCAB = 128
_SMALL = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2)


def _hf_model(family: str) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    if family == "llama":  # tied, with q/k/v/o and MLP biases
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
            **_SMALL, attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
            rope_theta=500.0))
    elif family == "llama_untied":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**_SMALL))
    elif family == "mistral":  # a window smaller than the test sequences
        model = transformers.MistralForCausalLM(transformers.MistralConfig(
            **_SMALL, sliding_window=4))
    elif family == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**_SMALL))
    elif family == "gpt2":
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    else:
        raise ValueError(family)
    with torch.no_grad():  # random biases and norms, so that every parameter matters
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


FAMILIES = ["llama", "llama_untied", "mistral", "qwen2", "gpt2"]


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request, tmp_path_factory):
    """(transformers model, our model, our params) for one family."""
    hf = _hf_model(request.param)
    path = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(path)
    model, params, _ = load_checkpoint(path)
    return hf, model, params


def _hf_logits(hf, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """transformers logits with generate()'s position ids for left padding."""
    pos = np.maximum(mask.cumsum(-1) - 1, 0)
    with torch.no_grad():
        out = hf(input_ids=torch.tensor(ids, dtype=torch.long),
                 attention_mask=torch.tensor(mask, dtype=torch.long),
                 position_ids=torch.tensor(pos, dtype=torch.long))
    return out.logits.float().numpy()


def _left_padded(lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    t = max(lengths)
    ids = np.random.RandomState(seed).randint(0, VOCAB, (len(lengths), t)).astype(np.int32)
    mask = np.zeros((len(lengths), t), np.int32)
    for row, n in enumerate(lengths):
        mask[row, t - n:] = 1
    return ids, mask


def test_protocol_and_hashable(pair):
    _, model, params = pair
    assert isinstance(model, CausalLM)
    assert hash(model) == hash(type(model)(model.config, model.dtype))
    assert model.vocab_size == VOCAB
    assert {f"layers_{i}" for i in range(2)} <= set(params)  # one subtree per layer


def test_prefill_matches_transformers_left_padded(pair):
    hf, model, params = pair
    ids, mask = _left_padded([7, 4, 1])
    ours = np.asarray(logits(model, params, ids, mask))
    ref = _hf_logits(hf, ids, mask)
    assert ours.shape == (3, 7, VOCAB) and ours.dtype == np.float32
    np.testing.assert_allclose(ours[mask == 1], ref[mask == 1], atol=1e-4, rtol=0)


def test_cached_decoding_matches_transformers(pair):
    """Prefill a left-padded batch, then feed tokens one at a time through the cache."""
    hf, model, params = pair
    prompt_ids, prompt_mask = _left_padded([5, 2], seed=1)
    b, p = prompt_ids.shape
    steps, slack = 4, 2  # slack: unused trailing cache slots must not matter
    new = np.random.RandomState(2).randint(0, VOCAB, (b, steps)).astype(np.int32)
    full_ids = np.concatenate([prompt_ids, new], axis=1)
    full_mask = np.concatenate([prompt_mask, np.ones((b, steps), np.int32)], axis=1)
    ref = _hf_logits(hf, full_ids, full_mask)

    apply = jax.jit(model.apply)
    length = p + steps + slack
    mask = np.zeros((b, length), np.int32)
    mask[:, :p] = prompt_mask
    positions = positions_from_mask(jnp.asarray(full_mask))
    cache = model.init_cache(b, length)
    out, cache = apply(params, prompt_ids, positions[:, :p], cache, mask)
    np.testing.assert_allclose(np.asarray(out)[prompt_mask == 1], ref[:, :p][prompt_mask == 1],
                               atol=1e-4, rtol=0)
    for s in range(steps):
        mask[:, p + s] = 1  # the caller marks the new slot before the call
        out, cache = apply(params, new[:, s:s + 1], positions[:, p + s:p + s + 1], cache, mask)
        assert int(cache.index) == p + s + 1
        np.testing.assert_allclose(np.asarray(out)[:, 0], ref[:, p + s], atol=1e-4, rtol=0)


def test_fully_masked_row_gives_no_nan(pair):
    _, model, params = pair
    ids, mask = _left_padded([3, 3])
    mask[1] = 0
    out = np.asarray(logits(model, params, ids, mask))
    assert np.isfinite(out).all()


def test_cache_layout(pair):
    """Full attention: a [layers, batch, kv, length, hd] KVCache; Mistral's sliding layers:
    a RingCache of min(window + step_tokens - 1, length) slots."""
    _, model, _ = pair
    cache = model.init_cache(3, 10)
    window = getattr(model.config, "sliding_window", None)
    assert isinstance(cache, RingCache if window else KVCache)
    slots = min(window, 10) if window else 10
    assert cache.k.shape[:2] == (2, 3) and cache.k.shape[3] == slots
    assert cache.k.shape == cache.v.shape and cache.index.dtype == jnp.int32
    if window:
        assert model.init_cache(3, 10, step_tokens=3).k.shape[3] == min(window + 2, 10)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_bfloat16_close_to_float32(family, tmp_path):
    hf = _hf_model(family)
    hf.save_pretrained(tmp_path)
    model32, params32, _ = load_checkpoint(tmp_path)
    model16, params16, _ = load_checkpoint(tmp_path, dtype="bfloat16")
    assert model16.dtype == jnp.bfloat16
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params16))
    assert model16.init_cache(1, 4).k.dtype == jnp.bfloat16
    ids, mask = _left_padded([6, 3])
    out16 = np.asarray(logits(model16, params16, ids, mask))
    out32 = np.asarray(logits(model32, params32, ids, mask))
    assert out16.dtype == np.float32 and np.isfinite(out16).all()
    scale = np.abs(out32[mask == 1]).max()
    assert np.abs(out16 - out32)[mask == 1].max() < 0.05 * scale + 0.05


# ------------------------------------------------------------------------------ configs


def test_init_params_random_model_runs():
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=1)
    model = Llama(cfg)
    params = model.init_params(jax.random.key(0))
    assert set(params) == {"embed_tokens", "layers_0", "layers_1", "layers_2", "norm",
                           "lm_head"}
    assert params["layers_0"]["self_attn"]["k_proj"]["kernel"].shape == (16, 4)
    out = logits(model, params, jnp.ones((2, 5), jnp.int32))
    assert out.shape == (2, 5, 64) and bool(jnp.isfinite(out).all())

    gpt = GPT2(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=16))
    gparams = gpt.init_params(jax.random.key(0))
    assert set(gparams) == {"wte", "wpe", "layers_0", "ln_f"}
    assert logits(gpt, gparams, jnp.ones((1, 3), jnp.int32)).shape == (1, 3, 64)


def test_llama_config_round_trip():
    for hf_cfg in (transformers.LlamaConfig(**_SMALL, attention_bias=True),
                   transformers.MistralConfig(**_SMALL, sliding_window=8),
                   transformers.Qwen2Config(**_SMALL, use_sliding_window=True, sliding_window=8,
                                            max_window_layers=1)):
        cfg = LlamaConfig.from_hf(hf_cfg.to_dict())
        assert LlamaConfig.from_hf(cfg.to_hf()) == cfg
    qwen = LlamaConfig.from_hf(transformers.Qwen2Config(
        **_SMALL, use_sliding_window=True, sliding_window=8, max_window_layers=1).to_dict())
    assert (qwen.window(0), qwen.window(1)) == (None, 8)
    assert qwen.qkv_bias and not qwen.o_bias


def test_qwen2_sliding_window_off_by_default():
    d = transformers.Qwen2Config(**_SMALL).to_dict()
    d.update(sliding_window=4, use_sliding_window=False)  # an old-style config.json
    cfg = LlamaConfig.from_hf(d)
    assert cfg.window(0) is None and cfg.window(1) is None


def test_legacy_rope_theta_rope_scaling_and_refusals():
    """Both rope spellings parse (the scaling types themselves: tests/test_rope.py); what is
    not implemented is refused by name."""
    d = transformers.LlamaConfig(**_SMALL).to_dict()
    d.pop("rope_parameters")
    assert LlamaConfig.from_hf({**d, "rope_theta": 1e6}).rope_theta == 1e6
    legacy = LlamaConfig.from_hf({**d, "rope_scaling": {"type": "linear", "factor": 2.0}})
    v5 = LlamaConfig.from_hf({**d, "rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                       "rope_theta": 1e4}})
    assert legacy == v5 and v5.rope_scaling.factor == 2.0
    with pytest.raises(ValueError, match="rope_type 'proportional'"):
        LlamaConfig.from_hf({**d, "rope_parameters": {"rope_type": "proportional"}})
    with pytest.raises(ValueError, match="mrope_section"):
        LlamaConfig.from_hf({**d, "rope_scaling": {"rope_type": "default",
                                                   "mrope_section": [2, 2]}})
    with pytest.raises(ValueError, match="hidden_act"):
        LlamaConfig.from_hf({**d, "hidden_act": "mish"})


def test_gpt2_config_checks():
    base = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4).to_dict()
    cfg = GPT2Config.from_hf({**base, "scale_attn_by_inverse_layer_idx": True})
    assert cfg.attn_scale(1) == pytest.approx(8 ** -0.5 / 2)
    with pytest.raises(ValueError, match="add_cross_attention"):
        GPT2Config.from_hf({**base, "add_cross_attention": True})
    with pytest.raises(ValueError, match="activation_function"):
        GPT2Config.from_hf({**base, "activation_function": "mish"})
    with pytest.raises(ValueError, match="reorder_and_upcast_attn"):
        GPT2Config.from_hf({**base, "reorder_and_upcast_attn": "yes"})
    assert GPT2Config.from_hf(cfg.to_hf()) == cfg


def test_gpt2_inverse_layer_idx_scaling_matches_transformers(tmp_path):
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32,
        scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True)).eval()
    hf.save_pretrained(tmp_path)
    model, params, _ = load_checkpoint(tmp_path)
    ids, mask = _left_padded([5, 3])
    ours = np.asarray(logits(model, params, ids, mask))
    np.testing.assert_allclose(ours[mask == 1], _hf_logits(hf, ids, mask)[mask == 1],
                               atol=1e-4, rtol=0)


# ------------------------------------------------------------ per-row cache positions


def _prefill(model, params, ids: np.ndarray, mask: np.ndarray, length: int,
             step_tokens: int = 1):
    """Prefill ``ids`` (mask ``mask``) into a fresh cache of ``length`` slots."""
    b, p = ids.shape
    full = np.zeros((b, length), np.int32)
    full[:, :p] = mask
    cache = model.init_cache(b, length, step_tokens=step_tokens)
    _, cache = jax.jit(model.apply)(params, ids, positions_from_mask(jnp.asarray(mask)),
                                    cache, full)
    return cache, full


def test_vector_index_with_equal_entries_matches_scalar(pair):
    """A [batch] index whose entries are equal decodes exactly as the scalar index."""
    _, model, params = pair
    ids, mask = _left_padded([5, 2], seed=3)
    b, p = ids.shape
    new = np.random.RandomState(4).randint(0, VOCAB, (b, 3)).astype(np.int32)
    cache, full = _prefill(model, params, ids, mask, p + 4)
    pos = np.asarray(positions_from_mask(jnp.asarray(mask)))[:, -1:] + np.arange(1, 4)
    full[:, p:p + 3] = 1
    apply = jax.jit(model.apply)
    scalar, vector = cache, model.rewind_cache(cache, jnp.full((b,), p, jnp.int32))
    for lo, hi in [(0, 2), (2, 3)]:  # a 2-token chunk, then one token
        out_s, scalar = apply(params, new[:, lo:hi], pos[:, lo:hi], scalar, full)
        out_v, vector = apply(params, new[:, lo:hi], pos[:, lo:hi], vector, full)
        np.testing.assert_allclose(np.asarray(out_v), np.asarray(out_s), atol=1e-6, rtol=0)
    assert scalar.index.shape == () and vector.index.shape == (b,)
    np.testing.assert_array_equal(np.asarray(vector.index), [p + 3] * b)
    np.testing.assert_allclose(np.asarray(vector.k), np.asarray(scalar.k), atol=1e-6, rtol=0)


def test_rows_at_different_slots_match_each_row_alone(pair):
    """Row 0 writes at slots 5.., row 1 at 7..: each row's logits equal the row run alone."""
    _, model, params = pair
    rs = np.random.RandomState(5)
    lengths, steps = [5, 7], [2, 1]
    seqs = [rs.randint(0, VOCAB, n + sum(steps)).astype(np.int32) for n in lengths]
    ids = np.zeros((2, 7), np.int32)  # right-padded prefill; row 0's slots 5, 6 are junk
    mask = np.zeros((2, 7), np.int32)
    for row, n in enumerate(lengths):
        ids[row, :n], mask[row, :n] = seqs[row][:n], 1
    # a sliding window's ring must survive rewinding row 0 by 2 slots, then a 2-token call
    cache, full = _prefill(model, params, ids, mask, 11, step_tokens=3)
    cache = model.rewind_cache(cache, jnp.asarray(lengths, jnp.int32))  # index [5, 7]
    alone = [np.asarray(logits(model, params, s[None]))[0] for s in seqs]
    at = np.asarray(lengths)
    apply = jax.jit(model.apply)
    for t in steps:
        cols = at[:, None] + np.arange(t)  # [2, t]: each row's new slots == positions
        full[np.arange(2)[:, None], cols] = 1
        tokens = np.stack([seqs[r][cols[r]] for r in range(2)])
        out, cache = apply(params, tokens, cols.astype(np.int32), cache, full)
        for r in range(2):
            np.testing.assert_allclose(np.asarray(out)[r], alone[r][cols[r]], atol=1e-4, rtol=0)
        at = at + t
        np.testing.assert_array_equal(np.asarray(cache.index), at)


def test_reorder_and_rewind_cache():
    model = Llama(LlamaConfig(**_SMALL))
    params = model.init_params(jax.random.key(0))
    ids, mask = _left_padded([4, 4], seed=6)
    cache, full = _prefill(model, params, ids, mask, 6)
    rows = jnp.asarray([1, 0, 1], jnp.int32)
    moved = model.reorder_cache(cache, rows)
    np.testing.assert_array_equal(np.asarray(moved.k), np.asarray(cache.k)[:, [1, 0, 1]])
    np.testing.assert_array_equal(np.asarray(moved.v), np.asarray(cache.v)[:, [1, 0, 1]])
    assert moved.index.shape == () and int(moved.index) == 4
    full[:, 4] = 1
    tok, pos = np.asarray([[7], [9]], np.int32), np.full((2, 1), 4, np.int32)
    ref, _ = model.apply(params, tok, pos, cache, full)
    out, _ = model.apply(params, tok[[1, 0, 1]], pos[[1, 0, 1]], moved, full[[1, 0, 1]])
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref)[[1, 0, 1]], atol=1e-6, rtol=0)

    vec = model.rewind_cache(cache, jnp.asarray([2, 3]))
    assert vec.index.dtype == jnp.int32 and vec.k is cache.k
    np.testing.assert_array_equal(np.asarray(model.reorder_cache(vec, rows).index), [3, 2, 3])
    assert model.rewind_cache(vec, 1).index.shape == ()
    with pytest.raises(ValueError, match=r"scalar or a \[2\] vector"):
        model.rewind_cache(cache, jnp.zeros((3,), jnp.int32))
