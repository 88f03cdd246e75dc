"""GGUF loading: small files written like llama.cpp writes them, against transformers'
own GGUF loader; broken files; and the real SmolLM2 / Gemma 3 files (marked slow)."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch
import transformers
from gguf import GGMLQuantizationType as QT

import jaxgen
from jaxgen.models import checkpoint, logits
from jaxgen.models.gguf import (
    SUPPORTED_TYPES,
    generation_config,
    gguf_names,
    hf_config,
    hf_tensor,
    read_gguf,
)
from tests.gguf_files import (
    assert_same_config,
    finish,
    gpt2_vocab,
    sentencepiece_vocab,
    vocab_size,
    write_gguf,
)

TEXTS = ["Hello world", "The quick brown fox jumps over the lazy dog.", " leading space",
         "héllo wörld, ünïcode 日本語 🙂", "tabs\tand   runs of    spaces\n\n\nnewlines",
         "<|im_start|>user\nHi!<|im_end|>\n", "<think>hmm</think>", "1234567 + 89 = ?", ""]
IDS = np.array([[1, 5, 9, 30, 100, 7, 64, 3]])


def _hf_llama(vocab: int, **kw) -> transformers.PreTrainedModel:
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
        initializer_range=0.1, rope_theta=500.0, **kw)).eval()


def _hf_logits(path, ids=IDS) -> np.ndarray:
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent),
                                                              gguf_file=path.name).eval()
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.numpy()


def _flat(params) -> dict:
    import jax

    return {tuple(k.key for k in p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(params)[0]}


@pytest.fixture(scope="module")
def vocab():
    return gpt2_vocab()


@pytest.fixture(scope="module")
def llama(vocab):
    return _hf_llama(vocab_size(vocab))


@pytest.fixture(scope="module")
def llama_file(llama, vocab, tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("gguf") / "llama.gguf", "llama", llama,
                      vocab=vocab)


# ------------------------------------------------------------------ small files


@pytest.mark.parametrize("qtype", [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1,
                                   QT.Q5_0])
def test_llama_logits_match_transformers(llama, vocab, qtype, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", "llama", llama, qtype=qtype, vocab=vocab)
    lm = jaxgen.load(path)
    np.testing.assert_allclose(np.asarray(logits(lm.model, lm.params, IDS)), _hf_logits(path),
                               atol=1e-5, rtol=0)


def test_block_wise_placement_is_exact(llama_file, llama, monkeypatch, tmp_path):
    """Tensors above `BLOCK_ELEMENTS` go in blocks of rows (the last one end-aligned), for
    GGUF and safetensors, plain and transposed: the same parameters."""
    whole = _flat(jaxgen.load(llama_file).params)
    llama.save_pretrained(tmp_path)
    whole_st = _flat(jaxgen.load(tmp_path).params)
    monkeypatch.setattr(checkpoint, "BLOCK_ELEMENTS", 3 * 64 + 5)
    for got, ref in [(jaxgen.load(llama_file).params, whole),
                     (jaxgen.load(tmp_path).params, whole_st)]:
        got = _flat(got)
        assert got.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k], err_msg=str(k))


def test_bfloat16(llama_file):
    import jax.numpy as jnp

    lm32, lm16 = jaxgen.load(llama_file), jaxgen.load(llama_file, dtype="bfloat16")
    f32, bf16 = _flat(lm32.params), _flat(lm16.params)
    for k in f32:
        assert bf16[k].dtype == jnp.bfloat16
        np.testing.assert_array_equal(bf16[k], f32[k].astype(jnp.bfloat16))


@pytest.mark.parametrize("qtype", sorted(SUPPORTED_TYPES, key=lambda t: t.value))
def test_every_supported_type_dequantizes_by_rows(qtype, tmp_path):
    """Random blocks of each type: any row range equals gguf's own dequantization."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rows, cols = 6, 2 * max(block, 32)
    raw = np.random.default_rng(0).integers(0, 256, (rows, cols // block * size), np.uint8)
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    if qtype in (QT.F32, QT.F16):
        w.add_tensor("x.weight", raw.view(np.float32 if qtype == QT.F32 else np.float16))
    else:
        w.add_tensor("x.weight", raw, raw_dtype=qtype)
    finish(w)
    file = read_gguf(tmp_path / "t.gguf")
    assert file.tensors["x.weight"].shape == (rows, cols)
    full = gguf.quants.dequantize(raw, qtype)
    np.testing.assert_array_equal(file.rows("x.weight", 0, rows), full)
    np.testing.assert_array_equal(file.rows("x.weight", 2, 5), full[2:5])


def test_header_matches_gguf_reader(llama_file):
    ours, ref = read_gguf(llama_file), gguf.GGUFReader(llama_file)
    assert set(ours.metadata) == set(ref.fields) - {"GGUF.version", "GGUF.tensor_count",
                                                    "GGUF.kv_count"}
    for key, value in ours.metadata.items():
        assert value == ref.fields[key].contents(), key
    for t in ref.tensors:
        mine = ours.tensors[t.name]
        assert (mine.shape, mine.qtype, mine.offset, mine.nbytes) == (
            tuple(int(d) for d in reversed(t.shape)), t.tensor_type, t.data_offset, t.n_bytes)


@pytest.mark.parametrize("make_vocab", [gpt2_vocab, sentencepiece_vocab])
def test_tokenizer_matches_transformers(make_vocab, tmp_path):
    vocab = make_vocab()
    path = write_gguf(tmp_path / "t.gguf", "llama", _hf_llama(vocab_size(vocab)), vocab=vocab)
    ours = jaxgen.load(path).tokenizer
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == ref(text)["input_ids"], text
        for skip in (False, True):
            assert ours.decode(ids, skip) == ref.decode(ids, skip_special_tokens=skip), text
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (
        ref.bos_token_id, ref.eos_token_id, ref.pad_token_id if ref.pad_token_id is not None
        else ref.eos_token_id)


_SIZE = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_key_value_heads=2,
             num_attention_heads=4, max_position_embeddings=64, initializer_range=0.1)
# transformers reads no head_dim from qwen2/qwen3 GGUFs (its default is 128 for Qwen3), and
# gemma needs query_pre_attn_scalar = head_dim (the file does not say): sizes that agree.
_TINY = {
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        **_SIZE, num_hidden_layers=2, tie_word_embeddings=True)),
    "qwen3": lambda: transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        **_SIZE, num_hidden_layers=2, head_dim=128)),
    "gemma2": lambda: transformers.Gemma2ForCausalLM(transformers.Gemma2Config(
        **_SIZE, num_hidden_layers=3, head_dim=256, sliding_window=8)),
    "gemma3": lambda: transformers.Gemma3ForCausalLM(transformers.Gemma3TextConfig(
        **_SIZE, num_hidden_layers=7, head_dim=256, sliding_window=8, rope_theta=1e6)),
}


