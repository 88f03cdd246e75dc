"""Gemma 2 and Gemma 3 (text) on the shared decoder.

Gemma 2: ``(1 + w)`` RMSNorms before *and* after attention and MLP (layout "sandwich"),
embeddings times ``sqrt(hidden_size)``, scores scaled by ``query_pre_attn_scalar ** -0.5``
and soft-capped (``attn_logit_softcapping``), final logits soft-capped, GELU-tanh GeGLU,
sliding and global layers alternating. Gemma 3 adds a per-head q/k norm, a 5:1
sliding:global pattern (``sliding_window_pattern``) and a separate rope for the sliding
layers (``rope_parameters["sliding_attention"]`` / 4.x ``rope_local_base_freq``). A
``Gemma3ForConditionalGeneration`` checkpoint loads as its text model: ``text_config`` is
unwrapped here, the ``language_model`` tensor prefix by the family's tensor aliases.

Registers the ``gemma2`` (Gemma2ForCausalLM) and ``gemma3`` (Gemma3ForCausalLM, model_type
``gemma3_text``; Gemma3ForConditionalGeneration) families.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from jaxgen.models import decoder_config as dc
from jaxgen.models.decoder import register_decoder
from jaxgen.models.decoder_config import DecoderConfig

_BASE = dict(hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
             num_attention_heads=8, num_key_value_heads=4, head_dim=256, rms_norm_eps=1e-6,
             pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True,
             hidden_activation="gelu_pytorch_tanh")
_DEFAULTS = {"gemma2": {**_BASE, "vocab_size": 256000, "max_position_embeddings": 8192},
             "gemma3_text": {**_BASE, "vocab_size": 262208, "max_position_embeddings": 131072}}


def pattern_layers(n: int, pattern: int) -> tuple[str, ...]:
    """transformers' default Gemma layer types: global every ``pattern``-th layer."""
    return tuple(dc.LAYER_TYPES[bool((i + 1) % pattern)] for i in range(n))


_FIXED = ("norm_style", "layout", "qk_norm", "embed_scale", "mlp_bias", "partial_rotary_factor",
          "no_rope_layers", "model_type")


def _gemma_kw(d: dict[str, Any], model_type: str) -> dict[str, Any]:
    """What Gemma 2 and 3 read alike from a HF dict."""
    dc.refuse(d, model_type, "use_bidirectional_attention", "mlp_bias")
    bias = bool(d.get("attention_bias", False))
    return dict(**dc.common_from_hf(d, _DEFAULTS[model_type], "hidden_activation"), qkv_bias=bias,
                o_bias=bias, query_pre_attn_scalar=d.get("query_pre_attn_scalar", 256),
                sliding_window=d.get("sliding_window", 4096))


