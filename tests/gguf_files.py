"""Small GGUF files for the tests, written the way llama.cpp's converter writes them.

    path = write_gguf(tmp / "m.gguf", "llama", hf_model, qtype=QT.Q8_0, vocab=gpt2_vocab())

Tensor names come from gguf-py's `TensorNameMap` (HF -> GGUF), Llama's q/k rows are
permuted and Gemma's norms stored as ``w + 1`` as llama.cpp does; 2-D weights are
quantized to ``qtype``, everything else stays F32. ``vocab`` adds ``tokenizer.ggml.*``
metadata (see `gpt2_vocab` and `sentencepiece_vocab`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CORPUS = ["the cat sat on the mat", "once upon a time there was a model",
          "héllo wörld ünïcode", "日本語のテキスト", "numbers 12345 and symbols !?",
          "  spaces   and\ttabs\n\nnewlines"] * 4
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's q/k row permutation (convert_hf_to_gguf.py, LlamaModel.permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def _metadata(w: gguf.GGUFWriter, arch: str, c: Any) -> None:
    w.add_block_count(c.num_hidden_layers)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(_rope_theta(c))
    w.add_vocab_size(c.vocab_size)
    if arch == "llama":
        w.add_rope_dimension_count(c.head_dim)
    if arch in ("gemma2", "gemma3", "qwen3"):
        w.add_key_length(c.head_dim)
        w.add_value_length(c.head_dim)
    if arch in ("gemma2", "gemma3"):
        w.add_sliding_window(c.sliding_window)
    if arch == "gemma2":
        w.add_attn_logit_softcapping(c.attn_logit_softcapping)
        w.add_final_logit_softcapping(c.final_logit_softcapping)


def _rope_theta(c: Any) -> float:
    params = c.rope_parameters
    return float((params.get("full_attention") or params)["rope_theta"])


def write_gguf(path: Path, arch: str, hf_model: Any, *, qtype: QT = QT.F32,
               vocab: dict[str, Any] | None = None, drop: tuple[str, ...] = (),
               replace: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``hf_model`` (a transformers model) as a GGUF of architecture ``arch``;
    ``drop`` leaves GGUF tensors out, ``replace`` swaps in other arrays (HF layout)."""
    c = hf_model.config
    w = gguf.GGUFWriter(str(path), arch)
    _metadata(w, arch, c)
    for key, value in (vocab or {}).items():
        w.add_key_value(key, value[0], value[1])
    names = gguf.get_tensor_name_map(
        next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch), c.num_hidden_layers)
    tied = c.tie_word_embeddings
    for hf, tensor in hf_model.state_dict().items():
        if tied and hf == "lm_head.weight":
            continue
        base, _, suffix = hf.rpartition(".")
        name = f"{names.get_name(base)}.{suffix}"
        data = tensor.float().numpy().astype(np.float32)
        if arch == "llama" and ".attn_q." in name:
            data = _permute(data, c.num_attention_heads)
        if arch == "llama" and ".attn_k." in name:
            data = _permute(data, c.num_key_value_heads)
        if arch in ("gemma2", "gemma3") and name.endswith("norm.weight"):
            data = data + 1
        data = (replace or {}).get(name, data)
        if name in drop:
            continue
        if data.ndim == 2 and qtype != QT.F32:
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, data)
    finish(w)
    return path


def finish(w: gguf.GGUFWriter) -> None:
    """Write the header, metadata and tensors of ``w`` and close the file."""
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# ------------------------------------------------------------------------- vocabularies

_A = gguf.GGUFValueType.ARRAY
_S = gguf.GGUFValueType.STRING


def _kv(tokens: list[str], types: list[int], model: str, **extra: Any) -> dict[str, Any]:
    out = {"tokenizer.ggml.model": (model, _S), "tokenizer.ggml.tokens": (tokens, _A),
           "tokenizer.ggml.token_type": (types, _A)}
    for key, value in extra.items():
        kind = {str: _S, bool: gguf.GGUFValueType.BOOL, int: gguf.GGUFValueType.UINT32,
                list: _A}[type(value)]
        out[f"tokenizer.ggml.{key}" if key != "chat_template" else "tokenizer.chat_template"] \
            = (value, kind)
    return out


def gpt2_vocab(pre: str = "smollm") -> dict[str, Any]:
    """Byte-level BPE trained on `CORPUS`, with SmolLM2-style specials (control) and a
    user-defined ``<think>``; bos 1, eos/pad 2."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokens = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    tokens.append("<think>")
    merges = [" ".join(m) if isinstance(m, list) else m
              for m in json.loads(tok.to_str())["model"]["merges"]]
    types = [3 if t in SPECIALS else 4 if t == "<think>" else 1 for t in tokens]
    return _kv(tokens, types, "gpt2", pre=pre, merges=merges, bos_token_id=1, eos_token_id=2,
               padding_token_id=2, add_bos_token=False)


def sentencepiece_vocab() -> dict[str, Any]:
    """SentencePiece-style BPE (``▁`` for spaces, byte fallback tokens, scores, no merges):
    unk 0 (type 2), bos 1, eos 2 (control), ``<0x..>`` bytes (type 6)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=[]))
    pieces = [t for t, _ in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))]
    out = _kv(tokens, types, "llama", bos_token_id=1, eos_token_id=2, unknown_token_id=0)
    out["tokenizer.ggml.scores"] = (scores, _A)
    return out


def vocab_size(vocab: dict[str, Any]) -> int:
    return len(vocab["tokenizer.ggml.tokens"][0])


def assert_same_config(ours: dict[str, Any], ref: Any) -> None:
    """Our config dict read by transformers' config class equals transformers' own."""
    skip = {"_name_or_path", "architectures", "transformers_version", "_model_name_or_path",
            "unk_token_id", "dtype", "quantization_config"}
    mine = type(ref)(**ours).to_dict()
    theirs = ref.to_dict()
    assert {k: v for k, v in mine.items() if k not in skip} == \
        {k: v for k, v in theirs.items() if k not in skip}
