"""Qwen3 on the shared decoder: Llama plus a per-head RMSNorm of q and k before RoPE, an
explicit ``head_dim``, q/k/v/o biases when ``attention_bias``, Qwen2's sliding layers.

Registers the ``qwen3`` family (Qwen3ForCausalLM); parameters as `jaxgen.models.decoder`
with ``self_attn/q_norm/scale`` and ``self_attn/k_norm/scale`` of ``[head_dim]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from jaxgen.models import decoder_config as dc
from jaxgen.models.decoder import register_decoder
from jaxgen.models.decoder_config import DecoderConfig

_DEFAULTS = dict(vocab_size=151936, hidden_size=4096, intermediate_size=22016,
                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                 head_dim=128, max_position_embeddings=32768, rms_norm_eps=1e-6,
                 max_window_layers=28)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Qwen3Config(DecoderConfig):
    """Qwen3 hyper-parameters (``qkv_bias == o_bias``: HF ``attention_bias``)."""

    FIXED: ClassVar[tuple[str, ...]] = (
        "norm_style", "layout", "qk_norm", "mlp_bias", "embed_scale", "query_pre_attn_scalar",
        "attn_logit_softcapping", "final_logit_softcapping", "partial_rotary_factor",
        "local_rope_theta", "local_rope_scaling", "no_rope_layers", "model_type")
    qk_norm: str | None = "head"
    model_type: str = "qwen3"

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> Qwen3Config:
        """Parse a Hugging Face Qwen3 ``config.json`` dict."""
        dc.refuse(d, "qwen3", "mlp_bias")
        kw = dc.common_from_hf(d, _DEFAULTS)
        window, types = dc.max_window_layers(d, kw["num_hidden_layers"],
                                          _DEFAULTS["max_window_layers"])
        bias = bool(d.get("attention_bias", False))
        return cls(**kw, **dc.rope_fields(d), qkv_bias=bias, o_bias=bias,
                   sliding_window=window, layer_types=types)

    def to_hf(self) -> dict[str, Any]:
        """A Hugging Face ``config.json`` dict (Qwen3ForCausalLM)."""
        if self.qkv_bias != self.o_bias:
            raise ValueError("a 'qwen3' config needs qkv_bias == o_bias (HF attention_bias)")
        sliding = self.sliding_window is not None and "sliding_attention" in self.layer_types
        return {**dc.common_to_hf(self, "Qwen3ForCausalLM"), "attention_bias": self.qkv_bias,
                "use_sliding_window": sliding,
                "sliding_window": self.sliding_window if sliding else None,
                "layer_types": list(self.layer_types)}


FAMILY = register_decoder("qwen3", {"Qwen3ForCausalLM": "qwen3"}, Qwen3Config)
