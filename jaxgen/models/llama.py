"""Llama / Mistral / Qwen2 decoder-only transformers behind the `CausalLM` protocol.

RoPE (default rope type), RMSNorm, SwiGLU MLP, grouped-query attention, optional
q/k/v/o and MLP biases, tied or untied embeddings, optional (per-layer) sliding window.

Parameters are a nested dict with one subtree per layer (``layers_0``, ``layers_1``, ...)
and Hugging Face-like names; dense kernels are ``[in, out]`` (HF ``weight.T``)::

    {"embed_tokens": {"embedding": [vocab, d]},
     "layers_0": {"input_layernorm": {"scale": [d]},
                  "self_attn": {"q_proj": {"kernel": [d, heads*hd], "bias"?}, "k_proj", "v_proj",
                                "o_proj"},
                  "post_attention_layernorm": {"scale": [d]},
                  "mlp": {"gate_proj", "up_proj", "down_proj"}},
     ...,
     "norm": {"scale": [d]},
     "lm_head": {"kernel": [d, vocab]}}          # absent when tie_word_embeddings

Example::

    model = Llama(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=4))
    params = model.init_params(jax.random.key(0))
    out = jaxgen.models.logits(model, params, jnp.array([[1, 2, 3]]))   # [1, 3, 128]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Bool, Float, Int

from jaxgen.models.base import MASK_VALUE, FlaxCausalLM, KVCache, positions_from_mask

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                  "qwen2": "Qwen2ForCausalLM"}
_LAYER_TYPES = ("full_attention", "sliding_attention")
_INIT_STD = 0.02


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True, kw_only=True)
class LlamaConfig:
    """Architecture hyper-parameters (Hugging Face names where they exist).

    ``qkv_bias``/``o_bias`` replace HF's per-family bias switches (Llama's
    ``attention_bias`` sets both; Qwen2 always has q/k/v bias and no o bias).
    ``layer_types[i]`` is ``"full_attention"`` or ``"sliding_attention"``; sliding layers
    attend to keys whose position is within ``sliding_window`` of the query's position.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None  # None: = num_attention_heads (MHA)
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    sliding_window: int | None = None
    layer_types: tuple[str, ...] | None = None  # None: all sliding iff sliding_window is set
    model_type: str = "llama"  # "llama" | "mistral" | "qwen2": the HF family for to_hf()
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if self.layer_types is None:
            kind = "full_attention" if self.sliding_window is None else "sliding_attention"
            object.__setattr__(self, "layer_types", (kind,) * self.num_hidden_layers)
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries, expected "
                             f"num_hidden_layers={self.num_hidden_layers}")
        bad = sorted(set(self.layer_types) - set(_LAYER_TYPES))
        if bad:
            raise ValueError(f"unsupported layer_types {bad}; supported: {list(_LAYER_TYPES)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads={self.num_attention_heads} is not a multiple "
                             f"of num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.model_type not in _ARCHITECTURES:
            raise ValueError(f"model_type {self.model_type!r} is not one of "
                             f"{sorted(_ARCHITECTURES)}")

    def window(self, layer: int) -> int | None:
        """The sliding window of ``layer``, or None for full attention."""
        if self.sliding_window is None or self.layer_types[layer] != "sliding_attention":
            return None
        return self.sliding_window

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> LlamaConfig:
        """Parse a Hugging Face ``config.json`` dict (llama, mistral or qwen2 ``model_type``)."""
        model_type = d.get("model_type", "llama")
        if model_type not in _ARCHITECTURES:
            raise ValueError(f"model_type {model_type!r} is not a Llama-family model; supported: "
                             f"{sorted(_ARCHITECTURES)}")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act={act!r} is not supported (only 'silu')")
        heads = d["num_attention_heads"]
        if model_type == "qwen2":
            qkv_bias, o_bias, mlp_bias = True, False, False
            window = d.get("sliding_window") if d.get("use_sliding_window", False) else None
            layer_types = d.get("layer_types") or (
                None if window is None else tuple(
                    "sliding_attention" if i >= d.get("max_window_layers", 0) else "full_attention"
                    for i in range(d["num_hidden_layers"])))
        elif model_type == "mistral":
            qkv_bias = o_bias = mlp_bias = False
            window, layer_types = d.get("sliding_window"), d.get("layer_types")
        else:
            qkv_bias = o_bias = bool(d.get("attention_bias", False))
            mlp_bias = bool(d.get("mlp_bias", False))
            window, layer_types = d.get("sliding_window"), d.get("layer_types")
        return cls(
            vocab_size=d["vocab_size"], hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"], num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=_rope_theta(d),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            qkv_bias=qkv_bias, o_bias=o_bias, mlp_bias=mlp_bias,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            sliding_window=window,
            layer_types=None if layer_types is None else tuple(layer_types),
            model_type=model_type, bos_token_id=d.get("bos_token_id"),
            eos_token_id=d.get("eos_token_id"), pad_token_id=d.get("pad_token_id"))

    def to_hf(self) -> dict[str, Any]:
        """A Hugging Face ``config.json`` dict that transformers loads as the same model."""
        mt = self.model_type
        if mt == "llama" and self.qkv_bias != self.o_bias:
            raise ValueError("a 'llama' config needs qkv_bias == o_bias (HF attention_bias)")
        if mt == "qwen2" and (not self.qkv_bias or self.o_bias or self.mlp_bias):
            raise ValueError("a 'qwen2' config needs qkv_bias=True, o_bias=False, mlp_bias=False")
        if mt == "mistral" and (self.qkv_bias or self.o_bias or self.mlp_bias):
            raise ValueError("a 'mistral' config has no biases")
        d: dict[str, Any] = {
            "architectures": [_ARCHITECTURES[mt]], "model_type": mt,
            "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads, "head_dim": self.head_dim,
            "hidden_act": "silu", "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": (list(self.eos_token_id) if isinstance(self.eos_token_id, tuple)
                             else self.eos_token_id),
            "pad_token_id": self.pad_token_id,
        }
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


def _rope_theta(d: dict[str, Any]) -> float:
    """``rope_theta`` from a v5 ``rope_parameters`` or a legacy ``rope_theta``/``rope_scaling``."""
    params = d.get("rope_parameters") or d.get("rope_scaling")
    theta = d.get("rope_theta", 10000.0)
    if params:
        if not isinstance(params, dict) or "rope_type" not in params and "type" not in params \
                and "rope_theta" not in params:
            raise ValueError(f"unsupported rope_scaling/rope_parameters {params!r}: only the "
                             "default rope type is supported")
        kind = params.get("rope_type", params.get("type", "default"))
        if kind != "default" or params.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError(f"unsupported rope_scaling/rope_parameters {params!r}: only the "
                             "default rope type (no scaling) is supported")
        theta = params.get("rope_theta", theta)
    return float(theta)


# ----------------------------------------------------------- attention shared with GPT-2


def attention_visibility(mask: Int[Array, "batch length"], positions: Int[Array, "batch t"],
                         index: Int[Array, ""], window: int | None = None
                         ) -> Bool[Array, "batch t length"]:
    """Which cache slot each new query may attend to (see `jaxgen.models.base`).

    Query ``i`` sits at slot ``index + i`` and sees slot ``j`` iff ``mask[b, j]`` and
    ``j <= index + i``; with a ``window`` also ``positions[b, i] - key_position[b, j] <
    window``, key positions being ``cumsum(mask) - 1`` (so left padding never counts).
    """
    t, length = positions.shape[1], mask.shape[1]
    q_slot = index + jnp.arange(t, dtype=jnp.int32)  # [t]
    k_slot = jnp.arange(length, dtype=jnp.int32)  # [length]
    visible = (mask[:, None, :] != 0) & (k_slot[None, None, :] <= q_slot[None, :, None])
    if window is not None:
        k_pos = positions_from_mask(mask)  # [batch, length]
        visible &= (positions[:, :, None] - k_pos[:, None, :]) < window
    return visible


def cached_attention(q: Float[Array, "batch t heads hd"], k: Float[Array, "batch t kv hd"],
                     v: Float[Array, "batch t kv hd"],
                     cache_k: Float[Array, "layers batch kv length hd"],
                     cache_v: Float[Array, "layers batch kv length hd"], layer: int,
                     index: Int[Array, ""], visible: Bool[Array, "batch t length"], scale: float
                     ) -> tuple[Float[Array, "batch t heads*hd"], Array, Array]:
    """Write k/v at ``[layer, :, :, index:index+t]`` of the stacked cache, then attend.

    Grouped-query: query head ``h`` uses kv head ``h // (heads // kv)``. Scores and softmax
    are float32; masked scores are ``MASK_VALUE`` (a fully masked row is uniform, not NaN).
    """
    b, t, heads, hd = q.shape
    kv = k.shape[2]
    zero = jnp.zeros((), jnp.int32)
    start = (jnp.asarray(layer, jnp.int32), zero, zero, jnp.asarray(index, jnp.int32), zero)
    # [batch, t, kv, hd] -> [1, batch, kv, t, hd]
    cache_k = lax.dynamic_update_slice(cache_k, k.transpose(0, 2, 1, 3)[None].astype(cache_k.dtype),
                                       start)
    cache_v = lax.dynamic_update_slice(cache_v, v.transpose(0, 2, 1, 3)[None].astype(cache_v.dtype),
                                       start)
    keys, values = cache_k[layer], cache_v[layer]  # [batch, kv, length, hd]
    q = q.reshape(b, t, kv, heads // kv, hd)  # [batch, t, kv, group, hd]
    scores = jnp.einsum("btkgd,bksd->bkgts", q, keys, preferred_element_type=jnp.float32)
    scores = jnp.where(visible[:, None, None], scores * scale, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
    out = jnp.einsum("bkgts,bksd->btkgd", probs, values)  # [batch, t, kv, group, hd]
    return out.reshape(b, t, heads * hd), cache_k, cache_v


# ------------------------------------------------------------------------------ network


def _rope_tables(positions: Int[Array, "batch t"], head_dim: int, theta: float, dtype: Any
                 ) -> tuple[Float[Array, "batch t 1 hd"], Float[Array, "batch t 1 hd"]]:
    """cos/sin tables of HF's default RoPE (computed in float32, cast to ``dtype``)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # [batch, t, hd/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [batch, t, 1, hd]
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def _apply_rope(x: Float[Array, "batch t heads hd"], cos: Array, sin: Array) -> Array:
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


class RMSNorm(nn.Module):
    """HF RMSNorm: normalise in float32, cast back, then scale."""

    eps: float
    dtype: Any

    @nn.compact
    def __call__(self, x: Float[Array, "... d"]) -> Float[Array, "... d"]:
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), self.dtype)
        xf = x.astype(jnp.float32)
        xf = xf * lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return scale * xf.astype(self.dtype)


def _dense(features: int, bias: bool, dtype: Any, name: str) -> nn.Dense:
    return nn.Dense(features, use_bias=bias, dtype=dtype, param_dtype=dtype,
                    kernel_init=nn.initializers.normal(_INIT_STD), name=name)


class LlamaBlock(nn.Module):
    """One pre-norm decoder layer: x + attn(norm(x)); x + mlp(norm(x))."""

    config: LlamaConfig
    dtype: Any
    layer: int

    @nn.compact
    def __call__(self, x, rope, cache_k, cache_v, index, visible):
        c, dt = self.config, self.dtype
        h = RMSNorm(c.rms_norm_eps, dt, name="input_layernorm")(x)
        o, cache_k, cache_v = LlamaAttention(c, dt, self.layer, name="self_attn")(
            h, rope, cache_k, cache_v, index, visible)
        x = x + o
        h = RMSNorm(c.rms_norm_eps, dt, name="post_attention_layernorm")(x)
        x = x + SwiGLU(c, dt, name="mlp")(h)
        return x, cache_k, cache_v


class LlamaAttention(nn.Module):
    """Grouped-query self-attention with RoPE over the stacked cache."""

    config: LlamaConfig
    dtype: Any
    layer: int

    @nn.compact
    def __call__(self, h, rope, cache_k, cache_v, index, visible):
        c, dt = self.config, self.dtype
        b, t, _ = h.shape
        heads, kv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        q = _dense(heads * hd, c.qkv_bias, dt, "q_proj")(h).reshape(b, t, heads, hd)
        k = _dense(kv * hd, c.qkv_bias, dt, "k_proj")(h).reshape(b, t, kv, hd)
        v = _dense(kv * hd, c.qkv_bias, dt, "v_proj")(h).reshape(b, t, kv, hd)
        cos, sin = rope
        q, k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
        o, cache_k, cache_v = cached_attention(q, k, v, cache_k, cache_v, self.layer, index,
                                               visible, hd ** -0.5)
        return _dense(c.hidden_size, c.o_bias, dt, "o_proj")(o), cache_k, cache_v


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x))."""

    config: LlamaConfig
    dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c, dt = self.config, self.dtype
        gate = _dense(c.intermediate_size, c.mlp_bias, dt, "gate_proj")(x)
        up = _dense(c.intermediate_size, c.mlp_bias, dt, "up_proj")(x)
        return _dense(c.hidden_size, c.mlp_bias, dt, "down_proj")(nn.silu(gate) * up)


class LlamaNet(nn.Module):
    """The whole network over a stacked ``[layers, batch, kv, length, hd]`` cache."""

    config: LlamaConfig
    dtype: Any

    @nn.compact
    def __call__(self, tokens: Int[Array, "batch t"], positions: Int[Array, "batch t"],
                 cache_k: Array, cache_v: Array, index: Int[Array, ""],
                 mask: Int[Array, "batch length"]) -> tuple[Float[Array, "batch t vocab"],
                                                            Array, Array]:
        c, dt = self.config, self.dtype
        embed = nn.Embed(c.vocab_size, c.hidden_size, dtype=dt, param_dtype=dt,
                         embedding_init=nn.initializers.normal(_INIT_STD), name="embed_tokens")
        x = embed(tokens)
        rope = _rope_tables(positions, c.head_dim, c.rope_theta, dt)
        visible: dict[int | None, Array] = {}
        for i in range(c.num_hidden_layers):
            w = c.window(i)
            if w not in visible:
                visible[w] = attention_visibility(mask, positions, index, w)
            x, cache_k, cache_v = LlamaBlock(c, dt, i, name=f"layers_{i}")(
                x, rope, cache_k, cache_v, index, visible[w])
        x = RMSNorm(c.rms_norm_eps, dt, name="norm")(x)
        if c.tie_word_embeddings:
            out = embed.attend(x)
        else:
            out = _dense(c.vocab_size, False, dt, "lm_head")(x)
        return out.astype(jnp.float32), cache_k, cache_v


# ------------------------------------------------------------------------ CausalLM wrapper


@dataclasses.dataclass(frozen=True)
class Llama(FlaxCausalLM):
    """Llama-family `CausalLM`. ``dtype`` is the parameter, activation and cache dtype;
    logits are always float32. Hashable, so it can be a jit static argument."""

    config: LlamaConfig
    dtype: Any = jnp.float32

    @property
    def module(self) -> LlamaNet:
        return LlamaNet(self.config, self.dtype)

    def init_cache(self, batch: int, length: int) -> KVCache:
        """Zero cache ``[layers, batch, kv_heads, length, head_dim]`` in ``dtype``, index 0."""
        c = self.config
        return KVCache.zeros(c.num_hidden_layers, batch, c.num_key_value_heads, length,
                             c.head_dim, self.dtype)
