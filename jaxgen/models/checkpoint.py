"""Load and save Hugging Face-layout checkpoints (config.json + safetensors).

    model, params, gen = load_checkpoint("path/to/hf_dir", dtype="bfloat16")
    save_checkpoint(model, params, "out_dir")   # transformers.AutoModelForCausalLM loads it

Tensor names map one to one onto our parameter paths: ``layers_3`` <-> ``layers.3``
(``h.3`` for GPT-2), ``kernel``/``embedding``/``scale`` <-> ``weight``. Llama-family dense
kernels are HF ``weight.T``; GPT-2's Conv1D weights are already ``[in, out]``.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxgen.models.gpt2 import GPT2, GPT2Config
from jaxgen.models.llama import Llama, LlamaConfig

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "GPT2LMHeadModel": "gpt2",
}
# Buffers some checkpoints carry that are not parameters.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")


def resolve_dtype(dtype: Any) -> np.dtype:
    """None -> float32; "bfloat16", "float32", jnp.bfloat16, ... -> a floating jnp dtype."""
    if dtype is None:
        return jnp.dtype(jnp.float32)
    try:
        resolved = jnp.dtype(dtype)
    except TypeError as e:
        raise ValueError(f"unknown dtype {dtype!r}") from e
    if not jnp.issubdtype(resolved, jnp.floating):
        raise ValueError(f"dtype must be a floating type, got {dtype!r}")
    return resolved


def model_from_hf_config(config: dict[str, Any], dtype: Any = None) -> Llama | GPT2:
    """Build our model for a Hugging Face ``config.json`` dict (dispatch on
    ``architectures[0]``, else ``model_type``)."""
    archs = config.get("architectures") or []
    family = None
    if archs:
        family = SUPPORTED_ARCHITECTURES.get(archs[0])
    elif config.get("model_type") in SUPPORTED_ARCHITECTURES.values():
        family = config["model_type"]
    if family is None:
        found = archs[0] if archs else f"model_type={config.get('model_type')!r}"
        raise ValueError(f"unsupported architecture {found}; supported: "
                         f"{sorted(SUPPORTED_ARCHITECTURES)}")
    dtype = resolve_dtype(dtype)
    if family == "gpt2":
        return GPT2(GPT2Config.from_hf(config), dtype)
    return Llama(LlamaConfig.from_hf({**config, "model_type": family}), dtype)


# ------------------------------------------------------------------------- name mapping


def _hf_name(model: Llama | GPT2, path: tuple[str, ...], prefix: str) -> tuple[str, bool]:
    """The HF tensor name of our parameter ``path`` and whether it is stored transposed."""
    gpt2 = isinstance(model, GPT2)
    parts = []
    for p in path[:-1]:
        if p.startswith("layers_"):
            parts += ["h" if gpt2 else "layers", p[len("layers_"):]]
        else:
            parts.append(p)
    leaf = path[-1]
    parts.append("bias" if leaf == "bias" else "weight")
    if path[0] == "lm_head":
        return "lm_head.weight", True
    transpose = leaf == "kernel" and not gpt2
    return prefix + ".".join(parts), transpose


def _param_specs(model: Llama | GPT2) -> dict[tuple[str, ...], jax.ShapeDtypeStruct]:
    """Our parameter paths and their shapes, without allocating anything."""
    abstract = jax.eval_shape(model.init_params, jax.random.key(0))
    flat = jax.tree_util.tree_flatten_with_path(abstract)[0]
    return {tuple(k.key for k in path): leaf for path, leaf in flat}


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    return tree


# ---------------------------------------------------------------------------- reading


def _tensor_files(path: Path) -> dict[str, Path]:
    """Tensor name -> the safetensors file holding it (single file or sharded index)."""
    single, index = path / "model.safetensors", path / "model.safetensors.index.json"
    if single.is_file():
        with safe_open(single, framework="numpy") as f:
            return {name: single for name in f.keys()}
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: path / file for name, file in weight_map.items()}
    raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {path}")


def _read(files: dict[str, Path], names: list[str]) -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(name, array)`` for ``names``, opening each shard once."""
    by_file: dict[Path, list[str]] = defaultdict(list)
    for name in names:
        by_file[files[name]].append(name)
    for file, file_names in by_file.items():
        with safe_open(file, framework="numpy") as f:
            for name in file_names:
                yield name, f.get_tensor(name)


