"""The `CausalLM` protocol and the KV cache layout the decoding core relies on.

A model is anything with the four methods of `CausalLM` below. Our families are pure
functions over parameter dicts behind `LanguageModel` (`jaxgen.models.decoder`); a user
model (linen, NNX, Equinox, raw jax) plugs in by implementing the same methods. The
cache classes live in `jaxgen.models.cache` (`KVCache` for full attention, `RingCache`
for sliding windows, `LayerCaches` for models with both).

Cache semantics (rows left-padded; here one write position shared by the batch)::

    slot:        0   1   2   3   4   5   6   7        (length = 8)
    row 0 mask:  0   0   1   1   1   .   .   .        prompt of 3, left-padded
    row 1 mask:  1   1   1   1   1   .   .   .        prompt of 5
    cache.index = 5: the next ``apply`` writes its first token's k/v at slot 5.

``apply(params, tokens[b, t], positions[b, t], cache, mask[b, length])`` writes the k/v
of the t tokens at slots ``index .. index + t - 1``; the query at slot ``index + i``
attends to key slot ``j`` iff ``mask[b, j] == 1`` and ``j <= index + i``. The caller sets
the mask of the new slots before the call. The returned cache has ``index + t``.

The index is an int32 scalar, or an int32 ``[batch]`` vector when rows write at
different slots (row ``b`` then uses ``index[b]`` above; speculative decoding after rows
accepted different numbers of tokens). ``rewind_cache`` sets it, ``reorder_cache``
permutes rows (beam search).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxgen.models.cache import KVCache, WriteIndex, positions_from_mask  # noqa: F401
from jaxgen.models.layers import (
    STACKED,
    layer_groups,
    stack_layers,
    stacked_shapes,
    unstack_layers,
)

OUTPUTS = ("hidden_states", "attentions")  # what ``apply(..., outputs=...)`` may ask for
_INIT_STD = 0.02


@runtime_checkable
class CausalLM(Protocol):
    """What the decoding core needs from a model. Must be hashable (it is a jit static)."""

    vocab_size: int

    def init_cache(self, batch: int, length: int) -> Any:
        """An empty cache pytree for ``batch`` rows and ``length`` slots, index 0. Our
        models also take ``step_tokens=`` (the most tokens one call after the prefill
        writes), which sizes the ring buffers of sliding-window layers."""
        ...

    def apply(self, params: Any, tokens: Int[Array, "batch t"],
              positions: Int[Array, "batch t"], cache: Any,
              mask: Int[Array, "batch length"]) -> tuple[Float[Array, "batch t vocab"], Any]:
        """Logits for ``tokens`` and the updated cache (see the module docstring). Our
        models also take ``outputs=("hidden_states", "attentions")`` and then return
        ``(logits, cache, extras)`` (`LanguageModel.apply`)."""
        ...

    def reorder_cache(self, cache: Any, rows: Int[Array, " rows"]) -> Any:
        """The cache whose row ``i`` is old row ``rows[i]`` (beam search)."""
        ...

    def rewind_cache(self, cache: Any, index: WriteIndex) -> Any:
        """The same cache with its write position set to ``index`` (an int32 scalar or a
        [batch] vector); slots at and after it will be overwritten (speculative decoding)."""
        ...


def logits(model: CausalLM, params: Any, input_ids: Int[Array, "batch t"],
           attention_mask: Int[Array, "batch t"] | None = None, *,
           output_hidden_states: bool = False) -> Any:
    """Teacher-forced logits ``[batch, t, vocab]`` for a (left-padded) batch; with
    ``output_hidden_states=True``, ``(logits, hidden_states)`` (num_layers + 1 arrays
    ``[batch, t, hidden]``, transformers' layout)."""
    if not output_hidden_states:
        return forward(model, params, input_ids, attention_mask)[0]
    out, extras = forward(model, params, input_ids, attention_mask, outputs=("hidden_states",))
    return out, extras["hidden_states"]


def forward(model: CausalLM, params: Any, input_ids: Int[Array, "batch t"],
            attention_mask: Int[Array, "batch t"] | None = None, *,
            outputs: tuple[str, ...] = ()) -> tuple[Float[Array, "batch t vocab"], dict]:
    """Teacher-forced ``(logits, extras)``: ``extras`` holds the requested ``outputs``
    (``"hidden_states"``: num_layers + 1 arrays ``[batch, t, hidden]``; ``"attentions"``:
    per layer ``[batch, heads, t, t]``), as transformers' ``output_hidden_states`` /
    ``output_attentions``."""
    input_ids = jnp.asarray(input_ids, jnp.int32)
    if attention_mask is None:
        attention_mask = jnp.ones_like(input_ids)
    attention_mask = jnp.asarray(attention_mask, jnp.int32)
    return _forward_jit(model, params, input_ids, attention_mask, tuple(outputs))


def _forward_fn(model: Any, params: Any, input_ids: jax.Array, attention_mask: jax.Array,
                outputs: tuple[str, ...]) -> tuple[jax.Array, dict]:
    b, t = input_ids.shape
    cache = model.init_cache(b, t)
    positions = positions_from_mask(attention_mask)
    if not outputs:
        return model.apply(params, input_ids, positions, cache, attention_mask)[0], {}
    out, _, extras = model.apply(params, input_ids, positions, cache, attention_mask,
                                 outputs=outputs)
    return out, extras


_forward_jit = jax.jit(_forward_fn, static_argnums=(0, 4))


def check_outputs(outputs: Any) -> tuple[str, ...]:
    """``outputs`` as a tuple, ValueError naming anything not in `OUTPUTS`."""
    outputs = (outputs,) if isinstance(outputs, str) else tuple(outputs)
    bad = [o for o in outputs if o not in OUTPUTS]
    if bad:
        raise ValueError(f"unknown outputs {bad}; supported: {list(OUTPUTS)}")
    return outputs


class LanguageModel:
    """Shared half of our models' ``CausalLM`` wrappers (pure functions over param dicts).

    Subclasses are frozen dataclasses with ``config``, ``dtype`` and ``scan_layers``
    fields and define ``forward(params, tokens, positions, cache, mask, outputs) ->
    (logits, cache, extras)``, ``per_layer_shapes()`` (``{name: (shape, "normal" | "ones"
    | "zeros")}``, one ``layers_<i>`` subtree per layer), ``layer_specs()`` and
    ``init_cache``. ``dtype`` is the parameter, activation and cache dtype; logits are
    always float32. With ``scan_layers`` the parameters are stacked (`param_shapes`).
    """

    config: Any
    dtype: Any
    scan_layers: bool

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", jnp.dtype(self.dtype))

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def apply(self, params: Any, tokens: Int[Array, "batch t"],
              positions: Int[Array, "batch t"], cache: Any, mask: Int[Array, "batch length"],
              *, outputs: tuple[str, ...] = ()) -> tuple[Any, ...]:
        """Float32 logits for ``tokens`` and the cache with their k/v written at
        ``cache.index``, scalar or per row (semantics in the module docstring).

        ``outputs``: ``"hidden_states"`` and/or ``"attentions"``; then returns ``(logits,
        cache, extras)`` with ``extras["hidden_states"]`` (num_layers + 1 arrays ``[batch,
        t, hidden]``: the embeddings first, the last after the final norm) and
        ``extras["attentions"]`` (per layer ``[batch, heads, t, length]`` probabilities over
        the cache slots). With ``outputs=()`` it returns ``(logits, cache)``.
        """
        outputs = check_outputs(outputs)
        out, cache, extras = self.forward(params, jnp.asarray(tokens, jnp.int32),
                                          jnp.asarray(positions, jnp.int32), cache,
                                          jnp.asarray(mask, jnp.int32), outputs)
        return (out, cache, extras) if outputs else (out, cache)

    def reorder_cache(self, cache: Any, rows: Int[Array, " rows"]) -> Any:
        """The cache whose row ``i`` is old row ``rows[i]`` (each stack's ``reorder``)."""
        return cache.reorder(rows)

    def rewind_cache(self, cache: Any, index: WriteIndex) -> Any:
        """The cache with its write position set to ``index`` (each stack's ``rewind``)."""
        return cache.rewind(index)

    def init_params(self, rng: jax.Array) -> dict[str, Any]:
        """Random parameters (normal(0.02) weights, unit norms, zero biases), jitted."""
        return _init_params(self, rng)

    def param_shapes(self) -> dict[str, Any]:
        """``{name: (shape, init)}``: `per_layer_shapes`, stacked with ``scan_layers``
        (``layers``: one dict per layer group, leaves ``[repeats, ...]``)."""
        tree = self.per_layer_shapes()
        if not self.scan_layers:
            return tree
        out = {k: v for k, v in tree.items() if not k.startswith("layers_")}
        out[STACKED] = stacked_shapes(tree["layers_0"], layer_groups(self.layer_specs()))
        return out

    def with_scan(self, scan_layers: bool = True) -> Any:
        """The same model with (or without) stacked, scanned layers."""
        return dataclasses.replace(self, scan_layers=scan_layers)

    def stack_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Per-layer params -> the stacked layout of ``self.with_scan()``."""
        return stack_layers(params, layer_groups(self.layer_specs()))

    def unstack_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Stacked params -> the per-layer layout (Hugging Face's, for IO)."""
        return unstack_layers(params, layer_groups(self.layer_specs()))


def dense_shapes(n_in: int, n_out: int, bias: bool = True) -> dict[str, Any]:
    """`init_from_shapes` entries of a dense layer: kernel ``[in, out]`` (+ bias)."""
    return {"kernel": ((n_in, n_out), "normal"), **({"bias": ((n_out,), "zeros")} if bias
                                                    else {})}


def init_from_shapes(shapes: dict[str, Any], dtype: Any, rng: jax.Array) -> dict[str, Any]:
    """Parameters for ``{name: (shape, init)}`` ``shapes``: one key per leaf (flattening
    order), ``normal(0.02)`` / ones / zeros."""
    def is_leaf(x: Any) -> bool:
        return isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], str)

    leaves, treedef = jax.tree.flatten(shapes, is_leaf=is_leaf)
    keys = jax.random.split(rng, len(leaves))
    made = [_INIT_STD * jax.random.normal(key, shape, dtype) if init == "normal" else
            (jnp.ones if init == "ones" else jnp.zeros)(shape, dtype)
            for key, (shape, init) in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(treedef, made)


_init_params = jax.jit(lambda model, rng: init_from_shapes(model.param_shapes(), model.dtype,
                                                           rng), static_argnums=0)


def new_cache(model: Any, batch: int, length: int, step_tokens: int = 1) -> Any:
    """``model.init_cache(batch, length)``, with ``step_tokens=`` when the model takes it
    (ours do: it sizes the ring buffers of sliding-window layers; a user model's
    two-argument ``init_cache`` still works)."""
    if step_tokens > 1 and _takes_step_tokens(type(model)):
        return model.init_cache(batch, length, step_tokens=step_tokens)
    return model.init_cache(batch, length)


@functools.cache
def _takes_step_tokens(cls: type) -> bool:
    params = inspect.signature(cls.init_cache).parameters
    return "step_tokens" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
