"""The shared decoder builder: one forward pass for every Llama-like family.

A family is a `DecoderConfig` subclass (`jaxgen.models.decoder_config`) plus its HF
names; this module computes all of it, switched by the config::

    embed (x sqrt(d) if embed_scale) -> layers -> final RMSNorm -> lm_head (tied or not)
        -> final_logit_softcapping
    layer (layout "pre" | "sandwich" | "post", see DecoderConfig):
        q, k, v = proj(h)                      (+ bias if qkv_bias)
        q, k = qk_norm(q), qk_norm(k)          (None | per "head" | whole "projection")
        q, k = rope(q), rope(k)                (the layer's rope: global / local / none)
        attention over the layer's cache stack (full KVCache or sliding RingCache),
            scale 1/sqrt(query_pre_attn_scalar or head_dim), attn_logit_softcapping
        o_proj (+ bias if o_bias); gated MLP down(act(gate(h)) * up(h)) (+ mlp_bias)

Parameters are nested dicts, one subtree per layer, HF-like names, kernels ``[in, out]``::

    {"embed_tokens": {"embedding": [vocab, d]},
     "layers_0": {"input_layernorm": {"scale": [d]},           # layouts "pre", "sandwich"
                  "self_attn": {"q_proj": {"kernel": [d, heads*hd], "bias"?}, "k_proj",
                                "v_proj", "o_proj", "q_norm"?, "k_norm"?},
                  "post_attention_layernorm": {"scale": [d]},
                  "pre_feedforward_layernorm"?, "post_feedforward_layernorm"?,
                  "mlp": {"gate_proj", "up_proj", "down_proj"}},
     ..., "norm": {"scale": [d]}, "lm_head": {"kernel": [d, vocab]}}   # no lm_head if tied

For what comes next: (a) a layer is `decoder_layer(config, spec, params_i, x, ...)`, pure,
its static part a `LayerSpec` (cache kind, slot in that stack, window, rope); the stack
methods accept a traced ``slot``, so a ``lax.scan`` over stacked weights can call it for
each run of equal specs (Gemma 3: over the 5 sliding + 1 global unit) with
``dataclasses.replace(spec, slot=i)``; (b) ``outputs=("hidden_states", "attentions")`` is
collected by `run_layers` in transformers' layout; (c) `head` maps any hidden state to
logits; (d) caches are reached only through the `jaxgen.models.cache.CacheStack` methods,
so a paged or int8 stack is one more class.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float, Int

from jaxgen.models import quant
from jaxgen.models.attention import attend
from jaxgen.models.base import LanguageModel, dense_shapes
from jaxgen.models.cache import KVCache, LayerCaches, RingCache
from jaxgen.models.decoder_config import ACTIVATIONS, DecoderConfig
from jaxgen.models.layers import LayerSpec, run_layers
from jaxgen.models.quant import Int8KVCache
from jaxgen.models.registry import Family, TensorNames, register
from jaxgen.models.rope import apply_rope

Params = dict[str, Any]
Tables = tuple[Array, Array] | None  # (cos, sin) of the layer's rope


@functools.lru_cache(maxsize=256)
def layer_specs(c: DecoderConfig) -> tuple[LayerSpec, ...]:
    """The `LayerSpec` of every layer of ``c``."""
    seen: dict[str, int] = {}
    specs = []
    for i in range(c.num_hidden_layers):
        kind = c.kind(i)
        specs.append(LayerSpec(kind, seen.get(kind, 0), c.window(i), c.rope(i)))
        seen[kind] = seen.get(kind, 0) + 1
    return tuple(specs)


# ------------------------------------------------------------------------ building blocks


def dense(p: Params, x: Float[Array, "... d_in"]) -> Float[Array, "... d_out"]:
    """``x @ kernel (+ bias)`` (kernel ``[in, out]``)."""
    y = quant.matmul(x, p["kernel"])
    return y + p["bias"] if "bias" in p else y


def rms_norm(p: Params, x: Float[Array, "... d"], eps: float, style: str
             ) -> Float[Array, "... d"]:
    """RMSNorm in float32, scaled as ``style`` says (see `DecoderConfig`)."""
    xf = x.astype(jnp.float32)
    xf = xf * lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    if style == "llama":
        return p["scale"] * xf.astype(x.dtype)
    if style == "olmo2":
        return (p["scale"] * xf).astype(x.dtype)
    return (xf * (1.0 + p["scale"].astype(jnp.float32))).astype(x.dtype)


def gated_mlp(c: DecoderConfig, p: Params, x: Float[Array, "b t d"]) -> Float[Array, "b t d"]:
    """``down(act(gate(x)) * up(x))``."""
    return dense(p["down_proj"], ACTIVATIONS[c.hidden_act](dense(p["gate_proj"], x))
                 * dense(p["up_proj"], x))


def self_attention(c: DecoderConfig, spec: LayerSpec, p: Params, h: Float[Array, "b t d"],
                   rope: Tables, stack: Any, visible: Array, with_probs: bool
                   ) -> tuple[Float[Array, "b t d"], Any, Array | None]:
    """Projections, q/k norm, RoPE, attention over the layer's stack, output projection."""
    b, t, _ = h.shape
    heads, kv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    q, k, v = dense(p["q_proj"], h), dense(p["k_proj"], h), dense(p["v_proj"], h)
    if c.qk_norm == "projection":  # OLMo 2: over [heads * hd] before the head split
        q = rms_norm(p["q_norm"], q, c.rms_norm_eps, c.norm_style)
        k = rms_norm(p["k_norm"], k, c.rms_norm_eps, c.norm_style)
    q, k, v = q.reshape(b, t, heads, hd), k.reshape(b, t, kv, hd), v.reshape(b, t, kv, hd)
    if c.qk_norm == "head":
        q = rms_norm(p["q_norm"], q, c.rms_norm_eps, c.norm_style)
        k = rms_norm(p["k_norm"], k, c.rms_norm_eps, c.norm_style)
    if rope is not None:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    stack, keys, values = stack.update(spec.slot, k, v)
    out, probs = attend(q, keys, values, visible, c.attn_scale, c.attn_logit_softcapping,
                        with_probs)
    return dense(p["o_proj"], out), stack, probs


