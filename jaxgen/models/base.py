"""The `CausalLM` protocol and the KV cache layout the decoding core relies on.

A model is anything with ``init_cache`` and ``apply`` below. Our Llama and GPT-2 are
Flax modules wrapped behind it; a user model (linen, NNX, Equinox, raw jax) plugs in
by implementing the same two methods.

Cache semantics (one write position shared by the whole batch, rows left-padded)::

    slot:        0   1   2   3   4   5   6   7        (length = 8)
    row 0 mask:  0   0   1   1   1   .   .   .        prompt of 3, left-padded
    row 1 mask:  1   1   1   1   1   .   .   .        prompt of 5
    cache.index = 5: the next ``apply`` writes its first token's k/v at slot 5.

``apply(params, tokens[b, t], positions[b, t], cache, mask[b, length])`` writes the k/v
of the t tokens at slots ``index .. index + t - 1``; the query at slot ``index + i``
attends to key slot ``j`` iff ``mask[b, j] == 1`` and ``j <= index + i``. The caller sets
the mask of the new slots before the call. The returned cache has ``index + t``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float, Int

# Masked attention scores use a large finite negative value, never -inf, so that a
# fully masked (pad) query row gives a uniform softmax instead of NaN.
MASK_VALUE = -1e9


@struct.dataclass
class KVCache:
    """Preallocated key/value cache.

    k, v: [layers, batch, kv_heads, length, head_dim]
    index: int32 scalar, the slot the next token is written to.
    """

    k: Float[Array, "layers batch kv_heads length head_dim"]
    v: Float[Array, "layers batch kv_heads length head_dim"]
    index: Int[Array, ""]

    @classmethod
    def zeros(cls, layers: int, batch: int, kv_heads: int, length: int, head_dim: int,
              dtype: Any = jnp.float32) -> KVCache:
        shape = (layers, batch, kv_heads, length, head_dim)
        return cls(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                   index=jnp.zeros((), jnp.int32))

    @property
    def length(self) -> int:
        return self.k.shape[3]


@runtime_checkable
class CausalLM(Protocol):
    """What the decoding core needs from a model. Must be hashable (it is a jit static)."""

    vocab_size: int

    def init_cache(self, batch: int, length: int) -> Any:
        """An empty cache pytree for ``batch`` rows and ``length`` slots."""
        ...

    def apply(self, params: Any, tokens: Int[Array, "batch t"],
              positions: Int[Array, "batch t"], cache: Any,
              mask: Int[Array, "batch length"]) -> tuple[Float[Array, "batch t vocab"], Any]:
        """Logits for ``tokens`` and the updated cache (see the module docstring)."""
        ...


def positions_from_mask(mask: Int[Array, "batch t"]) -> Int[Array, "batch t"]:
    """Position ids from an attention mask: ``cumsum(mask) - 1``, 0 on left padding."""
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)


def logits(model: CausalLM, params: Any, input_ids: Int[Array, "batch t"],
           attention_mask: Int[Array, "batch t"] | None = None) -> Float[Array, "batch t vocab"]:
    """Teacher-forced logits ``[batch, t, vocab]`` for a (left-padded) batch."""
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
    return _logits_jit(model, params, input_ids, attention_mask)


def _logits_fn(model: CausalLM, params: Any, input_ids: jax.Array, attention_mask: jax.Array):
    b, t = input_ids.shape
    cache = model.init_cache(b, t)
    out, _ = model.apply(params, input_ids, positions_from_mask(attention_mask), cache,
                         attention_mask)
    return out


_logits_jit = jax.jit(_logits_fn, static_argnums=0)


class FlaxCausalLM:
    """Shared half of our Flax models' ``CausalLM`` wrappers (Llama, GPT-2).

    Subclasses are frozen dataclasses with ``config`` and ``dtype`` fields and define
    ``module`` (the linen network: ``(tokens, positions, k, v, index, mask) -> (logits,
    k, v)``) and ``init_cache``. ``dtype`` is the parameter, activation and cache dtype;
    logits are always float32.
    """

    config: Any
    dtype: Any

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype))

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def apply(self, params: Any, tokens: Int[Array, "batch t"],
              positions: Int[Array, "batch t"], cache: KVCache,
              mask: Int[Array, "batch length"]) -> tuple[Float[Array, "batch t vocab"], KVCache]:
        """Float32 logits for ``tokens`` and the cache with their k/v written at
        ``cache.index`` (semantics in the module docstring)."""
        tokens = jnp.asarray(tokens, jnp.int32)
        out, k, v = self.module.apply({"params": params}, tokens,
                                      jnp.asarray(positions, jnp.int32), cache.k, cache.v,
                                      cache.index, jnp.asarray(mask, jnp.int32))
        return out, KVCache(k=k, v=v, index=cache.index + tokens.shape[1])

    def init_params(self, rng: jax.Array) -> dict[str, Any]:
        """Random parameters (normal(0.02) weights, unit norms, zero biases), jitted."""
        return _init_params(self, rng)


def init_params_for(model: Any, rng: jax.Array) -> dict[str, Any]:
    """Initialise ``model.module`` on a 1-token dummy input."""
    cache = model.init_cache(1, 1)
    ones = jnp.zeros((1, 1), jnp.int32)
    variables = model.module.init(rng, ones, ones, cache.k, cache.v, cache.index,
                                  jnp.ones((1, 1), jnp.int32))
    return variables["params"]


_init_params = jax.jit(init_params_for, static_argnums=0)
