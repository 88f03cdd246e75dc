"""OLMo 2 on the shared decoder: RMSNorms *after* the attention and MLP outputs (no
pre-norms; layout "post"), q/k RMSNorm over the whole projection (``[heads * head_dim]``)
before the head split, OLMo's ``cast(w * x_hat)`` norm.

Registers the ``olmo2`` family (Olmo2ForCausalLM); parameters as `jaxgen.models.decoder`
with ``post_attention_layernorm``, ``post_feedforward_layernorm`` and
``self_attn/{q,k}_norm``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from jaxgen.models import decoder_config as dc
from jaxgen.models.decoder import register_decoder
from jaxgen.models.decoder_config import DecoderConfig

_DEFAULTS = dict(vocab_size=50304, hidden_size=4096, intermediate_size=11008,
                 num_hidden_layers=32, num_attention_heads=32, max_position_embeddings=2048,
                 rms_norm_eps=1e-5, pad_token_id=1, bos_token_id=None, eos_token_id=50279)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Olmo2Config(DecoderConfig):
    """OLMo 2 hyper-parameters (``qkv_bias == o_bias``: HF ``attention_bias``)."""

    FIXED: ClassVar[tuple[str, ...]] = (
        "norm_style", "layout", "qk_norm", "mlp_bias", "embed_scale", "query_pre_attn_scalar",
        "attn_logit_softcapping", "final_logit_softcapping", "partial_rotary_factor",
        "local_rope_theta", "local_rope_scaling", "no_rope_layers", "sliding_window",
        "model_type")
    norm_style: str = "olmo2"
    layout: str = "post"
    qk_norm: str | None = "projection"
    rms_norm_eps: float = 1e-5
    model_type: str = "olmo2"

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> Olmo2Config:
        """Parse a Hugging Face OLMo 2 ``config.json`` dict."""
        dc.refuse(d, "olmo2", "sliding_window", "mlp_bias")
        bias = bool(d.get("attention_bias", False))
        return cls(**dc.common_from_hf(d, _DEFAULTS), **dc.rope_fields(d), qkv_bias=bias,
                   o_bias=bias)

    def to_hf(self) -> dict[str, Any]:
        """A Hugging Face ``config.json`` dict (Olmo2ForCausalLM)."""
        if self.qkv_bias != self.o_bias:
            raise ValueError("an 'olmo2' config needs qkv_bias == o_bias (HF attention_bias)")
        return {**dc.common_to_hf(self, "Olmo2ForCausalLM"), "attention_bias": self.qkv_bias}


FAMILY = register_decoder("olmo2", {"Olmo2ForCausalLM": "olmo2"}, Olmo2Config)