def _tiny(arch: str) -> transformers.PreTrainedModel:
    """A small random transformers model of ``arch`` with non-trivial norms and biases
    (so the Gemma ``w + 1`` offset and a bias mix-up show)."""
    torch.manual_seed(0)
    model = _TINY[arch]().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".bias"):
                p.normal_(0, 0.5)
    return model


@pytest.mark.parametrize("arch", sorted(_TINY))
def test_family_config_logits_match_transformers(arch, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", arch, _tiny(arch), qtype=QT.Q8_0)
    assert_same_config(hf_config(read_gguf(path)), transformers.AutoConfig.from_pretrained(
        str(tmp_path), gguf_file=path.name))
    lm = jaxgen.load(path)
    ids = np.tile(IDS % 128, (1, 2))  # 16 tokens: past the sliding windows of 8
    np.testing.assert_allclose(np.asarray(logits(lm.model, lm.params, ids)),
                               _hf_logits(path, ids), atol=1e-5, rtol=0)


def test_gemma3_tensors_match_transformers(tmp_path):
    """The HF-named tensors (q/k norms and all norms un-offset) as transformers has them."""
    path = write_gguf(tmp_path / "g.gguf", "gemma3", _tiny("gemma3"), qtype=QT.Q8_0)
    file = read_gguf(path)
    config = hf_config(file)
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path),
                                                               gguf_file=path.name)
    state = {k: v.numpy() for k, v in loaded.state_dict().items() if k != "lm_head.weight"}
    names = gguf_names(file, list(state), config["num_hidden_layers"])
    assert set(names.values()) == set(file.tensors)
    for hf_name, expected in state.items():
        got = hf_tensor(file, names[hf_name], config)(0, expected.shape[0])
        np.testing.assert_array_equal(got.reshape(expected.shape), expected, err_msg=hf_name)


def test_generation_config_joins_end_of_turn_ids(llama, tmp_path):
    vocab = {**gpt2_vocab(), "tokenizer.ggml.eot_token_id": (1, gguf.GGUFValueType.UINT32)}
    file = read_gguf(write_gguf(tmp_path / "m.gguf", "llama", llama, vocab=vocab))
    assert generation_config(file) == {"eos_token_id": [2, 1], "bos_token_id": 1,
                                       "pad_token_id": 2}


# ------------------------------------------------------------------ bad input


def test_unsupported_type_names_tensor_and_type(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "q.gguf"), "llama")
    w.add_tensor("blk.0.attn_q.weight", np.zeros((4, 292), np.uint8), raw_dtype=QT.Q8_K)
    finish(w)
    with pytest.raises(ValueError, match=r"'blk\.0\.attn_q\.weight'.*Q8_K.*supported.*Q4_K"):
        jaxgen.load(tmp_path / "q.gguf")


def test_truncated_file(llama_file, tmp_path):
    data = llama_file.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"truncated GGUF file, tensor '[\w.]+' ends"):
        jaxgen.load(tmp_path / "cut.gguf")
    (tmp_path / "head.gguf").write_bytes(data[:2000])
    with pytest.raises(ValueError, match="truncated or corrupt GGUF header"):
        jaxgen.load(tmp_path / "head.gguf")


def test_unknown_architecture_lists_supported(tmp_path):
    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "mamba")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    finish(w)
    with pytest.raises(ValueError, match=r"architecture 'mamba'.*supported.*'gemma3'.*'llama'"):
        jaxgen.load(path)


def test_wrong_shape_names_tensor_and_shapes(llama, tmp_path):
    bad = {"blk.0.attn_k.weight": np.zeros((16, 64), np.float32)}
    path = write_gguf(tmp_path / "m.gguf", "llama", llama, replace=bad)
    with pytest.raises(ValueError, match=r"blk\.0\.attn_k\.weight \(model\.layers\.0\."
                       r"self_attn\.k_proj\.weight\).*expected \(32, 64\), found \(16, 64"):
        jaxgen.load(path)


def test_missing_tensor_and_not_gguf(llama, tmp_path):
    path = write_gguf(tmp_path / "m.gguf", "llama", llama, drop=("blk.1.ffn_up.weight",))
    with pytest.raises(ValueError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj"):
        jaxgen.load(path)
    (tmp_path / "x.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match="not a GGUF file"):
        jaxgen.load(tmp_path / "x.gguf")