def decoder_layer(c: DecoderConfig, spec: LayerSpec, p: Params, x: Float[Array, "b t d"],
                  rope: Tables, stack: Any, visible: Array, with_probs: bool = False
                  ) -> tuple[Float[Array, "b t d"], Any, Array | None]:
    """One layer: ``(x, stack, attention probs or None)`` after it (norms per layout)."""
    def norm(name: str, h: Array) -> Array:
        return rms_norm(p[name], h, c.rms_norm_eps, c.norm_style)

    h = x if c.layout == "post" else norm("input_layernorm", x)
    h, stack, probs = self_attention(c, spec, p["self_attn"], h, rope, stack, visible,
                                     with_probs)
    x = x + (h if c.layout == "pre" else norm("post_attention_layernorm", h))
    h = {"pre": "post_attention_layernorm", "sandwich": "pre_feedforward_layernorm"}.get(
        c.layout)
    h = gated_mlp(c, p["mlp"], x if h is None else norm(h, x))
    return x + (h if c.layout == "pre" else norm("post_feedforward_layernorm", h)), stack, probs


def head(c: DecoderConfig, params: Params, x: Float[Array, "b t d"], norm: bool = True
         ) -> Float[Array, "b t vocab"]:
    """Float32 logits of hidden states: final norm (unless ``norm=False``), lm_head (or
    the tied embeddings), final soft-capping."""
    if norm:
        x = rms_norm(params["norm"], x, c.rms_norm_eps, c.norm_style)
    if c.tie_word_embeddings:
        out = quant.matmul_t(x, params["embed_tokens"]["embedding"])
    else:
        out = dense(params["lm_head"], x)
    out = out.astype(jnp.float32)
    cap = c.final_logit_softcapping
    return out if cap is None else jnp.tanh(out / cap) * cap


# ------------------------------------------------------------------------ the forward pass

