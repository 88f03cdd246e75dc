"""`DecoderConfig`: every knob of the shared decoder builder, plus the helpers the family
modules parse Hugging Face ``config.json`` dicts with.

A family config subclasses `DecoderConfig`, redeclares the defaults of the features it
fixes (e.g. Gemma 2: ``layout="sandwich"``, ``norm_style="gemma"``) and lists them in
``FIXED`` so that ``to_hf`` refuses a config its Hugging Face class could not express.
Its ``from_hf`` reads the HF dict with that class's defaults and refuses, naming it,
every attribute that would change the computation and is not implemented here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import jax

from jaxgen.models.rope import Rope, RopeScaling, rope_from_hf

LAYER_TYPES = ("full_attention", "sliding_attention")
ACTIVATIONS: dict[str, Callable[[Any], Any]] = {
    "silu": jax.nn.silu, "swish": jax.nn.silu, "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
}
_CHOICES = {"norm_style": ("llama", "olmo2", "gemma"), "layout": ("pre", "sandwich", "post"),
            "qk_norm": (None, "head", "projection"), "hidden_act": tuple(ACTIVATIONS)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecoderConfig:
    """Hyper-parameters of a decoder-only transformer (HF names where they exist).

    ``norm_style``: RMSNorm as Llama (``w * cast(x_hat)``), OLMo 2 (``cast(w * x_hat)``) or
    Gemma (``cast(x_hat * (1 + w))``, zero-initialised). ``layout``: ``"pre"`` (Llama:
    ``x + attn(n1(x))``, ``x + mlp(n2(x))``), ``"sandwich"`` (Gemma: ``x + n2(attn(n1(x)))``,
    ``x + n4(mlp(n3(x)))``), ``"post"`` (OLMo 2: ``x + n2(attn(x))``, ``x + n4(mlp(x))``).
    ``qk_norm``: RMSNorm of q and k before RoPE, per head (Qwen3, Gemma 3) or over the
    whole projection (OLMo 2). ``layer_types[i]`` is ``"full_attention"`` or
    ``"sliding_attention"``; sliding layers attend to keys less than ``sliding_window``
    positions back and keep a ring buffer (`jaxgen.models.cache.RingCache`).
    """

    FIXED: ClassVar[tuple[str, ...]] = ()  # features the family's HF class cannot vary

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None  # None: = num_attention_heads (MHA)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    hidden_act: str = "silu"  # gated MLP: down(act(gate(x)) * up(x))
    rms_norm_eps: float = 1e-6
    norm_style: str = "llama"
    layout: str = "pre"
    qk_norm: str | None = None
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    embed_scale: bool = False  # embeddings times sqrt(hidden_size) (Gemma)
    query_pre_attn_scalar: float | None = None  # score scale 1/sqrt(this), else 1/sqrt(hd)
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None  # None: the default rope type
    partial_rotary_factor: float = 1.0  # RoPE on the first head_dim * this dims
    local_rope_theta: float | None = None  # sliding layers' own rope (Gemma 3); None: same
    local_rope_scaling: RopeScaling | None = None
    no_rope_layers: tuple[int, ...] | None = None  # HF's: 1 RoPE, 0 none (SmolLM3)
    max_position_embeddings: int = 2048
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None  # None: all sliding iff sliding_window is set
    model_type: str = "llama"
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        n = self.num_hidden_layers
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if self.layer_types is None:
            kind = LAYER_TYPES[self.sliding_window is not None]
            object.__setattr__(self, "layer_types", (kind,) * n)
        for name in ("layer_types", "no_rope_layers"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
                if len(value) != n:
                    raise ValueError(f"{name} has {len(value)} entries, expected "
                                     f"num_hidden_layers={n}")
        self._validate()

    def _validate(self) -> None:
        bad = sorted(set(self.layer_types) - set(LAYER_TYPES))
        if bad:
            raise ValueError(f"unsupported layer_types {bad}; supported: {list(LAYER_TYPES)}")
        for name, allowed in _CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported; supported: "
                                 f"{list(allowed)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple "
                             f"of num_key_value_heads={self.num_key_value_heads}")
        if int(self.head_dim * self.partial_rotary_factor) % 2:
            raise ValueError(f"the rotary dimension must be even, got head_dim={self.head_dim} "
                             f"x partial_rotary_factor={self.partial_rotary_factor}")

    def window(self, layer: int) -> int | None:
        """The sliding window of ``layer``, or None for full attention."""
        if self.sliding_window is None or self.layer_types[layer] != "sliding_attention":
            return None
        return self.sliding_window

    def kind(self, layer: int) -> str:
        """The cache stack of ``layer``: ``"sliding_attention"`` if it has a window."""
        return LAYER_TYPES[self.window(layer) is not None]

    @property
    def kinds(self) -> tuple[str, ...]:
        """The cache stacks of the model, in order of first use."""
        return tuple(dict.fromkeys(self.kind(i) for i in range(self.num_hidden_layers)))

    def rope(self, layer: int) -> Rope | None:
        """``layer``'s rope (its kind's: Gemma 3's sliding layers have their own), or None
        for a layer without RoPE."""
        if self.no_rope_layers is not None and not self.no_rope_layers[layer]:
            return None
        local = self.window(layer) is not None and self.local_rope_theta is not None
        theta, scaling = ((self.local_rope_theta, self.local_rope_scaling) if local
                          else (self.rope_theta, self.rope_scaling))
        return Rope(head_dim=self.head_dim, theta=theta, scaling=scaling,
                    partial_rotary_factor=self.partial_rotary_factor,
                    max_position_embeddings=self.max_position_embeddings)

    @property
    def attn_scale(self) -> float:
        """The attention score scale: ``1/sqrt(query_pre_attn_scalar or head_dim)``."""
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

    def check_fixed(self) -> None:
        """ValueError naming a ``FIXED`` feature that differs from the family's."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in self.FIXED:
            if getattr(self, name) != defaults[name]:
                raise ValueError(f"a {self.model_type!r} config has {name}={defaults[name]!r}, "
                                 f"got {getattr(self, name)!r}")


