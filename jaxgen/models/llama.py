"""Llama (2, 3.x) / Mistral / Qwen2 (2.5) on the shared decoder (`jaxgen.models.decoder`).

RMSNorm, SwiGLU, grouped-query attention, every rope type (Llama 3.x: ``llama3``; Qwen2.5:
``yarn``), optional q/k/v/o and MLP biases, tied or untied embeddings, explicit
``head_dim`` (Mistral), sliding windows (Mistral on every layer, Qwen2 from
``max_window_layers`` when ``use_sliding_window``). Registers the ``llama`` family
(LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM); parameters as in
`jaxgen.models.decoder` (layout "pre")::

    model = Llama(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4))
    params = model.init_params(jax.random.key(0))
    out = jaxgen.models.logits(model, params, jnp.array([[1, 2, 3]]))   # [1, 3, 128]
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from jaxgen.models import decoder_config as dc
from jaxgen.models.decoder import Decoder, register_decoder
from jaxgen.models.decoder_config import DecoderConfig

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM"}
_BASE = dict(vocab_size=32000, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
             rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)
_DEFAULTS = {  # transformers' class defaults, for keys a config.json leaves out
    "llama": {**_BASE, "intermediate_size": 11008, "max_position_embeddings": 2048},
    "mistral": {**_BASE, "intermediate_size": 14336, "num_key_value_heads": 8,
                "max_position_embeddings": 131072, "sliding_window": 4096},
    "qwen2": {**_BASE, "vocab_size": 151936, "intermediate_size": 22016,
              "max_position_embeddings": 32768, "bos_token_id": None, "eos_token_id": None,
              "sliding_window": 4096, "max_window_layers": 28},
}
# Features of the builder no Llama / Mistral / Qwen2 config has.
_FIXED = ("norm_style", "layout", "qk_norm", "embed_scale", "query_pre_attn_scalar",
          "attn_logit_softcapping", "final_logit_softcapping", "partial_rotary_factor",
          "local_rope_theta", "local_rope_scaling", "no_rope_layers")


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig(DecoderConfig):
    """Llama / Mistral / Qwen2 hyper-parameters (HF names where they exist).

    ``qkv_bias``/``o_bias`` replace HF's per-family bias switches (Llama's
    ``attention_bias`` sets both; Qwen2 always has q/k/v bias and no o bias).
    """

    FIXED: ClassVar[tuple[str, ...]] = _FIXED

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.model_type not in _ARCHITECTURES:
            raise ValueError(f"model_type {self.model_type!r} is not one of "
                             f"{sorted(_ARCHITECTURES)}")

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> LlamaConfig:
        """Parse a Hugging Face ``config.json`` dict (llama, mistral or qwen2 ``model_type``);
        ValueError naming any attribute that changes the model and is not implemented."""
        mt = d.get("model_type", "llama")
        if mt not in _ARCHITECTURES:
            raise ValueError(f"model_type {mt!r} is not a Llama-family model; supported: "
                             f"{sorted(_ARCHITECTURES)}")
        defaults = _DEFAULTS[mt]
        kw = dc.common_from_hf(d, defaults)
        n = kw["num_hidden_layers"]
        if mt == "llama":
            dc.refuse(d, "llama", "sliding_window", "use_sliding_window")
            qkv_bias = o_bias = bool(d.get("attention_bias", False))
            mlp_bias, window, types = bool(d.get("mlp_bias", False)), None, None
        elif mt == "mistral":  # every layer slides when sliding_window is set
            dc.refuse(d, "mistral", "attention_bias", "mlp_bias")
            qkv_bias = o_bias = mlp_bias = False
            window, types = d.get("sliding_window", defaults["sliding_window"]), None
        else:
            dc.refuse(d, "qwen2", "attention_bias", "mlp_bias")
            qkv_bias, o_bias, mlp_bias = True, False, False
            window, types = dc.max_window_layers(d, n, defaults["max_window_layers"])
        return cls(**kw, **dc.rope_fields(d), qkv_bias=qkv_bias, o_bias=o_bias,
                   mlp_bias=mlp_bias,
                   sliding_window=window, layer_types=types, model_type=mt)

    def to_hf(self) -> dict[str, Any]:
        """A Hugging Face ``config.json`` dict that transformers loads as the same model."""
        mt = self.model_type
        if mt == "llama" and self.qkv_bias != self.o_bias:
            raise ValueError("a 'llama' config needs qkv_bias == o_bias (HF attention_bias)")
        if mt == "qwen2" and (not self.qkv_bias or self.o_bias or self.mlp_bias):
            raise ValueError("a 'qwen2' config needs qkv_bias=True, o_bias=False, mlp_bias=False")
        if mt == "mistral" and (self.qkv_bias or self.o_bias or self.mlp_bias):
            raise ValueError("a 'mistral' config has no biases")
        d = dc.common_to_hf(self, _ARCHITECTURES[mt])
        sliding = any(self.window(i) is not None for i in range(self.num_hidden_layers))
        if mt == "llama":
            d.update(attention_bias=self.qkv_bias, mlp_bias=self.mlp_bias)
            if sliding:
                raise ValueError("a 'llama' config has no sliding window; use model_type='mistral'")
        elif mt == "mistral":
            if sliding and set(self.layer_types) != {"sliding_attention"}:
                raise ValueError("a 'mistral' config slides on every layer or none")
            d.update(sliding_window=self.sliding_window if sliding else None)
        else:
            d.update(use_sliding_window=sliding,
                     sliding_window=self.sliding_window if sliding else None,
                     max_window_layers=self.num_hidden_layers,
                     layer_types=list(self.layer_types) if sliding
                     else ["full_attention"] * self.num_hidden_layers)
        return d


@dataclasses.dataclass(frozen=True)
class Llama(Decoder):
    """Llama-family `CausalLM`: the shared `Decoder` (``Llama(LlamaConfig(...), dtype)``)."""


FAMILY = register_decoder("llama", {a: t for t, a in _ARCHITECTURES.items()}, LlamaConfig,
                          model=Llama)
LLAMA_RULES: list[tuple[Any, Any]] = list(FAMILY.rules)  # kept importable
