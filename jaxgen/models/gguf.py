"""GGUF files (llama.cpp's format): metadata -> a Hugging Face config, tensors -> our params.

    file = read_gguf("model.gguf")
    file.arch, file.metadata["llama.block_count"], file.tensors["token_embd.weight"].shape
    hf_config(file)         # {"architectures": ["LlamaForCausalLM"], "hidden_size": 576, ...}
    model, params, gen = load_gguf(file, dtype="bfloat16")

The config goes through the model registry like a ``config.json`` does, so every
registered family loads from GGUF too. A parameter's GGUF tensor is found from its HF
name with gguf-py's `TensorNameMap`, as transformers does; llama.cpp's changes to the
values are undone per architecture (`_FIXES`): Llama's q/k row permutation and Gemma's
norms stored as ``w + 1``. Tensors are read and dequantized (`gguf.quants.dequantize`) a
block of rows at a time straight into their parameter (`checkpoint.place`), so the peak
host memory is about the parameters in the target dtype plus one block.

The header is parsed here with gguf-py's constants rather than by `gguf.GGUFReader`, which
makes one numpy view per array element: 11.7 s on Gemma 3's 262k-token vocabulary, where
this parser takes about 0.3 s.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import struct
from collections.abc import Callable, Iterable
from math import prod
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFValueType as VT
from jaxtyping import Float

from jaxgen.models import checkpoint
from jaxgen.models.base import CausalLM
from jaxgen.models.registry import family_of

SUPPORTED_TYPES = frozenset({
    QT.F32, QT.F16, QT.BF16, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q8_0, QT.Q2_K, QT.Q3_K,
    QT.Q4_K, QT.Q5_K, QT.Q6_K, QT.IQ4_NL, QT.IQ4_XS})
_SCALARS = {VT.UINT8: "<u1", VT.INT8: "<i1", VT.UINT16: "<u2", VT.INT16: "<i2",
            VT.UINT32: "<u4", VT.INT32: "<i4", VT.FLOAT32: "<f4", VT.BOOL: "?",
            VT.UINT64: "<u8", VT.INT64: "<i8", VT.FLOAT64: "<f8"}


@dataclasses.dataclass(frozen=True)
class GGUFTensor:
    """Where one tensor lies in the file. ``shape`` is in numpy order (ggml's reversed),
    which is the Hugging Face layout: ``[out, in]`` for a linear weight."""

    name: str
    shape: tuple[int, ...]
    qtype: QT
    offset: int  # absolute byte offset in the file
    nbytes: int

    @property
    def row_bytes(self) -> int:
        block, size = gguf.GGML_QUANT_SIZES[self.qtype]
        return self.shape[-1] // block * size


@dataclasses.dataclass(frozen=True)
class GGUFFile:
    """A parsed GGUF header: metadata values (Python scalars, strings, lists) and tensors."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensor]

    @property
    def arch(self) -> str:
        return self.metadata["general.architecture"]

    def rows(self, name: str, start: int, stop: int) -> Float[np.ndarray, "rows ..."]:
        """Rows ``start:stop`` (first axis) of tensor ``name``, dequantized to float32."""
        t = self.tensors[name]
        if len(t.shape) == 1:  # one row of blocks
            return self._dequantize(t, 0, 1).reshape(-1)[start:stop]
        return self._dequantize(t, start, stop).reshape(stop - start, *t.shape[1:])

    def _dequantize(self, t: GGUFTensor, start: int, stop: int) -> np.ndarray:
        per_row = t.row_bytes * prod(t.shape[1:-1])  # bytes per first-axis row
        with open(self.path, "rb") as f:
            f.seek(t.offset + start * per_row)
            raw = f.read((stop - start) * per_row)
        if len(raw) != (stop - start) * per_row:
            raise ValueError(f"{self.path}: truncated GGUF file, tensor {t.name!r} ends past "
                             f"the end of the file")
        return gguf.quants.dequantize(np.frombuffer(raw, np.uint8).reshape(-1, t.row_bytes),
                                      t.qtype)


# ---------------------------------------------------------------------------- header


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Parse a GGUF file's metadata and tensor table (no tensor data is read).

    ValueError for a file that is not GGUF, truncated, of an unknown GGUF version, or that
    holds a tensor of a type `SUPPORTED_TYPES` lacks (naming the tensor and the type).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (no GGUF magic bytes)")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        try:
            metadata, tensors, end = _parse(buf)
        except (struct.error, IndexError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: truncated or corrupt GGUF header ({e})") from e
        except ValueError as e:  # an unknown version, value type or tensor type
            raise ValueError(f"{path}: {e}") from None
        size = len(buf)
    alignment = int(metadata.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT))
    data_start = -(-end // alignment) * alignment  # the data follow the table, aligned
    out = {}
    for name, (shape, qtype, offset) in tensors.items():
        if qtype not in SUPPORTED_TYPES:
            raise ValueError(f"{path}: tensor {name!r} has GGML type {qtype.name}, which is not "
                             f"supported; supported: {sorted(t.name for t in SUPPORTED_TYPES)}")
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
        t = GGUFTensor(name, shape, qtype, data_start + offset, prod(shape) // block * type_size)
        if t.offset + t.nbytes > size:
            raise ValueError(f"{path}: truncated GGUF file, tensor {name!r} ends at byte "
                             f"{t.offset + t.nbytes}, the file has {size}")
        out[name] = t
    return GGUFFile(path, metadata, out)


def _parse(buf: mmap.mmap) -> tuple[dict[str, Any], dict[str, Any], int]:
    """``(metadata, {name: (shape, type, offset)}, end of the tensor table)``."""
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", buf, 4)
    if version not in (2, 3):
        raise ValueError(f"GGUF version {version} is not supported (2 and 3 are)")
    pos, metadata = 24, {}
    for _ in range(n_kv):
        key, pos = _string(buf, pos)
        (kind,), pos = struct.unpack_from("<I", buf, pos), pos + 4
        metadata[key], pos = _value(buf, pos, _value_type(kind, key))
    tensors: dict[str, Any] = {}
    for _ in range(n_tensors):
        name, pos = _string(buf, pos)
        (ndim,) = struct.unpack_from("<I", buf, pos)
        dims = struct.unpack_from(f"<{ndim}Q", buf, pos + 4)
        kind, offset = struct.unpack_from("<IQ", buf, pos + 4 + 8 * ndim)
        pos += 16 + 8 * ndim
        try:
            qtype = QT(kind)
        except ValueError:
            raise ValueError(f"tensor {name!r} has unknown GGML type {kind}") from None
        tensors[name] = (tuple(int(d) for d in reversed(dims)), qtype, offset)
    return metadata, tensors, pos


def _value_type(code: int, what: str) -> VT:
    try:
        return VT(code)
    except ValueError:
        raise ValueError(f"metadata {what!r} has unknown GGUF value type {code}") from None


def _string(buf: mmap.mmap, pos: int) -> tuple[str, int]:
    (n,) = struct.unpack_from("<Q", buf, pos)
    if pos + 8 + n > len(buf):
        raise IndexError("string runs past the end of the file")
    return buf[pos + 8:pos + 8 + n].decode("utf-8"), pos + 8 + n


def _array(buf: mmap.mmap, dtype: Any, count: int, pos: int) -> np.ndarray:
    dt = np.dtype(dtype)
    if pos + count * dt.itemsize > len(buf):
        raise IndexError("metadata runs past the end of the file")
    return np.frombuffer(buf, dt, count, pos)


def _value(buf: mmap.mmap, pos: int, kind: VT) -> tuple[Any, int]:
    if kind in _SCALARS:
        dt = np.dtype(_SCALARS[kind])
        return _array(buf, dt, 1, pos)[0].item(), pos + dt.itemsize
    if kind == VT.STRING:
        return _string(buf, pos)
    if kind != VT.ARRAY:
        raise ValueError(f"unknown GGUF metadata value type {kind}")
    item, count = struct.unpack_from("<IQ", buf, pos)
    pos, item = pos + 12, _value_type(item, "an array")
    if item in _SCALARS:
        dt = np.dtype(_SCALARS[item])
        return _array(buf, dt, count, pos).tolist(), pos + count * dt.itemsize
    values = []
    for _ in range(count):
        value, pos = _value(buf, pos, item)
        values.append(value)
    return values, pos


# --------------------------------------------------------------------- config mapping

_COMMON_KEYS = {
    "context_length": "max_position_embeddings", "block_count": "num_hidden_layers",
    "feed_forward_length": "intermediate_size", "embedding_length": "hidden_size",
    "rope.freq_base": "rope_theta", "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps", "vocab_size": "vocab_size"}
_GEMMA_KEYS = {**_COMMON_KEYS, "attention.key_length": "head_dim",
               "attention.sliding_window": "sliding_window"}
# GGUF architecture -> (HF architecture, model_type, GGUF key -> HF key), as transformers'
# GGUF_CONFIG_MAPPING (rope.dimension_count is head_dim only for llama there too).
_ARCHS: dict[str, tuple[str, str, dict[str, str]]] = {
    "llama": ("LlamaForCausalLM", "llama", {**_COMMON_KEYS, "rope.dimension_count": "head_dim"}),
    "qwen2": ("Qwen2ForCausalLM", "qwen2", _COMMON_KEYS),
    "qwen3": ("Qwen3ForCausalLM", "qwen3", {**_COMMON_KEYS, "attention.key_length": "head_dim"}),
    "gemma2": ("Gemma2ForCausalLM", "gemma2", {
        **_GEMMA_KEYS, "attn_logit_softcapping": "attn_logit_softcapping",
        "final_logit_softcapping": "final_logit_softcapping"}),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text", _GEMMA_KEYS),
}
_TOKEN_IDS = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
              "unknown_token_id": "unk_token_id", "padding_token_id": "pad_token_id"}


def hf_config(file: GGUFFile) -> dict[str, Any]:
    """The Hugging Face ``config.json`` dict of ``file``, as transformers builds it from the
    metadata (`_ARCHS`); settings the file does not state get transformers' config
    defaults, written out (`_gemma_defaults`). ValueError for an unknown architecture."""
    arch, meta = file.arch, file.metadata
    if arch not in _ARCHS:
        raise ValueError(f"{file.path}: GGUF architecture {arch!r} is not supported; "
                         f"supported: {sorted(_ARCHS)}")
    architecture, model_type, keys = _ARCHS[arch]
    config: dict[str, Any] = {"architectures": [architecture], "model_type": model_type}
    config |= {hf: meta[f"{arch}.{k}"] for k, hf in keys.items() if f"{arch}.{k}" in meta}
    config |= {hf: meta[f"tokenizer.ggml.{k}"] for k, hf in _TOKEN_IDS.items()
               if f"tokenizer.ggml.{k}" in meta}
    if "vocab_size" not in config and "tokenizer.ggml.tokens" in meta:
        config["vocab_size"] = len(meta["tokenizer.ggml.tokens"])
    # llama.cpp writes the output head only when it is not the embedding matrix
    config["tie_word_embeddings"] = "output.weight" not in file.tensors
    if arch in ("gemma2", "gemma3"):
        config = _gemma_defaults(arch, config, meta)
    return config


def _gemma_defaults(arch: str, c: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
    """Gemma 2/3 settings the file leaves out: transformers' Gemma2Config/Gemma3TextConfig
    defaults, except query_pre_attn_scalar, where we follow llama.cpp (transformers keeps
    256 even for Gemma 3 27B, whose checkpoint says hidden_size // heads = 168)."""
    layers, head_dim = c["num_hidden_layers"], c.get("head_dim", 256)
    big = arch == "gemma3" and layers == 62 or arch == "gemma2" and layers == 46  # the 27Bs
    c = {"hidden_activation": "gelu_pytorch_tanh", "attention_bias": False,
         "query_pre_attn_scalar": c["hidden_size"] // c["num_attention_heads"] if big
         else head_dim, **c}
    pattern = meta.get(f"{arch}.attention.sliding_window_pattern", 2 if arch == "gemma2" else 6)
    sliding = pattern if isinstance(pattern, list) else [(i + 1) % pattern != 0
                                                         for i in range(layers)]
    c["layer_types"] = ["sliding_attention" if s else "full_attention" for s in sliding]
    if arch == "gemma2":
        return {"attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0, **c}
    full: dict[str, Any] = {"rope_type": "default", "rope_theta": c.pop("rope_theta", 1e6)}
    factor = meta.get("gemma3.rope.scaling.factor", 1.0)
    if meta.get("gemma3.rope.scaling.type") == "linear" and factor != 1.0:
        full = {**full, "rope_type": "linear", "factor": factor}
    return {"final_logit_softcapping": None, "attn_logit_softcapping": None,
            "use_bidirectional_attention": False, **c, "rope_parameters": {
                "full_attention": full,
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}}}


def generation_config(file: GGUFFile) -> dict[str, Any]:
    """bos/eos/pad ids of the file; llama.cpp's end-of-turn ids (``eot``/``eom``) join the
    eos list (transformers reads only ``eos_token_id``; llama.cpp stops on all three)."""
    meta, out = file.metadata, {}
    eos = [meta[f"tokenizer.ggml.{k}_token_id"] for k in ("eos", "eot", "eom")
           if f"tokenizer.ggml.{k}_token_id" in meta]
    if eos:
        eos = list(dict.fromkeys(eos))
        out["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    for key in ("bos", "padding"):
        if f"tokenizer.ggml.{key}_token_id" in meta:
            out[f"{key[:3]}_token_id"] = meta[f"tokenizer.ggml.{key}_token_id"]
    return out


# --------------------------------------------------------------------- tensor mapping


@dataclasses.dataclass(frozen=True)
class Fix:
    """How llama.cpp changed one tensor, undone on load: HF row ``i`` is GGUF row
    ``rows[i]``, and HF values are GGUF values minus ``offset``."""

    rows: np.ndarray | None = None
    offset: float = 0.0


def _unpermute(heads: int, rows: int) -> np.ndarray:
    """Row order undoing llama.cpp's q/k permutation (transformers' reverse_permute_weights):
    per head, rows ``[0, 2, 4, ..., 1, 3, ...]`` were interleaved into ``[0, 1, 2, ...]``."""
    return np.arange(rows).reshape(heads, rows // heads // 2, 2).swapaxes(2, 1).reshape(-1)


def _llama_fix(name: str, rows: int, config: dict[str, Any]) -> Fix:
    if ".attn_q." in name:
        return Fix(rows=_unpermute(config["num_attention_heads"], rows))
    if ".attn_k." in name:
        return Fix(rows=_unpermute(config["num_key_value_heads"], rows))
    return Fix()


def _gemma_fix(name: str, rows: int, config: dict[str, Any]) -> Fix:
    return Fix(offset=1.0) if "norm.weight" in name else Fix()


_FIXES: dict[str, Callable[[str, int, dict[str, Any]], Fix]] = {
    "llama": _llama_fix, "gemma2": _gemma_fix, "gemma3": _gemma_fix}


def gguf_names(file: GGUFFile, hf_names: Iterable[str], layers: int) -> dict[str, str]:
    """HF tensor name -> GGUF tensor name (gguf-py's `TensorNameMap`, as transformers
    does), for the names it knows whose tensor the file holds."""
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == file.arch)
    names = gguf.get_tensor_name_map(arch, layers)
    out = {}
    for hf in hf_names:
        base, dot, suffix = hf.rpartition(".")
        found = names.get_name(base)
        if found is not None and f"{found}{dot}{suffix}" in file.tensors:
            out[hf] = f"{found}{dot}{suffix}"
    return out


def hf_tensor(file: GGUFFile, name: str, config: dict[str, Any]
              ) -> Callable[[int, int], Float[np.ndarray, "rows ..."]]:
    """A reader ``(start, stop) -> HF rows start:stop`` (float32) of GGUF tensor ``name``,
    with the architecture's fix undone."""
    t = file.tensors[name]
    fix = _FIXES.get(file.arch, lambda *_: Fix())(name, t.shape[0], config)

    def read(start: int, stop: int) -> np.ndarray:
        if fix.rows is None:
            rows = file.rows(name, start, stop)
        else:  # permuted tensors (q/k) are small: read whole, pick rows
            rows = file.rows(name, 0, t.shape[0])[fix.rows[start:stop]]
        return rows - np.float32(fix.offset) if fix.offset else rows

    return read


def load_gguf(file: str | os.PathLike | GGUFFile, dtype: Any = None,
              placement: checkpoint.Placement | None = None
              ) -> tuple[CausalLM, dict[str, Any], dict[str, Any]]:
    """Load a GGUF file: ``(model, params, generation_config dict)``; ``placement`` as
    in `checkpoint.load_checkpoint` (quantized blocks run along rows: a window of rows
    dequantizes only those rows, a window of columns whole rows, then slices them).

    ``dtype`` as in `checkpoint.load_checkpoint`. ValueError for an unsupported
    architecture (of GGUF or of the registry), tensor type, a missing tensor or one of the
    wrong shape, each naming it.
    """
    if not isinstance(file, GGUFFile):
        file = read_gguf(file)
    config = hf_config(file)
    model = checkpoint.model_from_hf_config(config, dtype)
    wanted = list(checkpoint.param_slots(model))
    for module, parts in family_of(model).tensors.fused:  # e.g. Phi-3's qkv_proj
        wanted += [n.replace(f".{p}.", f".{module}.") for n in wanted for p in parts
                   if f".{p}." in n]
    names = gguf_names(file, dict.fromkeys(wanted), config["num_hidden_layers"])
    # every tensor of the file, by its HF name where it has one (the rest warn as unused)
    stored = {hf: (file.tensors[g].shape, hf_tensor(file, g, config)) for hf, g in names.items()}
    stored |= {g: (t.shape, hf_tensor(file, g, config)) for g, t in file.tensors.items()
               if g not in names.values()}
    placed_model, placer = (model, None) if placement is None else placement(model)
    params = checkpoint.read_params(model, stored, str(file.path),
                                    label=lambda hf: f"{names.get(hf, hf)} ({hf})",
                                    placer=placer)
    return placed_model, params, generation_config(file)
