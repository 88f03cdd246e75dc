"""SmolLM3 on the shared decoder: Llama with no RoPE on every ``no_rope_layer_interval``-th
layer (``no_rope_layers[i] == 0``; the default interval is 4), optional sliding windows on
those layers (``use_sliding_window``), q/k/v/o biases (``attention_bias``) and MLP biases.

Registers the ``smollm3`` family (SmolLM3ForCausalLM).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from jaxgen.models import decoder_config as dc
from jaxgen.models.decoder import register_decoder
from jaxgen.models.decoder_config import DecoderConfig

_DEFAULTS = dict(vocab_size=128256, hidden_size=2048, intermediate_size=11008,
                 num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=4,
                 max_position_embeddings=32768, rms_norm_eps=1e-6, tie_word_embeddings=True,
                 pad_token_id=128004, bos_token_id=128000, eos_token_id=128001)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SmolLM3Config(DecoderConfig):
    """SmolLM3 hyper-parameters (``qkv_bias == o_bias``: HF ``attention_bias``)."""

    FIXED: ClassVar[tuple[str, ...]] = (
        "norm_style", "layout", "qk_norm", "embed_scale", "query_pre_attn_scalar",
        "attn_logit_softcapping", "final_logit_softcapping", "partial_rotary_factor",
        "local_rope_theta", "local_rope_scaling", "model_type")
    tie_word_embeddings: bool = True
    rope_theta: float = 2e6
    model_type: str = "smollm3"

    def __post_init__(self) -> None:
        if self.no_rope_layers is None:  # HF's default: every 4th layer without RoPE
            object.__setattr__(self, "no_rope_layers", tuple(
                int((i + 1) % 4 != 0) for i in range(self.num_hidden_layers)))
        super().__post_init__()

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> SmolLM3Config:
        """Parse a Hugging Face SmolLM3 ``config.json`` dict."""
        kw = dc.common_from_hf(d, _DEFAULTS)
        n, interval = kw["num_hidden_layers"], d.get("no_rope_layer_interval", 4)
        no_rope = d.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(n)]
        window = d.get("sliding_window") if d.get("use_sliding_window") else None
        types = d.get("layer_types") or [dc.LAYER_TYPES[window is not None and not no_rope[i]]
                                         for i in range(n)]
        bias = bool(d.get("attention_bias", False))
        return cls(**kw, **dc.rope_fields(d, default_theta=2e6), qkv_bias=bias, o_bias=bias,
                   mlp_bias=bool(d.get("mlp_bias", False)), no_rope_layers=no_rope,
                   sliding_window=window, layer_types=types)

    def to_hf(self) -> dict[str, Any]:
        """A Hugging Face ``config.json`` dict (SmolLM3ForCausalLM)."""
        if self.qkv_bias != self.o_bias:
            raise ValueError("a 'smollm3' config needs qkv_bias == o_bias (HF attention_bias)")
        return {**dc.common_to_hf(self, "SmolLM3ForCausalLM"), "attention_bias": self.qkv_bias,
                "mlp_bias": self.mlp_bias, "no_rope_layers": list(self.no_rope_layers),
                "use_sliding_window": self.sliding_window is not None,
                "sliding_window": self.sliding_window, "layer_types": list(self.layer_types)}


FAMILY = register_decoder("smollm3", {"SmolLM3ForCausalLM": "smollm3"}, SmolLM3Config)
