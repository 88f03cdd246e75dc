"""RoPE variants (`jaxgen.models.rope`) against transformers' ``modeling_rope_utils``:
the same float32 inverse frequencies and attention factors, both config spellings, the
per-call ``dynamic`` / ``longrope`` choices inside jit without recompiling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS as HF_INIT

from jaxgen.models.rope import (
    ROPE_INIT_FUNCTIONS,
    Rope,
    RopeScaling,
    apply_rope,
    dynamic_inv_freq,
    rope_from_hf,
)

HEAD_DIM, MPE = 16, 64
_LONG = dict(short_factor=[1.0 + 0.1 * i for i in range(8)],
             long_factor=[2.0 + 0.5 * i for i in range(8)])
PARAMS = {
    "linear": dict(rope_type="linear", factor=2.5),
    "dynamic": dict(rope_type="dynamic", factor=3.0),
    "yarn": dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=16),
    "yarn_mscale": dict(rope_type="yarn", factor=8.0, original_max_position_embeddings=16,
                        mscale=0.707, mscale_all_dim=1.0, beta_fast=16, beta_slow=2,
                        truncate=False),
    "yarn_attention_factor": dict(rope_type="yarn", factor=2.0, attention_factor=0.9,
                                  original_max_position_embeddings=32),
    "longrope": dict(rope_type="longrope", original_max_position_embeddings=16, **_LONG),
    "longrope_factor": dict(rope_type="longrope", original_max_position_embeddings=16,
                            factor=3.0, **_LONG),
    "llama3": dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                   original_max_position_embeddings=16),
}


def _hf_config(rope: dict, **kw) -> transformers.LlamaConfig:
    return transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, head_dim=HEAD_DIM,
                                    max_position_embeddings=MPE,
                                    rope_parameters={**rope, "rope_theta": 500.0}, **kw)


def _rope(config: dict) -> Rope:
    s = rope_from_hf(config)
    return Rope(head_dim=HEAD_DIM, theta=s.theta, scaling=s.scaling,
                partial_rotary_factor=s.partial_rotary_factor, max_position_embeddings=MPE)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_init_functions_equal_transformers(name):
    """Bit-equal float32 inverse frequencies, equal attention factors (mscale)."""
    config = _hf_config(PARAMS[name])
    kind = PARAMS[name]["rope_type"]
    inv, factor = HF_INIT[kind](config)
    ours, our_factor = _rope(config.to_dict()).init
    np.testing.assert_array_equal(ours, inv.numpy())
    assert our_factor == pytest.approx(factor, rel=1e-12)
    assert set(ROPE_INIT_FUNCTIONS) >= set(HF_INIT) - {"proportional"}


def test_default_and_partial_rotary_equal_transformers():
    phi = transformers.Phi3Config(hidden_size=64, num_attention_heads=4,
                                  rope_parameters={"rope_type": "default", "rope_theta": 300.0,
                                                   "partial_rotary_factor": 0.5})
    inv, _ = transformers.models.phi3.modeling_phi3.Phi3RotaryEmbedding \
        .compute_default_rope_parameters(phi)
    rope = _rope(phi.to_dict())
    assert rope.rotary_dim == 8
    np.testing.assert_array_equal(rope.init[0], inv.numpy())


@pytest.mark.parametrize("seq_len", [10, 64, 65, 100, 1000])
def test_dynamic_follows_the_longest_row_of_the_call(seq_len):
    """Traced dynamic NTK frequencies == transformers' for a tensor seq_len; at or below
    max_position_embeddings the initial table."""
    config = _hf_config(PARAMS["dynamic"])
    rope = _rope(config.to_dict())
    hf_inv, _ = HF_INIT["dynamic"](config, seq_len=torch.tensor(seq_len))
    grown = np.asarray(dynamic_inv_freq(HEAD_DIM, rope.params(), jnp.asarray(seq_len)))
    np.testing.assert_allclose(grown, hf_inv.numpy(), rtol=1e-6, atol=0)  # XLA vs torch pow
    positions = jnp.asarray([[0, seq_len - 1], [0, 3]])  # the longest row decides
    used = np.asarray(rope.inv_freq(positions))
    np.testing.assert_array_equal(used, rope.init[0] if seq_len <= MPE else grown)


def test_longrope_switches_past_original_max_position_embeddings():
    config = _hf_config(PARAMS["longrope"])
    rope = _rope(config.to_dict())
    long_inv, _ = HF_INIT["longrope"](config, seq_len=17)
    np.testing.assert_array_equal(rope.long_inv_freq, long_inv.numpy())
    short = np.asarray(rope.inv_freq(jnp.asarray([[15]])))   # seq_len 16: short
    long = np.asarray(rope.inv_freq(jnp.asarray([[2], [16]])))  # seq_len 17: long
    np.testing.assert_array_equal(short, rope.init[0])
    np.testing.assert_array_equal(long, rope.long_inv_freq)


def test_positions_stay_traced_no_recompile(count_compiles):
    rope = _rope(_hf_config(PARAMS["dynamic"]).to_dict())
    tables = jax.jit(lambda pos: rope.tables(pos, jnp.float32))
    tables(jnp.full((2, 3), 5, jnp.int32))
    with count_compiles() as c:
        for p in (40, 63, 64, 200, 5000):  # below and above max_position_embeddings
            tables(jnp.full((2, 3), p, jnp.int32))
    assert c.count == 0


# ----------------------------------------------------------------------------- configs


def test_both_spellings_parse_alike():
    v5 = {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6,
                              "original_max_position_embeddings": 32}}
    legacy = {"rope_theta": 1e6, "rope_scaling": {"type": "yarn", "factor": 4.0,
                                                  "original_max_position_embeddings": 32}}
    assert rope_from_hf(v5) == rope_from_hf(legacy)
    assert rope_from_hf(v5).scaling == RopeScaling(rope_type="yarn", factor=4.0,
                                                   original_max_position_embeddings=32)
    # original_max_position_embeddings defaults to max_position_embeddings
    assert rope_from_hf({"max_position_embeddings": 77, "rope_scaling": {
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0}}
    ).scaling.original_max_position_embeddings == 77
    # a top-level original_max_position_embeddings wins for a flat dict (Phi-3)
    assert rope_from_hf({"original_max_position_embeddings": 5, "rope_parameters": {
        "rope_type": "longrope", "original_max_position_embeddings": 9, **_LONG}}
    ).scaling.original_max_position_embeddings == 5
    assert rope_from_hf({"partial_rotary_factor": 0.75}).partial_rotary_factor == 0.75
    assert rope_from_hf({}) == (10000.0, None, 1.0)


def test_per_layer_type_parameters():
    """Gemma 3: v5 rope_parameters keyed by layer type; 4.x rope_theta + rope_scaling for
    the global layers and rope_local_base_freq for the sliding ones."""
    v5 = {"rope_parameters": {
        "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}}
    legacy = {"rope_theta": 1e6, "rope_scaling": {"rope_type": "linear", "factor": 8.0},
              "rope_local_base_freq": 1e4}
    for d in (v5, legacy):
        full = rope_from_hf(d, layer_type="full_attention", default_theta=1e6)
        local = rope_from_hf(d, layer_type="sliding_attention", legacy_theta_key=
                             "rope_local_base_freq", legacy_scaling=False)
        assert full == (1e6, RopeScaling(rope_type="linear", factor=8.0), 1.0)
        assert local == (1e4, None, 1.0)


def test_apply_rope_partial_equals_transformers():
    from transformers.models.phi3.modeling_phi3 import apply_rotary_pos_emb

    rng = np.random.RandomState(0)
    q, k = rng.randn(2, 5, 4, 16).astype(np.float32), rng.randn(2, 5, 2, 16).astype(np.float32)
    rope = Rope(head_dim=16, theta=100.0, partial_rotary_factor=0.5)
    positions = jnp.asarray(np.tile(np.arange(5), (2, 1)))
    cos, sin = rope.tables(positions, jnp.float32)  # [b, t, 1, 8]
    hq, hk = apply_rotary_pos_emb(torch.tensor(q).transpose(1, 2), torch.tensor(k).transpose(1, 2),
                                  torch.tensor(np.asarray(cos)[:, :, 0]),
                                  torch.tensor(np.asarray(sin)[:, :, 0]))
    np.testing.assert_allclose(np.asarray(apply_rope(jnp.asarray(q), cos, sin)),
                               hq.transpose(1, 2).numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(apply_rope(jnp.asarray(k), cos, sin)),
                               hk.transpose(1, 2).numpy(), atol=1e-6)


@pytest.mark.parametrize(("params", "named"), [
    ({"rope_type": "proportional"}, "rope_type 'proportional'"),
    ({"rope_type": "su_scaled_typo"}, "rope_type 'su_scaled_typo'"),
    ({"rope_type": "linear"}, "factor"),
    ({"rope_type": "longrope", "short_factor": [1.0]}, "long_factor"),
    ({"rope_type": "default", "mrope_section": [2]}, "mrope_section"),
])
def test_bad_rope_parameters_are_named(params, named):
    with pytest.raises(ValueError, match=named.replace("'", ".")):
        rope_from_hf({"rope_parameters": params})
