"""A command-line flag for every ``GenerationConfig`` field, derived from the dataclass.

The field table (names, type hints, defaults, and the allowed values of
``jaxgen.config._RULES``) decides each flag, so a new field gets its flag for free::

    bool                        --do-sample / --no-do-sample   (also --no-sample)
    int, float, str             --top-k 40, --min-p 0.05, --cache-implementation static
    X | tuple[X, ...]           --eos-token-id 2 --eos-token-id 7    (repeat for a list)
    tuple[X, ...]               --suppress-token 5 --suppress-token 9 (or --suppress-tokens)
    bool | str                  --early-stopping true | false | never
    anything else               JSON: --sequence-bias '[[[1, 2], -3.0]]', --logit-bias '{"5": 2}'

Values are only parsed here; ``GenerationConfig.validate`` checks them, so a bad value
gets the same named error as in Python.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import types
import typing
from typing import Any

from jaxgen.config import _RULES, GenerationConfig

_SCALARS = (int, float, str)


def _parts(tp: Any) -> tuple[Any, ...]:
    """The members of a union (``None`` dropped), or ``(tp,)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return tuple(a for a in typing.get_args(tp) if a is not type(None))
    return (tp,)


def _tuple_of(tp: Any) -> Any:
    """``X`` for ``tuple[X, ...]`` with a scalar ``X``, else None."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis \
            and args[0] in _SCALARS:
        return args[0]
    return None


def flag_kind(tp: Any) -> tuple[str, Any]:
    """``(kind, scalar type)`` of a field type: bool, scalar, one_or_many, many,
    bool_or_str or json."""
    parts = _parts(tp)
    if parts == (bool,):
        return "bool", bool
    if len(parts) == 1 and parts[0] in _SCALARS:
        return "scalar", parts[0]
    if set(parts) == {bool, str}:
        return "bool_or_str", str
    many = [_tuple_of(p) for p in parts]
    if len(parts) == 2 and parts[0] in _SCALARS and many[1] == parts[0]:
        return "one_or_many", parts[0]
    if len(parts) == 1 and many[0] is not None:
        return "many", many[0]
    return "json", None


def _bool_or_str(text: str) -> bool | str:
    low = text.lower()
    return {"true": True, "false": False}.get(low, text)


def _json(text: str) -> Any:
    """JSON, or the text itself when it is not JSON (e.g. ``--dola-layers low``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@functools.cache
def config_fields() -> tuple[tuple[str, str, Any], ...]:
    """``(name, kind, scalar type)`` of every GenerationConfig field, in field order."""
    hints = typing.get_type_hints(GenerationConfig)
    return tuple((f.name, *flag_kind(hints[f.name])) for f in dataclasses.fields(GenerationConfig))


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per GenerationConfig field (see the module docstring)."""
    group = parser.add_argument_group(
        "generation settings", "every GenerationConfig field; unset flags keep the model's "
        "generation_config.json (or --config) values")
    defaults = {f.name: f.default for f in dataclasses.fields(GenerationConfig)}
    for name, kind, scalar in config_fields():
        flag = "--" + name.replace("_", "-")
        allowed = _RULES[name][1] if name in _RULES else "see GenerationConfig"
        help_text = f"{allowed} (default {defaults[name]!r})"
        if kind == "bool":
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                               default=None, help=help_text)
        elif kind == "scalar":
            group.add_argument(flag, dest=name, type=scalar, default=None, help=help_text)
        elif kind in ("one_or_many", "many"):
            flags = [flag] + ([flag[:-1]] if flag.endswith("s") else [])
            group.add_argument(*flags, dest=name, type=scalar, action="append", default=None,
                               help=help_text + "; repeat the flag for several")
        elif kind == "bool_or_str":
            group.add_argument(flag, dest=name, type=_bool_or_str, default=None,
                               help=help_text)
        else:
            group.add_argument(flag, dest=name, type=_json, default=None,
                               help=help_text + "; as JSON")
    group.add_argument("--no-sample", dest="do_sample", action="store_false", default=None,
                       help="greedy decoding (do_sample=False), also when the model's "
                            "generation_config.json samples")


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The GenerationConfig fields set on the command line."""
    out: dict[str, Any] = {}
    for name, kind, _ in config_fields():
        value = getattr(args, name, None)
        if value is None:
            continue
        if kind == "one_or_many" and len(value) == 1:
            value = value[0]
        out[name] = value
    return out


def load_config(path: str) -> GenerationConfig:
    """``--config FILE.json`` (or a directory with a generation_config.json)."""
    try:
        return GenerationConfig.from_pretrained(path)
    except (OSError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise SystemExit(f"jaxgen: --config {path}: {e}") from e
