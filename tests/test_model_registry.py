"""The model-family registry: a new family is one registration, no checkpoint/sharding edits."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import numpy as np
import pytest
import transformers
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P
from safetensors.numpy import load_file

from jaxgen import sharding as S
from jaxgen.models import (
    GPT2,
    GPT2Config,
    Llama,
    LlamaConfig,
    load_checkpoint,
    logits,
    registry,
    save_checkpoint,
)
from jaxgen.models.checkpoint import model_from_hf_config
from jaxgen.models.registry import Family, TensorNames

_SMALL = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToyConfig(LlamaConfig):
    """A made-up family: Llama's network under another architecture name and tensor names."""

    def to_hf(self) -> dict[str, Any]:
        return {**super().to_hf(), "architectures": ["ToyLMForCausalLM"], "model_type": "toylm"}


def _toy_family() -> Family:
    return Family(
        name="toylm", architectures={"ToyLMForCausalLM": "toylm"}, config=ToyConfig,
        parse_config=lambda d: ToyConfig.from_hf({**d, "model_type": "llama"}), model=Llama,
        tensors=TensorNames(prefix="decoder.", layers="blocks"),
        rules=((r"kernel$", P(None, "model")),), kv_heads_field="num_key_value_heads")


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> Family:
    """The toy family registered for one test (the registry is restored afterwards)."""
    monkeypatch.setattr(registry, "_FAMILIES", dict(registry._FAMILIES))
    return registry.register(_toy_family())


