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
Registers the ``gpt2`` family (GPT2LMHeadModel).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from jax import lax
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Float

from jaxgen.models.attention import attend
from jaxgen.models.base import LanguageModel, dense_shapes
from jaxgen.models.cache import KVCache
from jaxgen.models.decoder import dense
from jaxgen.models.decoder_config import ACTIVATIONS
from jaxgen.models.layers import LayerSpec, run_layers
from jaxgen.models.registry import Family, TensorNames, register
from jaxgen.ops import take_bits

_ARCHITECTURE = "GPT2LMHeadModel"
Params = dict[str, Any]


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
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(f"activation_function={self.activation_function!r} is not supported;"
                             f" supported: {sorted(ACTIVATIONS)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not a multiple of n_head={self.n_head}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def attn_scale(self, layer: Any) -> Any:
        """HF's score scale of ``layer`` (an int, or traced under a scan): 1/sqrt(head_dim)
        and/or 1/(layer + 1)."""
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
        return {"architectures": [_ARCHITECTURE], "model_type": "gpt2", **d}


def layer_norm(p: Params, x: Float[Array, "... d"], eps: float) -> Float[Array, "... d"]:
    """LayerNorm with statistics in float32 (``mean((x - mean)^2)`` variance)."""
    xf = x.astype(jnp.float32)
    mean = jnp.mean(xf, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=-1, keepdims=True)
    return ((xf - mean) * lax.rsqrt(var + eps) * p["scale"] + p["bias"]).astype(x.dtype)


def gpt2_layer(c: GPT2Config, i: Any, p: Params, x: Float[Array, "b t d"], stack: KVCache,
               visible: Array, with_probs: bool) -> tuple[Array, KVCache, Array | None]:
    """One pre-LayerNorm block: ``x + attn(ln_1(x))``, ``x + mlp(ln_2(x))``."""
    b, t, d = x.shape
    qkv = dense(p["attn"]["c_attn"], layer_norm(p["ln_1"], x, c.layer_norm_epsilon))
    q, k, v = (y.reshape(b, t, c.n_head, c.head_dim) for y in jnp.split(qkv, 3, axis=-1))
    stack, keys, values = stack.update(i, k, v)
    o, probs = attend(q, keys, values, visible, c.attn_scale(i), with_probs=with_probs)
    x = x + dense(p["attn"]["c_proj"], o)
    h = layer_norm(p["ln_2"], x, c.layer_norm_epsilon)
    h = ACTIVATIONS[c.activation_function](dense(p["mlp"]["c_fc"], h))
    return x + dense(p["mlp"]["c_proj"], h), stack, probs


@dataclasses.dataclass(frozen=True)
class GPT2(LanguageModel):
    """GPT-2 `CausalLM`. ``dtype`` is the parameter, activation and cache dtype; logits
    are always float32. Hashable, so it can be a jit static argument."""

    config: GPT2Config
    dtype: Any = jnp.float32
    scan_layers: bool = False  # stacked layer weights under a lax.scan (jaxgen.models.layers)

    def init_cache(self, batch: int, length: int, *, step_tokens: int = 1) -> KVCache:
        """Zero cache ``[layers, batch, heads, length, head_dim]`` in ``dtype``, index 0
        (``step_tokens`` is accepted for the protocol; full attention needs no slack)."""
        c = self.config
        return KVCache.zeros(c.n_layer, batch, c.n_head, length, c.head_dim, self.dtype)

    def forward(self, params: Params, tokens: Array, positions: Array, cache: KVCache,
                mask: Array, outputs: tuple[str, ...]) -> tuple[Array, KVCache, dict]:
        """Token + position embeddings, the blocks (`run_layers`), ``ln_f``, the head."""
        c = self.config
        x = (take_bits(params["wte"]["embedding"], tokens, axis=0)
             + take_bits(params["wpe"]["embedding"], positions, axis=0))

        def layer_fn(p: Params, spec: LayerSpec, x: Array, stack: Any, visible: Array,
                     with_probs: bool) -> tuple[Array, Any, Array | None]:
            return gpt2_layer(c, spec.slot, p, x, stack, visible, with_probs)  # slot: layer

        x, cache, extras = run_layers(layer_fn, self.layer_specs(), ("full_attention",), x,
                                      cache, positions, mask, outputs, params)
        x = layer_norm(params["ln_f"], x, c.layer_norm_epsilon)
        if "hidden_states" in extras:
            extras["hidden_states"] = (*extras["hidden_states"][:-1], x)
        return self.head(params, x, norm=False), cache, extras

    def head(self, params: Params, hidden: Float[Array, "b t d"], *, norm: bool = True
             ) -> Float[Array, "b t vocab"]:
        """Float32 logits of a hidden state (``ln_f`` first unless ``norm=False``)."""
        c = self.config
        if norm:
            hidden = layer_norm(params["ln_f"], hidden, c.layer_norm_epsilon)
        if c.tie_word_embeddings:
            return jnp.dot(hidden, params["wte"]["embedding"].T).astype(jnp.float32)
        return dense(params["lm_head"], hidden).astype(jnp.float32)

    def layer_specs(self) -> tuple[LayerSpec, ...]:
        """Every layer: full attention, its slot the layer index."""
        return tuple(LayerSpec("full_attention", i) for i in range(self.config.n_layer))

    def per_layer_shapes(self) -> dict[str, Any]:
        """``{name: (shape, init)}`` of the parameters (module docstring layout)."""
        c = self.config
        d, inner, proj = c.n_embd, c.n_inner, dense_shapes

        ln = {"scale": ((d,), "ones"), "bias": ((d,), "zeros")}
        layer = {"ln_1": ln, "attn": {"c_attn": proj(d, 3 * d), "c_proj": proj(d, d)},
                 "ln_2": ln, "mlp": {"c_fc": proj(d, inner), "c_proj": proj(inner, d)}}
        tree = {"wte": {"embedding": ((c.vocab_size, d), "normal")},
                "wpe": {"embedding": ((c.n_positions, d), "normal")},
                **{f"layers_{i}": layer for i in range(c.n_layer)}, "ln_f": ln}
        if not c.tie_word_embeddings:
            tree["lm_head"] = dense_shapes(d, c.vocab_size, bias=False)
        return tree


# --------------------------------------------------------------------------- the family

# GPT-2's fused c_attn kernel [d, 3d] holds q | k | v side by side, so a column split
# gives device i the columns [i*3d/m, (i+1)*3d/m), which cut across q/k/v and heads.
# jit stays correct (the tests compare tokens): XLA moves the misaligned slices of the
# [rows, t, 3d] activation with a few small collective-permutes per layer; weights never
# move. Replicating c_attn does not avoid them: XLA still splits that matmul's output
# along 3d (measured on 8 simulated devices: the same 9 permutes per layer, equal speed),
# so the column split is kept for its 1/m memory. c_proj, the MLP and the vocabulary are
# split as for Llama.
GPT2_RULES: list[tuple[str, P]] = [
    (r"wte/embedding$", P("model", None)),
    (r"wpe/embedding$", P()),
    (r"attn/c_attn/kernel$", P(None, "model")),
    (r"attn/c_attn/bias$", P("model")),
    (r"attn/c_proj/kernel$", P("model", None)),
    (r"attn/c_proj/bias$", P()),
    (r"mlp/c_fc/kernel$", P(None, "model")),
    (r"mlp/c_fc/bias$", P("model")),
    (r"mlp/c_proj/kernel$", P("model", None)),
    (r"mlp/c_proj/bias$", P()),
    (r"lm_head/kernel$", P(None, "model")),
    (r"ln_(1|2|f)/(scale|bias)$", P()),
]

# HF checkpoints name GPT-2's tensors with or without "transformer."; Conv1D weights are
# already [in, out].
FAMILY = register(Family(
    name="gpt2", architectures={_ARCHITECTURE: "gpt2"}, config=GPT2Config,
    parse_config=GPT2Config.from_hf, model=GPT2,
    tensors=TensorNames(prefix="transformer.", prefix_optional=True, layers="h",
                        transpose_kernels=False, ignored=(".attn.bias", ".attn.masked_bias")),
    rules=tuple(GPT2_RULES), vocab_rules=(r"wte/embedding$", r"lm_head/kernel$"),
    kv_heads_field="n_head"))