def load_checkpoint(path: str | os.PathLike, dtype: Any = None
                    ) -> tuple[Llama | GPT2, dict[str, Any], dict[str, Any] | None]:
    """Load a Hugging Face directory: ``(model, params, generation_config dict or None)``.

    ``dtype``: None (float32), "float32", "bfloat16", or a jnp dtype; parameters, the
    activations and the KV cache use it. Raises FileNotFoundError for a missing directory
    or config.json, ValueError for an unsupported architecture, a missing tensor or a
    tensor of the wrong shape (naming the tensor, the expected and the found shape).
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {str(path)!r} does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"no config.json in checkpoint directory {str(path)!r}")
    model = model_from_hf_config(json.loads(config_file.read_text()), dtype)
    files = _tensor_files(path)
    prefix = ""
    if isinstance(model, GPT2):
        prefix = "transformer." if any(n.startswith("transformer.") for n in files) else ""
    else:
        prefix = "model."
    specs = _param_specs(model)
    names = {_hf_name(model, p, prefix)[0]: p for p in specs}
    missing = [n for n in names if n not in files]
    if missing:
        n = missing[0]
        shape = _hf_shape(model, specs[names[n]].shape, names[n], prefix)
        raise ValueError(f"checkpoint {str(path)!r} is missing tensor {n!r} (expected shape "
                         f"{shape}); {len(missing)} missing in all")
    _warn_unused(model, set(files) - set(names))
    flat = {}
    for name, array in _read(files, list(names)):
        p = names[name]
        expected = _hf_shape(model, specs[p].shape, p, prefix)
        if tuple(array.shape) != expected:
            raise ValueError(f"tensor {name!r} has the wrong shape: expected {expected}, "
                             f"found {tuple(array.shape)}")
        if _hf_name(model, p, prefix)[1]:
            array = array.T
        flat[p] = jnp.asarray(array.astype(model.dtype))
    gen_file = path / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.is_file() else None
    return model, _unflatten(flat), gen


def _hf_shape(model: Llama | GPT2, shape: tuple[int, ...], path: tuple[str, ...],
              prefix: str) -> tuple[int, ...]:
    transpose = _hf_name(model, path, prefix)[1]
    return tuple(reversed(shape)) if transpose else tuple(shape)


def _warn_unused(model: Llama | GPT2, unused: set[str]) -> None:
    if model.config.tie_word_embeddings:
        unused.discard("lm_head.weight")
    unused = {n for n in unused if not n.endswith(_IGNORED_SUFFIXES)}
    if unused:
        warnings.warn(f"checkpoint tensors not used by {type(model).__name__}: "
                      f"{sorted(unused)[:10]}{' ...' if len(unused) > 10 else ''}", stacklevel=3)


# ---------------------------------------------------------------------------- writing


def save_checkpoint(model: Llama | GPT2, params: dict[str, Any], path: str | os.PathLike,
                    generation_config: dict[str, Any] | None = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` (+ ``generation_config.json`` if given)
    in Hugging Face layout, in the model's dtype; tied lm_heads are not written."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    prefix = "transformer." if isinstance(model, GPT2) else "model."
    specs = _param_specs(model)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    got = {tuple(k.key for k in p): leaf for p, leaf in flat}
    if set(got) != set(specs):
        raise ValueError(f"params do not match the model: missing "
                         f"{sorted(set(specs) - set(got))[:5]}, unexpected "
                         f"{sorted(set(got) - set(specs))[:5]}")
    tensors = {}
    for p, spec in specs.items():
        array = np.asarray(jax.device_get(got[p]))
        if array.shape != spec.shape:
            raise ValueError(f"param {'/'.join(p)} has shape {array.shape}, expected {spec.shape}")
        name, transpose = _hf_name(model, p, prefix)
        tensors[name] = np.ascontiguousarray(array.T if transpose else array)
    config = model.config.to_hf()
    config["dtype"] = str(model.dtype)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    if generation_config is not None:
        (path / "generation_config.json").write_text(json.dumps(generation_config, indent=2)
                                                     + "\n")