# ------------------------------------------------------------------ parsing HF dicts


def refuse(d: Mapping[str, Any], family: str, *names: str) -> None:
    """ValueError naming the first of ``names`` set (truthy) in ``d``: an attribute that
    changes the computation and that ``family`` does not implement."""
    for name in names:
        if d.get(name):
            raise ValueError(f"{name}={d[name]!r} is not supported for {family} models")


def choice(d: Mapping[str, Any], key: str, default: Any, allowed: Iterable[Any]) -> Any:
    """``d[key]`` (default ``default``), ValueError naming it unless in ``allowed``."""
    value = d.get(key, default)
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{key}={value!r} is not supported; supported: {allowed}")
    return value


def common_from_hf(d: Mapping[str, Any], defaults: Mapping[str, Any],
                   act_key: str = "hidden_act") -> dict[str, Any]:
    """The `DecoderConfig` sizes, activation (HF key ``act_key``), norm eps, embedding
    tying and special ids of HF dict ``d``; a missing key takes the family's HF default
    from ``defaults``."""
    def get(key: str) -> Any:
        return d[key] if d.get(key) is not None else defaults.get(key)

    heads = get("num_attention_heads")
    return dict(
        vocab_size=get("vocab_size"), hidden_size=get("hidden_size"),
        intermediate_size=get("intermediate_size"), num_hidden_layers=get("num_hidden_layers"),
        num_attention_heads=heads, num_key_value_heads=get("num_key_value_heads") or heads,
        head_dim=get("head_dim") or get("hidden_size") // heads,
        hidden_act=choice(d, act_key, defaults.get(act_key, "silu"), ACTIVATIONS),
        rms_norm_eps=get("rms_norm_eps") or 1e-6,
        max_position_embeddings=get("max_position_embeddings") or 2048,
        tie_word_embeddings=bool(d.get("tie_word_embeddings",
                                       defaults.get("tie_word_embeddings", False))),
        bos_token_id=d.get("bos_token_id", defaults.get("bos_token_id")),
        eos_token_id=d.get("eos_token_id", defaults.get("eos_token_id")),
        pad_token_id=d.get("pad_token_id", defaults.get("pad_token_id")))


def rope_fields(d: Mapping[str, Any], *, partial: bool = False, **kw: Any) -> dict[str, Any]:
    """``rope_theta``, ``rope_scaling`` and ``partial_rotary_factor`` of a HF dict (see
    `rope_from_hf` for ``kw``); ``partial=False`` refuses a partial rotary factor."""
    s = rope_from_hf(d, **kw)
    if not partial and s.partial_rotary_factor != 1.0:
        raise ValueError(f"partial_rotary_factor={s.partial_rotary_factor} is not supported "
                         f"for {d.get('model_type')!r} models")
    return dict(rope_theta=s.theta, rope_scaling=s.scaling,
                partial_rotary_factor=s.partial_rotary_factor)


def max_window_layers(d: Mapping[str, Any], n: int, first_default: int
                      ) -> tuple[int | None, tuple[str, ...] | None]:
    """Qwen2 / Qwen3 sliding layers: ``(sliding_window, layer_types)``; the window only
    when ``use_sliding_window``, layers from ``max_window_layers`` on unless
    ``layer_types`` says."""
    window = d.get("sliding_window", 4096) if d.get("use_sliding_window") else None
    first = d.get("max_window_layers", first_default)
    types = d.get("layer_types") or (None if window is None else tuple(
        LAYER_TYPES[i >= first] for i in range(n)))
    return window, types


def rope_dict(theta: float, scaling: RopeScaling | None, partial: float = 1.0
              ) -> dict[str, Any]:
    """A HF v5 ``rope_parameters`` dict."""
    rope = {"rope_type": "default", **({} if scaling is None else scaling.as_dict()),
            "rope_theta": theta}
    if partial != 1.0:
        rope["partial_rotary_factor"] = partial
    return rope


def common_to_hf(c: DecoderConfig, architecture: str) -> dict[str, Any]:
    """The HF ``config.json`` keys every family writes (check ``FIXED`` first)."""
    c.check_fixed()
    rope = rope_dict(c.rope_theta, c.rope_scaling, c.partial_rotary_factor)
    eos = list(c.eos_token_id) if isinstance(c.eos_token_id, tuple) else c.eos_token_id
    return {
        "architectures": [architecture], "model_type": c.model_type,
        "vocab_size": c.vocab_size, "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size, "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim,
        "hidden_act": c.hidden_act, "rms_norm_eps": c.rms_norm_eps, "rope_theta": c.rope_theta,
        "rope_parameters": rope, "max_position_embeddings": c.max_position_embeddings,
        "tie_word_embeddings": c.tie_word_embeddings, "bos_token_id": c.bos_token_id,
        "eos_token_id": eos, "pad_token_id": c.pad_token_id,
    }