def _gemma_hf(c: DecoderConfig, architecture: str) -> dict[str, Any]:
    if c.qkv_bias != c.o_bias:
        raise ValueError(f"a {c.model_type!r} config needs qkv_bias == o_bias (attention_bias)")
    d = dc.common_to_hf(c, architecture)
    d["hidden_activation"] = d.pop("hidden_act")
    return {**d, "attention_bias": c.qkv_bias, "query_pre_attn_scalar": c.query_pre_attn_scalar,
            "sliding_window": c.sliding_window, "layer_types": list(c.layer_types),
            "attn_logit_softcapping": c.attn_logit_softcapping,
            "final_logit_softcapping": c.final_logit_softcapping}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Gemma2Config(DecoderConfig):
    """Gemma 2 hyper-parameters (HF names; the Gemma features are fixed defaults)."""

    FIXED: ClassVar[tuple[str, ...]] = (*_FIXED, "local_rope_theta", "local_rope_scaling")
    PATTERN: ClassVar[int] = 2  # default layer_types: every PATTERN-th layer is global
    hidden_act: str = "gelu_pytorch_tanh"
    norm_style: str = "gemma"
    layout: str = "sandwich"
    embed_scale: bool = True
    tie_word_embeddings: bool = True
    query_pre_attn_scalar: float | None = 256
    attn_logit_softcapping: float | None = 50.0
    final_logit_softcapping: float | None = 30.0
    sliding_window: int | None = 4096
    model_type: str = "gemma2"

    def __post_init__(self) -> None:
        if self.layer_types is None:
            object.__setattr__(self, "layer_types", pattern_layers(self.num_hidden_layers,
                                                                   self.PATTERN))
        super().__post_init__()

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> Gemma2Config:
        """Parse a Hugging Face Gemma 2 ``config.json`` dict."""
        return cls(**_gemma_kw(d, "gemma2"), **dc.rope_fields(d),
                   layer_types=d.get("layer_types"),
                   attn_logit_softcapping=d.get("attn_logit_softcapping", 50.0),
                   final_logit_softcapping=d.get("final_logit_softcapping", 30.0))

    def to_hf(self) -> dict[str, Any]:
        """A Hugging Face ``config.json`` dict (Gemma2ForCausalLM)."""
        return _gemma_hf(self, "Gemma2ForCausalLM")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Gemma3Config(Gemma2Config):
    """Gemma 3 text hyper-parameters: Gemma 2's plus q/k norm and a local rope."""

    FIXED: ClassVar[tuple[str, ...]] = _FIXED
    PATTERN: ClassVar[int] = 6  # 5 sliding layers, then a global one
    qk_norm: str | None = "head"
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    rope_theta: float = 1e6
    local_rope_theta: float | None = 10000.0
    model_type: str = "gemma3_text"

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> Gemma3Config:
        """Parse a HF Gemma 3 text config dict, or a ``Gemma3ForConditionalGeneration``
        one (its ``text_config``; the vision tower is not loaded)."""
        if d.get("model_type") == "gemma3" or "text_config" in d:
            top = {k: d[k] for k in ("tie_word_embeddings",) if k in d}
            d = {**top, **(d.get("text_config") or {})}
        kw = _gemma_kw(d, "gemma3_text")
        pattern = d.get("sliding_window_pattern", d.get("_sliding_window_pattern", cls.PATTERN))
        types = d.get("layer_types") or pattern_layers(kw["num_hidden_layers"], pattern)
        local = dc.rope_fields(d, layer_type="sliding_attention", legacy_theta_key=
                            "rope_local_base_freq", legacy_scaling=False)
        return cls(**kw, **dc.rope_fields(d, layer_type="full_attention", default_theta=1e6),
                   local_rope_theta=local["rope_theta"], local_rope_scaling=local["rope_scaling"],
                   layer_types=types, attn_logit_softcapping=d.get("attn_logit_softcapping"),
                   final_logit_softcapping=d.get("final_logit_softcapping"))

    def to_hf(self) -> dict[str, Any]:
        """A Hugging Face ``config.json`` dict (Gemma3ForCausalLM)."""
        d = _gemma_hf(self, "Gemma3ForCausalLM")
        local = self.rope_theta if self.local_rope_theta is None else self.local_rope_theta
        d["rope_parameters"] = {
            "full_attention": d["rope_parameters"],
            "sliding_attention": dc.rope_dict(local, self.local_rope_scaling)}
        return d


# Gemma 3 checkpoints name the text model's tensors "model.language_model.*" (transformers
# 5 ConditionalGeneration) or "language_model.model.*" (4.x); the vision tower is skipped.
_GEMMA3_ALIASES = (("model.language_model.", "model."), ("language_model.model.", "model."),
                   ("language_model.lm_head.", "lm_head."))
_VISION = ("model.vision_tower.", "model.multi_modal_projector.", "vision_tower.",
           "multi_modal_projector.")

GEMMA2 = register_decoder("gemma2", {"Gemma2ForCausalLM": "gemma2"}, Gemma2Config)
GEMMA3 = register_decoder("gemma3", {"Gemma3ForCausalLM": "gemma3_text",
                                     "Gemma3ForConditionalGeneration": "gemma3"},
                          Gemma3Config, aliases=_GEMMA3_ALIASES, skipped=_VISION)
