"""Rotary position embeddings: transformers' rope types as host tables, applied inside jit.

``ROPE_INIT_FUNCTIONS`` maps a Hugging Face ``rope_type`` to a host-side (numpy) function
``(dim, params) -> (inv_freq [dim // 2] float32, attention_factor)`` ported from
transformers' ``modeling_rope_utils`` with the same float32 arithmetic; ``dim`` is the
rotary dimension (``head_dim * partial_rotary_factor``) and ``params`` holds
``rope_theta``, ``max_position_embeddings`` and the type's own keys (``factor``, ...).

`Rope` is the static (hashable) description a model keeps; inside jit::

    rope = Rope(head_dim=64, theta=1e4, scaling=RopeScaling(rope_type="linear", factor=2.0))
    cos, sin = rope.tables(positions, jnp.float32)      # [batch, t, 1, rotary_dim]
    q = apply_rope(q, cos, sin)                          # [batch, t, heads, 64]

Two types depend on the call, as transformers decides them once per forward pass from the
largest position of the batch (``seq_len = max(positions) + 1``): ``dynamic`` recomputes
its base from ``seq_len`` with jnp (when it exceeds ``max_position_embeddings``) and
``longrope`` switches from ``short_factor`` to ``long_factor`` when ``seq_len`` exceeds
``original_max_position_embeddings``. Positions stay traced, so nothing recompiles.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

RopeInit = Callable[[int, Mapping[str, Any]], tuple[np.ndarray, float]]
F32 = np.float32


def _exponents(dim: int) -> np.ndarray:
    """``arange(0, dim, 2) / dim`` in float32 (transformers' int64 arange, then float)."""
    return np.arange(0, dim, 2, dtype=F32) / F32(dim)


def _pow(base: float, exponents: np.ndarray) -> np.ndarray:
    """``base ** exponents`` rounded to float32, as torch's ``scalar ** float32 tensor``."""
    return (np.float64(base) ** exponents.astype(np.float64)).astype(F32)


def _default_init(dim: int, p: Mapping[str, Any]) -> tuple[np.ndarray, float]:
    """``1 / theta ** (2i / dim)``."""
    return (F32(1.0) / _pow(p["rope_theta"], _exponents(dim))).astype(F32), 1.0


def _linear_init(dim: int, p: Mapping[str, Any]) -> tuple[np.ndarray, float]:
    """Position interpolation: the default frequencies divided by ``factor``."""
    inv, _ = _default_init(dim, p)
    return (inv / F32(p["factor"])).astype(F32), 1.0


def _dynamic_init(dim: int, p: Mapping[str, Any]) -> tuple[np.ndarray, float]:
    """Dynamic NTK at ``seq_len = max_position_embeddings`` (the table before growth)."""
    mpe, factor = p["max_position_embeddings"], p["factor"]
    theta = p["rope_theta"] * ((factor * mpe / mpe) - (factor - 1)) ** (dim / (dim - 2))
    return (F32(1.0) / _pow(theta, _exponents(dim))).astype(F32), 1.0


def dynamic_inv_freq(dim: int, p: Mapping[str, Any], seq_len: Int[Array, ""]
                     ) -> Float[Array, " half"]:
    """Dynamic NTK frequencies for a call whose longest row is ``seq_len`` (traced), in
    float32 as transformers' ``_compute_dynamic_ntk_parameters`` with a tensor ``seq_len``."""
    mpe, factor = p["max_position_embeddings"], p["factor"]
    seq = jnp.maximum(seq_len, mpe).astype(jnp.float32)
    base = p["rope_theta"] * ((factor * seq / mpe) - (factor - 1)) ** (dim / (dim - 2))
    return 1.0 / base ** jnp.asarray(_exponents(dim))


def _yarn_init(dim: int, p: Mapping[str, Any]) -> tuple[np.ndarray, float]:
    """YaRN: interpolate the low frequencies, keep the high ones, ramp in between;
    ``attention_factor`` (mscale) defaults to ``0.1 ln(factor) + 1``."""
    base, omp = p["rope_theta"], p["original_max_position_embeddings"]
    factor = p.get("factor") or p["max_position_embeddings"] / omp

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = p.get("attention_factor")
    if attention is None:
        m, m_all = p.get("mscale"), p.get("mscale_all_dim")
        attention = float(mscale(factor, m) / mscale(factor, m_all)) if m and m_all \
            else mscale(factor)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(omp / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(p.get("beta_fast") or 32), correction_dim(p.get("beta_slow") or 1)
    if p.get("truncate", True) is not False:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    pos_freqs = _pow(base, _exponents(dim))
    extrapolation, interpolation = F32(1.0) / pos_freqs, F32(1.0) / (F32(factor) * pos_freqs)
    ramp = np.clip((np.arange(dim // 2, dtype=F32) - F32(low)) / F32(high - low), 0, 1)
    keep = F32(1.0) - ramp.astype(F32)  # 1: extrapolate (high frequencies), 0: interpolate
    inv = interpolation * (F32(1.0) - keep) + extrapolation * keep
    return inv.astype(F32), float(attention)


def _longrope_factors(dim: int, p: Mapping[str, Any], factors: Any) -> np.ndarray:
    ext = np.asarray(factors, F32)
    return (F32(1.0) / (ext * _pow(p["rope_theta"], _exponents(dim)))).astype(F32)


def _longrope_init(dim: int, p: Mapping[str, Any]) -> tuple[np.ndarray, float]:
    """LongRoPE with ``short_factor`` (the long table is `Rope.long_inv_freq`);
    ``attention_factor`` defaults to ``sqrt(1 + ln(factor) / ln(original_max))``."""
    omp = p["original_max_position_embeddings"]
    factor = p.get("factor") or p["max_position_embeddings"] / omp
    attention = p.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(omp))
    return _longrope_factors(dim, p, p["short_factor"]), float(attention)


def _llama3_init(dim: int, p: Mapping[str, Any]) -> tuple[np.ndarray, float]:
    """Llama 3.1: divide low frequencies by ``factor``, smooth the medium band."""
    inv, _ = _default_init(dim, p)
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old = p["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = F32(2 * math.pi) / inv
    llama = np.where(wavelen > low_wavelen, inv / F32(factor), inv)
    smooth = (F32(old) / wavelen - F32(low)) / F32(high - low)
    smoothed = (F32(1.0) - smooth) * llama / F32(factor) + smooth * llama
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, llama).astype(F32), 1.0


ROPE_INIT_FUNCTIONS: dict[str, RopeInit] = {
    "default": _default_init, "linear": _linear_init, "dynamic": _dynamic_init,
    "yarn": _yarn_init, "longrope": _longrope_init, "llama3": _llama3_init,
}
# Keys each rope type needs in its parameters (besides rope_theta).
_REQUIRED = {"linear": ("factor",), "dynamic": ("factor",),
             "yarn": ("original_max_position_embeddings",),
             "longrope": ("short_factor", "long_factor", "original_max_position_embeddings"),
             "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                        "original_max_position_embeddings")}
_USES_ORIGINAL_MAX = ("llama3", "yarn", "longrope")


def rope_init(rope_type: str, dim: int, params: Mapping[str, Any]) -> tuple[np.ndarray, float]:
    """``(inv_freq [dim // 2], attention_factor)`` of ``rope_type`` (host side)."""
    init = ROPE_INIT_FUNCTIONS.get(rope_type)
    if init is None:
        raise ValueError(f"unsupported rope_type {rope_type!r}; supported: "
                         f"{sorted(ROPE_INIT_FUNCTIONS)}")
    return init(dim, params)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RopeScaling:
    """The non-default part of HF ``rope_parameters`` / ``rope_scaling`` (hashable: the
    factor lists are tuples). Field names are transformers' keys."""

    rope_type: str = "default"
    factor: float | None = None
    original_max_position_embeddings: int | None = None
    attention_factor: float | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("short_factor", "long_factor"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(x) for x in value))
        if self.rope_type not in ROPE_INIT_FUNCTIONS:
            raise ValueError(f"unsupported rope_type {self.rope_type!r} in rope_parameters; "
                             f"supported: {sorted(ROPE_INIT_FUNCTIONS)}")
        missing = [k for k in _REQUIRED.get(self.rope_type, ()) if getattr(self, k) is None]
        if missing:
            raise ValueError(f"rope_type {self.rope_type!r} needs rope_parameters {missing}")

    def as_dict(self) -> dict[str, Any]:
        """The set keys, lists for the factor tuples (a HF ``rope_parameters`` fragment)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items() if v is not None}


_SCALING_KEYS = frozenset(f.name for f in dataclasses.fields(RopeScaling))


class RopeSettings(NamedTuple):
    """What a HF config says about one rope: theta, scaling (None: default), rotary part."""

    theta: float
    scaling: RopeScaling | None
    partial_rotary_factor: float


def rope_from_hf(d: Mapping[str, Any], *, layer_type: str | None = None,
                 default_theta: float = 10000.0, legacy_theta_key: str = "rope_theta",
                 legacy_scaling: bool = True) -> RopeSettings:
    """Parse the rope of a HF config dict: v5 ``rope_parameters`` (flat, or keyed by
    ``layer_type`` as Gemma 3's ``full_attention`` / ``sliding_attention``) or 4.x
    ``rope_theta`` (``legacy_theta_key``) + ``rope_scaling`` (if ``legacy_scaling``;
    it wins over ``rope_parameters`` when both are set, as in transformers).

    ``original_max_position_embeddings`` defaults to ``max_position_embeddings``; a
    top-level one wins for a flat dict (Phi-3), as in transformers. Raises ValueError
    naming an unknown rope type, a missing key or a key no rope type here implements.
    """
    params = d.get("rope_parameters") or {}
    nested = any(k in ("full_attention", "sliding_attention") for k in params)
    p = dict(params.get(layer_type or "full_attention") or {} if nested else params)
    legacy = d.get("rope_scaling") if legacy_scaling else None
    if legacy:  # transformers: rope_scaling replaces a flat dict, updates a nested one
        p = {**p, **legacy} if nested else dict(legacy)
    if "type" in p:
        p.setdefault("rope_type", p.pop("type"))
    theta = float(p.pop("rope_theta", d.get(legacy_theta_key, default_theta)))
    partial = float(p.pop("partial_rotary_factor", d.get("partial_rotary_factor") or 1.0))
    unknown = sorted(set(p) - _SCALING_KEYS)
    if unknown:
        raise ValueError(f"unsupported rope_parameters/rope_scaling keys {unknown} "
                         f"(rope_type {p.get('rope_type', 'default')!r})")
    kind = p.get("rope_type", "default")
    if kind == "default":
        return RopeSettings(theta, None, partial)
    if kind in _USES_ORIGINAL_MAX:
        top = d.get("original_max_position_embeddings")
        if top is not None and not nested:
            p["original_max_position_embeddings"] = top
        p.setdefault("original_max_position_embeddings", d.get("max_position_embeddings"))
    return RopeSettings(theta, RopeScaling(**p), partial)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Rope:
    """One rope of a model (static): frequencies on the host, cos/sin tables in jit."""

    head_dim: int
    theta: float = 10000.0
    scaling: RopeScaling | None = None
    partial_rotary_factor: float = 1.0
    max_position_embeddings: int = 2048

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def rope_type(self) -> str:
        return "default" if self.scaling is None else self.scaling.rope_type

    def params(self) -> dict[str, Any]:
        """The ``params`` of the `ROPE_INIT_FUNCTIONS` entry."""
        scaling = {} if self.scaling is None else self.scaling.as_dict()
        return {**scaling, "rope_theta": self.theta,
                "max_position_embeddings": self.max_position_embeddings}

    @functools.cached_property
    def init(self) -> tuple[np.ndarray, float]:
        """``(inv_freq, attention_factor)`` at initialisation (transformers' buffers)."""
        return rope_init(self.rope_type, self.rotary_dim, self.params())

    @functools.cached_property
    def long_inv_freq(self) -> np.ndarray:
        """LongRoPE's table past ``original_max_position_embeddings``."""
        return _longrope_factors(self.rotary_dim, self.params(), self.scaling.long_factor)

    def inv_freq(self, positions: Int[Array, "batch t"]) -> Float[Array, " half"]:
        """This call's inverse frequencies (``dynamic`` / ``longrope``: from the largest
        position of the call, as transformers' ``dynamic_rope_update``)."""
        inv = jnp.asarray(self.init[0])
        if self.rope_type not in ("dynamic", "longrope"):
            return inv
        seq_len = jnp.max(positions) + 1
        if self.rope_type == "dynamic":
            grown = dynamic_inv_freq(self.rotary_dim, self.params(), seq_len)
            return jnp.where(seq_len > self.max_position_embeddings, grown, inv)
        omp = self.scaling.original_max_position_embeddings
        return jnp.where(seq_len > omp, jnp.asarray(self.long_inv_freq), inv)

    def tables(self, positions: Int[Array, "batch t"], dtype: Any
               ) -> tuple[Float[Array, "batch t 1 rd"], Float[Array, "batch t 1 rd"]]:
        """cos/sin ``[batch, t, 1, rotary_dim]`` (float32, times the attention factor,
        cast to ``dtype``)."""
        freqs = positions.astype(jnp.float32)[..., None] * self.inv_freq(positions)
        emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [batch, t, 1, rd]
        cos, sin = jnp.cos(emb), jnp.sin(emb)
        factor = self.init[1]
        if factor != 1.0:
            cos, sin = cos * factor, sin * factor
        return cos.astype(dtype), sin.astype(dtype)


def apply_rope(x: Float[Array, "batch t heads hd"], cos: Array, sin: Array
               ) -> Float[Array, "batch t heads hd"]:
    """Rotate the two halves of the first ``cos.shape[-1]`` dims of ``x`` (HF's
    ``rotate_half``); the rest passes through (``partial_rotary_factor < 1``)."""
    rd = cos.shape[-1]
    rot, rest = (x, None) if rd == x.shape[-1] else (x[..., :rd], x[..., rd:])
    x1, x2 = jnp.split(rot, 2, axis=-1)
    out = rot * cos + jnp.concatenate([-x2, x1], axis=-1) * sin
    return out if rest is None else jnp.concatenate([out, rest], axis=-1)

