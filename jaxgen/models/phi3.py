"""Phi-3 / Phi-3.5 / Phi-4-mini on the shared decoder.

Llama's layer with fused ``qkv_proj`` and ``gate_up_proj`` tensors, split at load into
``q_proj``/``k_proj``/``v_proj`` and ``gate_proj``/``up_proj`` (and fused again by
``save_checkpoint``), so the parameters, the partition rules and the cache are Llama's;
``longrope`` rope scaling (``su`` / ``yarn`` in old configs), ``partial_rotary_factor``
(Phi-4-mini: 0.75), an optional sliding window on every layer.

With longrope, the first call whose sequence passes ``original_max_position_embeddings``
re-encodes every cached slot with the long factors, as transformers' Phi-3
``prepare_inputs_for_generation`` drops its cache there: `Phi3` keeps the token ids in a
`TokenCache` and takes that branch with ``lax.cond``, once per generation (its caches are
then full-length `KVCache` stacks, a window applied by mask).

Registers the ``phi3`` family (Phi3ForCausalLM).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array

from jaxgen.models import decoder_config as dc
from jaxgen.models.cache import (
    KVCache,
    TokenCache,
    positions_from_mask,
    read_slots,
    write_slots,
)
from jaxgen.models.decoder import Decoder, register_decoder
from jaxgen.models.decoder_config import DecoderConfig
from jaxgen.models.quant import Int8KVCache

_DEFAULTS = dict(vocab_size=32064, hidden_size=3072, intermediate_size=8192,
                 num_hidden_layers=32, num_attention_heads=32, max_position_embeddings=4096,
                 rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=32000, pad_token_id=32000)


def _rope_types(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with transformers' Phi-3 renames: rope types ``su`` and ``yarn`` are longrope."""
    out = dict(d)
    for key in ("rope_parameters", "rope_scaling"):
        p = d.get(key)
        if isinstance(p, dict):
            kind = p.get("rope_type", p.get("type"))
            if kind in ("su", "yarn"):
                out[key] = {**{k: v for k, v in p.items() if k != "type"}, "rope_type": "longrope"}
    return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Phi3Config(DecoderConfig):
    """Phi-3 hyper-parameters (HF names). ``original_max_position_embeddings`` lives in
    ``rope_scaling`` (longrope switches its factors past it)."""

    FIXED: ClassVar[tuple[str, ...]] = (
        "norm_style", "layout", "qk_norm", "qkv_bias", "o_bias", "mlp_bias", "embed_scale",
        "query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping",
        "local_rope_theta", "local_rope_scaling", "no_rope_layers", "model_type")
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    model_type: str = "phi3"

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> Phi3Config:
        """Parse a Hugging Face Phi-3 ``config.json`` dict."""
        dc.refuse(d, "phi3", "attention_bias", "mlp_bias")
        d = _rope_types(d)
        rope = dc.rope_fields(d, partial=True)
        kind = "default" if rope["rope_scaling"] is None else rope["rope_scaling"].rope_type
        if kind not in ("default", "longrope"):
            raise ValueError(f"rope_type {kind!r} is not supported for phi3 models (transformers "
                             f"allows default and longrope)")
        return cls(**dc.common_from_hf(d, _DEFAULTS), **rope,
                   sliding_window=d.get("sliding_window"))

    def to_hf(self) -> dict[str, Any]:
        """A Hugging Face ``config.json`` dict (Phi3ForCausalLM)."""
        d = dc.common_to_hf(self, "Phi3ForCausalLM")
        d["rope_parameters"]["partial_rotary_factor"] = self.partial_rotary_factor
        d["sliding_window"] = self.sliding_window
        if self.rope_scaling is not None:
            d["original_max_position_embeddings"] = \
                self.rope_scaling.original_max_position_embeddings
        return d


@dataclasses.dataclass(frozen=True)
class Phi3(Decoder):
    """Phi-3 `CausalLM`: the shared `Decoder`, plus the long-rope re-encoding above."""

    @property
    def reencodes(self) -> bool:
        """Whether this model switches to long rope factors (and re-encodes then)."""
        scaling = self.config.rope_scaling
        return scaling is not None and scaling.rope_type == "longrope"

    def init_cache(self, batch: int, length: int, *, step_tokens: int = 1) -> Any:
        """`Decoder.init_cache`; with longrope a `TokenCache` of full-length stacks."""
        if not self.reencodes:
            return super().init_cache(batch, length, step_tokens=step_tokens)
        c = self.config
        full = Int8KVCache if self.kv_cache_dtype == "int8" else KVCache
        inner = full.zeros(c.num_hidden_layers, batch, c.num_key_value_heads, length,
                              c.head_dim, self.dtype)
        return TokenCache(inner, jnp.zeros((batch, length), jnp.int32))

    def forward(self, params: Any, tokens: Array, positions: Array, cache: Any, mask: Array,
                outputs: tuple[str, ...]) -> tuple[Array, Any, dict]:
        """`Decoder.forward`, or the re-encoding at the long-rope switch (module doc)."""
        if not isinstance(cache, TokenCache):
            return super().forward(params, tokens, positions, cache, mask, outputs)
        t, length, index = tokens.shape[1], mask.shape[1], cache.index
        seen = write_slots(cache.tokens, tokens, index)
        omp = self.config.rope_scaling.original_max_position_embeddings
        crossing = ((jnp.max(index) > 0) & (jnp.max(positions[:, 0]) <= omp)
                    & (jnp.max(positions) + 1 > omp))

        def keep(_: None) -> tuple[Array, Any, dict]:
            return Decoder.forward(self, params, tokens, positions, cache.inner, mask, outputs)

        def again(_: None) -> tuple[Array, Any, dict]:
            """Every slot up to this call's last, from a fresh cache (all long factors)."""
            last = jnp.asarray(index, jnp.int32)[..., None] + t  # [1] or [batch, 1]
            live = mask * (jnp.arange(length) < last)
            fresh = jax.tree.map(jnp.zeros_like, cache.inner)
            out, inner, extras = Decoder.forward(self, params, seen, positions_from_mask(live),
                                                 fresh, live, outputs)
            extras = {k: tuple(_queries(x, index, t) for x in v) for k, v in extras.items()}
            return read_slots(out, index, t), inner.rewind(index + t), extras

        out, inner, extras = lax.cond(crossing, again, keep, None)
        return out, TokenCache(inner, seen), extras


def _queries(x: Array, index: Any, t: int) -> Array:
    """This call's ``t`` query rows of a hidden state ``[b, L, d]`` or of attention
    probabilities ``[b, heads, L, S]``."""
    if x.ndim == 3:
        return read_slots(x, index, t)
    return jnp.swapaxes(read_slots(jnp.swapaxes(x, 1, 2), index, t), 1, 2)


# HF stores q | k | v and gate | up as one tensor each ([out, in], split along out).
_FUSED = (("self_attn.qkv_proj", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
          ("mlp.gate_up_proj", ("mlp.gate_proj", "mlp.up_proj")))

FAMILY = register_decoder("phi3", {"Phi3ForCausalLM": "phi3"}, Phi3Config, model=Phi3,
                          fused=_FUSED)