def forward(c: DecoderConfig, dtype: Any, params: Params, tokens: Int[Array, "b t"],
            positions: Int[Array, "b t"], cache: Any, mask: Int[Array, "b length"],
            outputs: tuple[str, ...] = ()) -> tuple[Float[Array, "b t vocab"], Any, dict]:
    """Logits, the updated cache and the requested extras (transformers' layout:
    ``hidden_states[-1]`` is after the final norm)."""
    x = quant.take_rows(params["embed_tokens"]["embedding"], tokens, dtype)
    if c.embed_scale:
        x = x * jnp.asarray(math.sqrt(c.hidden_size), dtype)
    specs = layer_specs(c)
    tables = {s.rope: s.rope.tables(positions, dtype) for s in specs if s.rope is not None}

    def layer_fn(p: Params, spec: LayerSpec, x: Array, stack: Any, visible: Array,
                 with_probs: bool) -> tuple[Array, Any, Array | None]:
        return decoder_layer(c, spec, p, x, tables.get(spec.rope), stack, visible, with_probs)

    x, cache, extras = run_layers(layer_fn, specs, c.kinds, x, cache, positions, mask, outputs,
                                  params)
    x = rms_norm(params["norm"], x, c.rms_norm_eps, c.norm_style)
    if "hidden_states" in extras:
        extras["hidden_states"] = (*extras["hidden_states"][:-1], x)
    return head(c, params, x, norm=False), cache, extras


# ------------------------------------------------------------------------- parameters


def param_shapes(c: DecoderConfig) -> dict[str, Any]:
    """Nested ``{name: (shape, init)}`` of the per-layer parameters (module docstring),
    init in normal / ones / zeros."""
    d, hd, heads, kv, inter = (c.hidden_size, c.head_dim, c.num_attention_heads,
                               c.num_key_value_heads, c.intermediate_size)
    one = "zeros" if c.norm_style == "gemma" else "ones"  # Gemma's (1 + w) starts at 1
    proj = dense_shapes

    attn = {"q_proj": proj(d, heads * hd, c.qkv_bias), "k_proj": proj(d, kv * hd, c.qkv_bias),
            "v_proj": proj(d, kv * hd, c.qkv_bias), "o_proj": proj(heads * hd, d, c.o_bias)}
    if c.qk_norm is not None:
        per_head = c.qk_norm == "head"
        attn["q_norm"] = {"scale": ((hd if per_head else heads * hd,), one)}
        attn["k_norm"] = {"scale": ((hd if per_head else kv * hd,), one)}
    norms = {"pre": ("input_layernorm", "post_attention_layernorm"),
             "sandwich": ("input_layernorm", "post_attention_layernorm",
                          "pre_feedforward_layernorm", "post_feedforward_layernorm"),
             "post": ("post_attention_layernorm", "post_feedforward_layernorm")}[c.layout]
    layer = {"self_attn": attn, **{n: {"scale": ((d,), one)} for n in norms},
             "mlp": {"gate_proj": proj(d, inter, c.mlp_bias), "up_proj": proj(d, inter, c.mlp_bias),
                     "down_proj": proj(inter, d, c.mlp_bias)}}
    tree = {"embed_tokens": {"embedding": ((c.vocab_size, d), "normal")},
            **{f"layers_{i}": layer for i in range(c.num_hidden_layers)},
            "norm": {"scale": ((d,), one)}}
    if not c.tie_word_embeddings:
        tree["lm_head"] = proj(d, c.vocab_size, False)
    return tree


# ------------------------------------------------------------------------ CausalLM wrapper


