"""Model families: what checkpoint IO and sharding need to know about each one.

A family module registers one `Family` at import (``jaxgen.models`` imports them all)::

    register(Family(
        name="gpt2", architectures={"GPT2LMHeadModel": "gpt2"}, config=GPT2Config,
        parse_config=GPT2Config.from_hf, model=GPT2,
        tensors=TensorNames(prefix="transformer.", prefix_optional=True, layers="h",
                            transpose_kernels=False),
        rules=GPT2_RULES, vocab_rules=(r"wte/embedding$", r"lm_head/kernel$"),
        kv_heads_field="n_head"))

``family_for_config(hf_config_dict)`` finds the family of a ``config.json``
(``architectures[0]``, else ``model_type``); ``family_of(model)`` the family of a model
(by the class of ``model.config``, most derived class first). Adding a family is one new
module: `jaxgen.models.checkpoint` and `jaxgen.sharding` only ask the registry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

import numpy as np
from jax.sharding import PartitionSpec as P

from jaxgen.models.base import CausalLM


class Source(NamedTuple):
    """Where a HF tensor is in a checkpoint: stored tensor ``name``, rows ``start ..`` of
    it; the stored tensor has ``rows`` rows (more than ours when fused)."""

    name: str
    start: int
    rows: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorNames:
    """How our parameter paths map onto a family's Hugging Face tensor names.

    ``layers_3/self_attn/q_proj/kernel`` <-> ``{prefix}{layers}.3.self_attn.q_proj.weight``:
    ``layers_<i>`` <-> ``{layers}.<i>``, ``kernel``/``embedding``/``scale`` <-> ``weight``,
    ``bias`` <-> ``bias``. The output head ``{head}/kernel`` <-> ``{head}.weight``, with no
    prefix and stored ``[out, in]`` (an ``nn.Linear`` in every HF family).

    Per-family checkpoint quirks, resolved by `sources` on load and `to_stored` on save:
    ``aliases`` rename stored prefixes (Gemma 3's ``model.language_model.`` -> ``model.``),
    ``skipped`` prefixes are not loaded (a vision tower), and ``fused`` modules hold their
    parts stacked on the rows (Phi-3's ``self_attn.qkv_proj`` = q_proj | k_proj | v_proj).
    """

    prefix: str = "model."  # before every tensor name but the head's
    prefix_optional: bool = False  # checkpoints with or without the prefix (GPT-2)
    layers: str = "layers"  # HF name of the layer list
    transpose_kernels: bool = True  # HF nn.Linear weights [out, in]; False: Conv1D [in, out]
    head: str = "lm_head"
    ignored: tuple[str, ...] = ()  # name suffixes of non-parameter buffers (not warned of)
    aliases: tuple[tuple[str, str], ...] = ()  # (stored prefix, our prefix), renamed on load
    skipped: tuple[str, ...] = ()  # stored-name prefixes never loaded (not warned of)
    fused: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (fused module, its parts on rows)

    def hf_name(self, path: tuple[str, ...], prefix: str | None = None) -> tuple[str, bool]:
        """``(HF tensor name, stored transposed?)`` of our parameter ``path``; ``prefix``
        is the one the checkpoint uses (default ``self.prefix``)."""
        if path[0] == self.head:
            return f"{self.head}.weight", True
        parts: list[str] = []
        for p in path[:-1]:
            parts += [self.layers, p[len("layers_"):]] if p.startswith("layers_") else [p]
        parts.append("bias" if path[-1] == "bias" else "weight")
        prefix = self.prefix if prefix is None else prefix
        return prefix + ".".join(parts), path[-1] == "kernel" and self.transpose_kernels

    def sources(self, wanted: Mapping[str, int], stored: Iterable[str]
                ) -> tuple[dict[str, Source], set[str]]:
        """Where each ``wanted`` HF name (-> its number of rows) is among the ``stored``
        tensor names (after ``aliases``; a part of a ``fused`` tensor when absent itself),
        and the stored names left unused (``skipped`` ones aside). Missing names are
        simply not in the result."""
        canon = {}
        for name in stored:
            if self.skipped and name.startswith(self.skipped):
                continue
            old, new = next(((a, b) for a, b in self.aliases if name.startswith(a)), ("", ""))
            canon[new + name[len(old):]] = name
        found = {w: Source(canon[w], 0, rows) for w, rows in wanted.items() if w in canon}
        for w in set(wanted) - set(found):
            for module, parts in self.fused:
                part = next((p for p in parts if f".{p}." in w), None)
                whole = None if part is None else canon.get(w.replace(f".{part}.", f".{module}."))
                if whole is not None:
                    sizes = [wanted.get(w.replace(f".{part}.", f".{p}."), 0) for p in parts]
                    found[w] = Source(whole, sum(sizes[:parts.index(part)]), sum(sizes))
        return found, set(canon.values()) - {s.name for s in found.values()}

    def to_stored(self, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """HF-named ``tensors`` as the checkpoint stores them (``fused`` parts stacked)."""
        out = dict(tensors)
        for module, parts in self.fused:
            for name in [n for n in tensors if f".{parts[0]}." in n]:
                names = [name.replace(f".{parts[0]}.", f".{p}.") for p in parts]
                out[name.replace(f".{parts[0]}.", f".{module}.")] = np.concatenate(
                    [out.pop(n) for n in names], axis=0)
        return out

    def prefix_of(self, names: Iterable[str]) -> str:
        """The prefix a checkpoint holding tensors ``names`` uses."""
        if self.prefix_optional and not any(n.startswith(self.prefix) for n in names):
            return ""
        return self.prefix


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Family:
    """One model family: HF names it handles, how to build it, how to name and shard it."""

    name: str
    architectures: Mapping[str, str]  # HF architecture name -> its model_type
    config: type  # our config class; `family_of` matches ``type(model.config)`` on it
    parse_config: Callable[[dict[str, Any]], Any]  # HF dict (model_type resolved) -> config
    model: Callable[[Any, Any], CausalLM]  # (config, dtype) -> model
    tensors: TensorNames = TensorNames()
    rules: tuple[tuple[str, P], ...] = ()  # default partition rules (`jaxgen.sharding`)
    vocab_rules: tuple[str, ...] = ()  # patterns in ``rules`` that split the vocabulary
    kv_heads_field: str = "num_key_value_heads"  # config field: the cache's kv heads

    def __post_init__(self) -> None:
        object.__setattr__(self, "architectures", MappingProxyType(dict(self.architectures)))
        object.__setattr__(self, "rules", tuple(self.rules))
        unknown = set(self.vocab_rules) - {r for r, _ in self.rules}
        if unknown:
            raise ValueError(f"family {self.name!r}: vocab_rules {sorted(unknown)} are not "
                             f"patterns of its rules")

    @property
    def model_types(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.architectures.values()))

    def handles(self, config: Mapping[str, Any]) -> bool:
        """Whether this family reads HF ``config`` (``architectures[0]``, else model_type)."""
        archs = config.get("architectures") or []
        return archs[0] in self.architectures if archs else \
            config.get("model_type") in self.model_types

    def config_from_hf(self, config: Mapping[str, Any]) -> Any:
        """Our config for HF ``config``, its ``model_type`` set from ``architectures[0]``."""
        archs = config.get("architectures") or []
        model_type = self.architectures[archs[0]] if archs else config["model_type"]
        return self.parse_config({**config, "model_type": model_type})

    def kv_heads(self, config: Any) -> int:
        """The number of kv heads of ``config`` (the KV cache axis split over ``model``)."""
        return int(getattr(config, self.kv_heads_field))


_FAMILIES: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add ``family``; ValueError if its name, an architecture, a model_type or its config
    class already belongs to another family. Returns ``family``."""
    for other in _FAMILIES.values():
        clash = ([family.name] if other.name == family.name else []) \
            + sorted(set(family.architectures) & set(other.architectures)) \
            + sorted(set(family.model_types) & set(other.model_types)) \
            + ([family.config.__name__] if other.config is family.config else [])
        if clash:
            raise ValueError(f"family {family.name!r}: {clash} already registered by family "
                             f"{other.name!r}")
    _FAMILIES[family.name] = family
    return family


def families() -> tuple[Family, ...]:
    """Every registered family, in registration order."""
    return tuple(_FAMILIES.values())


def supported_architectures() -> list[str]:
    """Sorted HF architecture names of every registered family."""
    return sorted(a for f in _FAMILIES.values() for a in f.architectures)


def family_for_config(config: Mapping[str, Any]) -> Family:
    """The family of a HF ``config.json`` dict; ValueError naming the architecture (or
    model_type) and listing the supported ones."""
    for family in _FAMILIES.values():
        if family.handles(config):
            return family
    archs = config.get("architectures") or []
    found = archs[0] if archs else f"model_type={config.get('model_type')!r}"
    raise ValueError(f"unsupported architecture {found}; supported: "
                     f"{supported_architectures()}")


def family_of(model: Any) -> Family | None:
    """The family of ``model`` (by ``type(model.config)``, most derived class first), or
    None for a model of no registered family."""
    by_config = {f.config: f for f in _FAMILIES.values()}
    for cls in type(getattr(model, "config", None)).__mro__:
        if cls in by_config:
            return by_config[cls]
    return None