def test_toy_family_saves_and_loads_through_checkpoint_io(toy, tmp_path):
    model = Llama(ToyConfig(**_SMALL))
    params = model.init_params(jax.random.key(0))
    save_checkpoint(model, params, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["ToyLMForCausalLM"]
    names = set(load_file(tmp_path / "model.safetensors"))
    assert "decoder.blocks.1.self_attn.q_proj.weight" in names and "lm_head.weight" in names
    assert all(n.startswith("decoder.") for n in names - {"lm_head.weight"})
    model2, params2, _ = load_checkpoint(tmp_path)
    assert model2 == model and registry.family_of(model2) is toy
    jax.tree.map(np.testing.assert_array_equal, params, params2)
    ids = np.array([[1, 2, 3, 4]], np.int32)
    np.testing.assert_array_equal(np.asarray(logits(model2, params2, ids)),
                                  np.asarray(logits(model, params, ids)))
    # sharding asks the same registry
    assert S.rules_for(model) == [(r"kernel$", P(None, "model"))]
    with pytest.raises(ValueError, match="config.num_key_value_heads=2"):
        S.check_model(model, AbstractMesh((1, 4), ("data", "model")))


def test_lookups():
    llama = registry.family_for_config({"architectures": ["MistralForCausalLM"]})
    assert llama is registry.family_for_config({"model_type": "qwen2"})
    assert set(llama.model_types) == {"llama", "mistral", "qwen2"}
    assert registry.family_of(Llama(LlamaConfig(**_SMALL))) is llama
    gpt2 = registry.family_of(GPT2(GPT2Config(n_layer=1)))
    assert gpt2.name == "gpt2" and gpt2.kv_heads(GPT2Config(n_head=6, n_embd=12)) == 6
    assert registry.family_of(object()) is None
    S.check_model(object(), AbstractMesh((1, 4), ("data", "model")))  # no family: no check
    # the architecture decides the model_type given to the parser
    cfg = llama.config_from_hf({**LlamaConfig(**_SMALL).to_hf(),
                                "architectures": ["MistralForCausalLM"]})
    assert cfg.model_type == "mistral"


def test_unknown_architecture_names_it_and_lists_supported(toy):
    for config, found in [({"architectures": ["BertForMaskedLM"]}, "BertForMaskedLM"),
                          ({"model_type": "bert"}, "model_type='bert'")]:
        with pytest.raises(ValueError) as err:
            registry.family_for_config(config)
        msg = str(err.value)
        assert found in msg and "LlamaForCausalLM" in msg and "ToyLMForCausalLM" in msg


def test_register_refuses_clashes(toy):
    with pytest.raises(ValueError, match="ToyLMForCausalLM.*already registered.*toylm"):
        registry.register(dataclasses.replace(toy, name="other", config=dict))
    with pytest.raises(ValueError, match="ToyConfig"):
        registry.register(dataclasses.replace(toy, name="other", architectures={"X": "x"}))
    with pytest.raises(ValueError, match="vocab_rules"):
        dataclasses.replace(toy, vocab_rules=(r"nope$",))


def test_tensor_names():
    names = TensorNames(prefix="transformer.", prefix_optional=True, layers="h",
                        transpose_kernels=False)
    assert names.hf_name(("layers_3", "attn", "c_attn", "kernel")) == (
        "transformer.h.3.attn.c_attn.weight", False)
    assert names.hf_name(("ln_f", "bias"), prefix="") == ("ln_f.bias", False)
    assert names.hf_name(("lm_head", "kernel")) == ("lm_head.weight", True)
    assert names.prefix_of(["wte.weight"]) == ""
    assert names.prefix_of(["transformer.wte.weight"]) == "transformer."
    assert TensorNames().prefix_of(["embed_tokens.weight"]) == "model."
    assert TensorNames().hf_name(("layers_0", "mlp", "up_proj", "kernel")) == (
        "model.layers.0.mlp.up_proj.weight", True)


# -------------------------------------------------- refused HF attributes (every family)


def _config(cls: Any, **kw: Any) -> dict[str, Any]:
    d = cls(**_SMALL).to_dict()
    d.update(kw)
    return d


REFUSED = [
    (_config(transformers.LlamaConfig, architectures=["MambaForCausalLM"]), "MambaForCausalLM"),
    (_config(transformers.LlamaConfig, sliding_window=8), "sliding_window"),
    (_config(transformers.LlamaConfig, hidden_act="mish"), "hidden_act"),
    (_config(transformers.LlamaConfig, rope_parameters={"rope_type": "default",
                                                        "partial_rotary_factor": 0.5}),
     "partial_rotary_factor"),
    (_config(transformers.LlamaConfig, rope_parameters={"rope_type": "llama3", "factor": 8.0}),
     "low_freq_factor"),
    (_config(transformers.LlamaConfig, rope_scaling={"type": "mrope", "mrope_section": [1]}),
     "mrope_section"),
    (_config(transformers.Qwen2Config, layer_types=["full_attention", "chunked_attention"]),
     "layer_types"),
    (_config(transformers.MistralConfig, attention_bias=True), "attention_bias"),
    (_config(transformers.Qwen2Config, mlp_bias=True), "mlp_bias"),
    (_config(transformers.Qwen3Config, mlp_bias=True), "mlp_bias"),
    (_config(transformers.Qwen3Config, layer_types=["full_attention", "local"]), "layer_types"),
    (_config(transformers.Gemma2Config, use_bidirectional_attention=True),
     "use_bidirectional_attention"),
    (_config(transformers.Gemma2Config, hidden_activation="mish"), "hidden_activation"),
    (_config(transformers.Gemma3TextConfig, layer_types=["sliding_attention", "chunked"]),
     "layer_types"),
    (_config(transformers.Phi3Config, rope_parameters={"rope_type": "linear", "factor": 2.0}),
     "rope_type 'linear'"),
    (_config(transformers.Phi3Config, attention_bias=True), "attention_bias"),
    (_config(transformers.Olmo2Config, sliding_window=4), "sliding_window"),
    (_config(transformers.SmolLM3Config, rope_parameters={"rope_type": "unknown"}),
     "rope_type 'unknown'"),
]


@pytest.mark.parametrize(("config", "named"), REFUSED, ids=[n for _, n in REFUSED])
def test_refused_attributes_are_named(config, named):
    if not config.get("architectures"):
        config["architectures"] = [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                                    "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                                    "gemma2": "Gemma2ForCausalLM",
                                    "gemma3_text": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM",
                                    "olmo2": "Olmo2ForCausalLM",
                                    "smollm3": "SmolLM3ForCausalLM"}[config["model_type"]]]
    with pytest.raises(ValueError, match=named.replace("'", ".")):
        model_from_hf_config(config)


def test_every_family_config_parses_from_transformers_defaults():
    """transformers' default config of each family parses (no attribute refused)."""
    for cls in (transformers.Qwen3Config, transformers.Gemma2Config,
                transformers.Gemma3TextConfig, transformers.Phi3Config,
                transformers.Olmo2Config, transformers.SmolLM3Config,
                transformers.MistralConfig, transformers.Qwen2Config):
        d = cls().to_dict()
        d["architectures"] = None
        model = model_from_hf_config(d)
        assert model.config.num_hidden_layers == d["num_hidden_layers"]