@dataclasses.dataclass(frozen=True)
class Decoder(LanguageModel):
    """A `CausalLM` built from a `DecoderConfig` (any family). ``dtype`` is the parameter,
    activation and cache dtype; logits are always float32. Hashable (a jit static).
    ``scan_layers``: stacked layer weights, run as a ``lax.scan`` per group of equal layers
    (`jaxgen.models.layers`; compile time flat in depth)."""

    config: DecoderConfig
    dtype: Any = jnp.float32
    scan_layers: bool = False
    kv_cache_dtype: str | None = None  # "int8": full layers keep an Int8KVCache

    def init_cache(self, batch: int, length: int, *, step_tokens: int = 1) -> Any:
        """Zero caches, index 0: a `KVCache` ``[layers, batch, kv, length, hd]`` for full
        layers, a `RingCache` of ``min(window + step_tokens - 1, length)`` slots for
        sliding ones (``step_tokens``: the most tokens one call after the prefill writes,
        e.g. ``K + 1`` for speculative decoding); a `LayerCaches` if there are both."""
        c = self.config
        count = {k: sum(c.kind(i) == k for i in range(c.num_hidden_layers)) for k in c.kinds}
        dims = (batch, c.num_key_value_heads, length, c.head_dim)
        full = Int8KVCache if self.kv_cache_dtype == "int8" else KVCache
        stacks = {k: full.zeros(n, *dims, dtype=self.dtype) if k == "full_attention" else
                  RingCache.zeros(n, *dims, window=c.sliding_window, step_tokens=step_tokens,
                                  dtype=self.dtype) for k, n in count.items()}
        return LayerCaches(stacks) if len(stacks) > 1 else next(iter(stacks.values()))

    def forward(self, params: Params, tokens: Array, positions: Array, cache: Any, mask: Array,
                outputs: tuple[str, ...]) -> tuple[Array, Any, dict]:
        """`forward` of this model's config (`LanguageModel.apply` validates inputs)."""
        return forward(self.config, self.dtype, params, tokens, positions, cache, mask, outputs)

    def head(self, params: Params, hidden: Float[Array, "b t d"], *, norm: bool = True
             ) -> Float[Array, "b t vocab"]:
        """Logits of a hidden state (e.g. ``extras["hidden_states"][i]``): final norm
        (``norm=False`` for one already normed, like ``hidden_states[-1]``), lm_head,
        soft-capping. For DoLa and early-exit drafts."""
        return head(self.config, params, hidden, norm)

    def layer_specs(self) -> tuple[LayerSpec, ...]:
        """The `LayerSpec` of every layer."""
        return layer_specs(self.config)

    def per_layer_shapes(self) -> dict[str, Any]:
        """`param_shapes` of this model's config (the per-layer layout)."""
        return param_shapes(self.config)


# Partition rules of every decoder family (`jaxgen.sharding`). Embeddings and the output
# head are split over the vocabulary (rows of the [vocab, d] table, columns of the
# [d, vocab] head): 1/model of their memory per device, at the cost of one small
# all-reduce of the gathered embeddings and of the logits per step (see the README's
# "Scaling out" measurements). Replace the two rules by ``P()`` to replicate them
# instead. q/k/v and gate/up are split by column (whole heads per device, so the KV
# cache splits by kv heads), o/down by row: one all-reduce per row-parallel projection.
# Every norm (``.../norm/scale``, ``..._layernorm/scale``, q/k norms) is replicated.
DECODER_RULES: tuple[tuple[str, P], ...] = (
    (r"embed_tokens/embedding$", P("model", None)),
    (r"self_attn/(q_proj|k_proj|v_proj)/kernel$", P(None, "model")),
    (r"self_attn/(q_proj|k_proj|v_proj)/bias$", P("model")),
    (r"self_attn/o_proj/kernel$", P("model", None)),
    (r"self_attn/o_proj/bias$", P()),
    (r"mlp/(gate_proj|up_proj)/kernel$", P(None, "model")),
    (r"mlp/(gate_proj|up_proj)/bias$", P("model")),
    (r"mlp/down_proj/kernel$", P("model", None)),
    (r"mlp/down_proj/bias$", P()),
    (r"lm_head/kernel$", P(None, "model")),
    (r"norm/scale$", P()),
)
VOCAB_RULES = (r"embed_tokens/embedding$", r"lm_head/kernel$")


def register_decoder(name: str, architectures: dict[str, str], config: type, *,
                     model: Callable[[Any, Any], Any] = Decoder, **tensors: Any) -> Family:
    """Register a family on this builder: HF ``architectures`` (name -> model_type),
    ``config.from_hf`` as parser, Llama's tensor names (``tensors`` overrides fields of
    `TensorNames`, e.g. ``fused`` or ``aliases``) and `DECODER_RULES`."""
    names = {"prefix": "model.", "layers": "layers", "ignored": ("rotary_emb.inv_freq",),
             **tensors}
    return register(Family(name=name, architectures=architectures, config=config,
                           parse_config=config.from_hf, model=model,
                           tensors=TensorNames(**names), rules=DECODER_RULES,
                           vocab_rules=VOCAB_RULES, kv_heads_field="num_key_value_heads"))
