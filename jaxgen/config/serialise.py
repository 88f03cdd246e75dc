"""GenerationConfig values in and out of JSON: normalisation (lists -> tuples, numpy ->
Python, transformers' JSON forms of ``sequence_bias`` / ``logit_bias``) and back."""

from __future__ import annotations

import ast
import dataclasses
from typing import Any

import numpy as np


def _freeze(value: Any) -> Any:
    """numpy scalars -> Python, lists/tuples/arrays -> tuples (deep)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return _freeze(value.tolist())
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _normalise(name: str, value: Any) -> Any:
    if name == "sequence_bias" and isinstance(value, (list, tuple)):
        # transformers' JSON form: [[token_ids, bias], ...]
        try:
            return {_freeze(ids): _freeze(bias) for ids, bias in value}
        except (TypeError, ValueError):
            return _freeze(value)
    if name == "sequence_bias" and isinstance(value, dict):
        # transformers writes tuple keys to JSON as strings like "(8, 9)"
        return {_tuple_key(k): _freeze(v) for k, v in value.items()}
    if name == "logit_bias" and isinstance(value, dict):
        # JSON turns int keys into strings
        return {_int_key(k): _freeze(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.generic, np.ndarray)):
        return _freeze(value)
    return value


def _tuple_key(k: Any) -> Any:
    if isinstance(k, str):
        try:
            k = ast.literal_eval(k)
        except (ValueError, SyntaxError):
            return k
        k = (k,) if isinstance(k, int) else k
    return _freeze(k)


def _int_key(k: Any) -> Any:
    k = _freeze(k)
    if isinstance(k, str) and k.lstrip("-").isdigit():
        return int(k)
    return k


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


def _to_json(name: str, value: Any) -> Any:
    if name == "sequence_bias" and isinstance(value, dict):
        return [[_thaw(k), v] for k, v in value.items()]
    return _thaw(value)


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to generation_config.json")


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same kind (so ``False`` is not ``0`` and ``1`` is ``1.0``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    try:
        return bool(a == b)
    except Exception:  # arrays and other odd objects
        return False
