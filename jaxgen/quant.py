"""Load-time model preparation: stacked (scanned) layers, int8 weights, an int8 KV cache.

`jaxgen.load` calls `check_settings` before any work and `prepare` after the weights
are read::

    lm = jaxgen.load(path, quantize="int8", kv_cache_dtype="int8")

``quantize="int8"``: every 2-D projection kernel ``[in, out]`` becomes a
`jaxgen.models.quant.QTensor` with one scale per output channel, the embedding table one
scale per row (it also serves as the tied output head); norms and biases stay float.
``kv_cache_dtype="int8"``: full-attention layers keep int8 keys/values with one scale per
token and kv head (`jaxgen.models.quant.Int8KVCache`); sliding-window rings stay float.
Both are for the shared decoder families (`jaxgen.models.decoder`), not GPT-2.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from jaxgen.models.quant import is_quantized, quantize

__all__ = ["check_settings", "is_quantized", "prepare", "quantize_params"]

QUANTIZE = (None, "int8")
KV_CACHE_DTYPES = (None, "int8")


def check_settings(quantize: Any, kv_cache_dtype: Any) -> None:
    """ValueError naming the field for a value outside the allowed ones."""
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}, got {quantize!r}")
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got "
                         f"{kv_cache_dtype!r}")


def _supports(model: Any, field: str) -> bool:
    return field in {f.name for f in dataclasses.fields(model)}


def quantize_params(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with int8 kernels (per output channel) and embedding tables (per row)."""
    def visit(tree: Any, name: str) -> Any:
        if isinstance(tree, dict):
            return {k: visit(v, k) for k, v in tree.items()}
        if isinstance(tree, (tuple, list)):  # stacked layer groups
            return type(tree)(visit(v, name) for v in tree)
        if name == "kernel" and tree.ndim >= 2:
            return quantize(tree, axis=-2)
        if name == "embedding":
            return quantize(tree, axis=-1)
        return tree

    return jax.jit(lambda p: visit(p, ""))(params)


def prepare(model: Any, params: dict[str, Any], *, scan_layers: bool, quantize: Any,
            kv_cache_dtype: Any) -> tuple[Any, dict[str, Any]]:
    """The model and params as loaded, stacked for a scan when ``scan_layers`` (and the
    model has layers to scan), then int8 as asked (see the module docstring)."""
    if scan_layers and _supports(model, "scan_layers") and not model.scan_layers:
        params = model.stack_params(params)
        model = model.with_scan(True)
    for field, value in (("quantize", quantize), ("kv_cache_dtype", kv_cache_dtype)):
        if value is not None and not _supports(model, "kv_cache_dtype"):
            raise ValueError(f"{field}={value!r} is for the decoder families (llama, qwen, "
                             f"gemma, phi3, olmo2, smollm3, ...), not {type(model).__name__}")
    if quantize == "int8":
        params = quantize_params(params)
    if kv_cache_dtype is not None:
        model = dataclasses.replace(model, kv_cache_dtype=kv_cache_dtype)
    return model, params

