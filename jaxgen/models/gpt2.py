"""GPT-2 (GPT2LMHeadModel) behind the `CausalLM` protocol.

Learned position embeddings, pre-LayerNorm blocks, tanh GELU, tied lm_head. Parameters
(one subtree per layer; kernels ``[in, out]``, the same layout as HF's Conv1D weights)::

    {"wte": {"embedding": [vocab, d]}, "wpe": {"embedding": [n_positions, d]},
     "layers_0": {"ln_1": {"scale", "bias"},
                  "attn": {"c_attn": {"kernel": [d, 3d], "bias"}, "c_proj": {...}},
                  "ln_2": {...}, "mlp": {"c_fc": {"kernel": [d, inner], "bias"}, "c_proj"}},
     ...,
     "ln_f": {"scale", "bias"}}                  # + "lm_head" if not tie_word_embeddings

Positions past ``n_positions - 1`` are clamped by the embedding gather (no error).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxgen.models.base import FlaxCausalLM, KVCache
from jaxgen.models.llama import attention_visibility, cached_attention

_INIT_STD = 0.02
_ACTIVATIONS = {
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
}


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPT2Config:
    """GPT-2 hyper-parameters, with Hugging Face names.

    ``reorder_and_upcast_attn`` is accepted either way: attention scores and softmax are
    always computed in float32 here, which is what it asks for.
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # None: 4 * n_embd
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | tuple[int, ...] | None = 50256
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        if self.n_inner is None:
            object.__setattr__(self, "n_inner", 4 * self.n_embd)
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        if self.activation_function not in _ACTIVATIONS:
            raise ValueError(f"activation_function={self.activation_function!r} is not supported;"
                             f" supported: {sorted(_ACTIVATIONS)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not a multiple of n_head={self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def attn_scale(self, layer: int) -> float:
        """HF's score scale of ``layer``: 1/sqrt(head_dim) and/or 1/(layer + 1)."""
        scale = self.head_dim ** -0.5 if self.scale_attn_weights else 1.0
        return scale / (layer + 1) if self.scale_attn_by_inverse_layer_idx else scale

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> GPT2Config:
        """Parse a Hugging Face GPT-2 ``config.json`` dict."""
        if d.get("add_cross_attention", False):
            raise ValueError("add_cross_attention=True is not supported (decoder-only GPT-2)")
        for key in ("scale_attn_weights", "scale_attn_by_inverse_layer_idx",
                    "reorder_and_upcast_attn", "tie_word_embeddings"):
            if key in d and not isinstance(d[key], bool):
                raise ValueError(f"{key} must be a bool, got {d[key]!r}")
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})

    def to_hf(self) -> dict[str, Any]:
        """A Hugging Face ``config.json`` dict (GPT2LMHeadModel)."""
        d = dataclasses.asdict(self)
        if isinstance(self.eos_token_id, tuple):
            d["eos_token_id"] = list(self.eos_token_id)
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", **d}


class GPT2Attention(nn.Module):
    """Causal self-attention over the stacked cache (c_attn -> heads -> c_proj)."""

    config: GPT2Config
    dtype: Any
    layer: int

    @nn.compact
    def __call__(self, h, cache_k, cache_v, index, visible):
        c, dt = self.config, self.dtype
        b, t, d = h.shape
        qkv = _dense(3 * d, dt, "c_attn")(h)
        q, k, v = (x.reshape(b, t, c.n_head, c.head_dim) for x in jnp.split(qkv, 3, axis=-1))
        o, cache_k, cache_v = cached_attention(q, k, v, cache_k, cache_v, self.layer, index,
                                               visible, c.attn_scale(self.layer))
        return _dense(d, dt, "c_proj")(o), cache_k, cache_v


class GPT2MLP(nn.Module):
    config: GPT2Config
    dtype: Any

    @nn.compact
    def __call__(self, x: Array) -> Array:
        act = _ACTIVATIONS[self.config.activation_function]
        h = act(_dense(self.config.n_inner, self.dtype, "c_fc")(x))
        return _dense(x.shape[-1], self.dtype, "c_proj")(h)


class GPT2Block(nn.Module):
    config: GPT2Config
    dtype: Any
    layer: int

    @nn.compact
    def __call__(self, x, cache_k, cache_v, index, visible):
        c, dt = self.config, self.dtype
        o, cache_k, cache_v = GPT2Attention(c, dt, self.layer, name="attn")(
            _layer_norm(c, dt, "ln_1")(x), cache_k, cache_v, index, visible)
        x = x + o
        x = x + GPT2MLP(c, dt, name="mlp")(_layer_norm(c, dt, "ln_2")(x))
        return x, cache_k, cache_v


class GPT2Net(nn.Module):
    """The whole network over a stacked ``[layers, batch, heads, length, hd]`` cache."""

    config: GPT2Config
    dtype: Any

    @nn.compact
    def __call__(self, tokens: Int[Array, "batch t"], positions: Int[Array, "batch t"],
                 cache_k: Array, cache_v: Array, index: Int[Array, ""],
                 mask: Int[Array, "batch length"]) -> tuple[Float[Array, "batch t vocab"],
                                                            Array, Array]:
        c, dt = self.config, self.dtype
        init = nn.initializers.normal(_INIT_STD)
        wte = nn.Embed(c.vocab_size, c.n_embd, dtype=dt, param_dtype=dt, embedding_init=init,
                       name="wte")
        wpe = nn.Embed(c.n_positions, c.n_embd, dtype=dt, param_dtype=dt, embedding_init=init,
                       name="wpe")
        x = wte(tokens) + wpe(positions)
        visible = attention_visibility(mask, positions, index)
        for i in range(c.n_layer):
            x, cache_k, cache_v = GPT2Block(c, dt, i, name=f"layers_{i}")(
                x, cache_k, cache_v, index, visible)
        x = _layer_norm(c, dt, "ln_f")(x)
        if c.tie_word_embeddings:
            out = wte.attend(x)
        else:
            out = nn.Dense(c.vocab_size, use_bias=False, dtype=dt, param_dtype=dt,
                           kernel_init=init, name="lm_head")(x)
        return out.astype(jnp.float32), cache_k, cache_v


def _dense(features: int, dtype: Any, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=dtype,
                    kernel_init=nn.initializers.normal(_INIT_STD), name=name)


def _layer_norm(c: GPT2Config, dtype: Any, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=c.layer_norm_epsilon, dtype=dtype, param_dtype=dtype,
                        use_fast_variance=False, name=name)


@dataclasses.dataclass(frozen=True)
class GPT2(FlaxCausalLM):
    """GPT-2 `CausalLM`. ``dtype`` is the parameter, activation and cache dtype; logits
    are always float32. Hashable, so it can be a jit static argument."""

    config: GPT2Config
    dtype: Any = jnp.float32

    @property
    def module(self) -> GPT2Net:
        return GPT2Net(self.config, self.dtype)

    def init_cache(self, batch: int, length: int) -> KVCache:
        """Zero cache ``[layers, batch, heads, length, head_dim]`` in ``dtype``, index 0."""
        c = self.config
        return KVCache.zeros(c.n_layer, batch, c.n_head, length, c.head_dim, self.dtype)
