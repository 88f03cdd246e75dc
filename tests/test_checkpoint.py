"""Loading and saving Hugging Face-layout checkpoints."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from jaxgen.models import (
    GPT2,
    GPT2Config,
    Llama,
    LlamaConfig,
    load_checkpoint,
    logits,
    save_checkpoint,
)

VOCAB = 128


def _hf_llama(**kw) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, **kw)).eval()


def _hf_gpt2() -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    _hf_llama().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt2")
    _hf_gpt2().save_pretrained(path)
    return path


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _ids():
    ids = np.array([[5, 17, 99, 3, 64], [0, 0, 7, 8, 9]], np.int32)
    mask = np.array([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]], np.int32)
    return ids, mask


def _torch_logits(hf, ids):
    with torch.no_grad():
        return hf(input_ids=torch.tensor(ids, dtype=torch.long)).logits.numpy()


def test_load_returns_model_params_generation_config(llama_dir):
    model, params, gen = load_checkpoint(llama_dir)
    assert isinstance(model, Llama) and model.dtype == jnp.float32
    assert isinstance(gen, dict) and gen["eos_token_id"] == 2
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def test_generation_config_absent_is_none(llama_dir, tmp_path):
    path = _copy(llama_dir, tmp_path / "c")
    (path / "generation_config.json").unlink()
    assert load_checkpoint(path)[2] is None


def test_sharded_checkpoint(llama_dir, tmp_path):
    hf = _hf_llama()
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    model, params, _ = load_checkpoint(tmp_path)
    _, ref_params, _ = load_checkpoint(llama_dir)
    jax.tree.map(np.testing.assert_array_equal, params, ref_params)
    ids, _ = _ids()
    np.testing.assert_allclose(np.asarray(logits(model, params, ids)), _torch_logits(hf, ids),
                               atol=1e-4, rtol=0)


def test_gpt2_with_and_without_transformer_prefix(gpt2_dir, tmp_path):
    model, params, _ = load_checkpoint(gpt2_dir)
    assert isinstance(model, GPT2)
    path = _copy(gpt2_dir, tmp_path / "c")
    file = path / "model.safetensors"
    tensors = load_file(file)
    prefixed = any(k.startswith("transformer.") for k in tensors)
    renamed = {(k.removeprefix("transformer.") if prefixed else "transformer." + k): v
               for k, v in tensors.items()}
    save_file(renamed, file, metadata={"format": "pt"})
    _, params2, _ = load_checkpoint(path)
    jax.tree.map(np.testing.assert_array_equal, params, params2)


def test_missing_tensor_names_it(llama_dir, tmp_path):
    path = _copy(llama_dir, tmp_path / "c")
    file = path / "model.safetensors"
    tensors = load_file(file)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*\(64, 32\)"):
        load_checkpoint(path)


def test_wrong_shape_names_tensor_and_both_shapes(llama_dir, tmp_path):
    path = _copy(llama_dir, tmp_path / "c")
    file = path / "model.safetensors"
    tensors = load_file(file)
    tensors["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 32), np.float32)
    save_file(tensors, file, metadata={"format": "pt"})
    with pytest.raises(ValueError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert "model.layers.0.self_attn.k_proj.weight" in msg
    assert "expected (16, 32)" in msg and "found (8, 32)" in msg


def test_missing_directory_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(tmp_path)


def test_unknown_architecture_lists_supported(llama_dir, tmp_path):
    path = _copy(llama_dir, tmp_path / "c")
    config = json.loads((path / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="BertForMaskedLM.*GPT2LMHeadModel.*LlamaForCausalLM"):
        load_checkpoint(path)


def test_bad_dtype(llama_dir):
    with pytest.raises(ValueError, match="floating"):
        load_checkpoint(llama_dir, dtype="int32")


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_save_round_trip_loads_in_transformers(kind, tmp_path):
    if kind == "gpt2":
        model = GPT2(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=32))
    else:
        model = Llama(LlamaConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, model_type=kind,
            qkv_bias=kind == "qwen2", tie_word_embeddings=kind == "qwen2"))
    params = model.init_params(jax.random.key(1))
    params = jax.tree.map(  # non-trivial norms and biases
        lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), params)
    save_checkpoint(model, params, tmp_path, generation_config={"eos_token_id": 3})
    model2, params2, gen = load_checkpoint(tmp_path)
    assert model2 == model and gen == {"eos_token_id": 3}
    jax.tree.map(np.testing.assert_array_equal, params, params2)

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids, mask = _ids()
    ours = np.asarray(logits(model, params, ids[:1]))
    np.testing.assert_allclose(ours, _torch_logits(hf, ids[:1]), atol=1e-4, rtol=0)


def test_save_bfloat16(tmp_path):
    model = Llama(LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=1, num_attention_heads=4), dtype="bfloat16")
    params = model.init_params(jax.random.key(0))
    save_checkpoint(model, params, tmp_path)
    model2, params2, _ = load_checkpoint(tmp_path, dtype=jnp.bfloat16)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    jax.tree.map(np.testing.assert_array_equal, params, params2)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert hf.model.embed_tokens.weight.dtype == torch.bfloat16
