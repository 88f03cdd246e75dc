"""Classifier-free guidance (transformers semantics): batched and unbatched.

``ClassifierFreeGuidance``: the model already ran on ``2 * batch`` rows (conditional
rows first, then unconditional ones); the output has ``batch`` rows.

``UnbatchedClassifierFreeGuidance``: the processor runs the model itself on an
unconditional (negative) prompt, with its own KV cache carried in the processor state::

    init(ctx):   cache <- model(uncond_ids[:, :-1])        (prefill all but the last token)
    step 1:      uncond <- model(uncond_ids[:, -1])        (the pending last token)
    step t > 1:  uncond <- model(ctx.last_tokens)          (the token chosen at step t - 1)
    scores = log_softmax(scores); u = log_softmax(uncond)
    return guidance_scale * (scores - u) + u
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxgen.models.base import positions_from_mask
from jaxgen.ops import check_number, set_leaves
from jaxgen.processors.base import Context, LogitsProcessor, pytree_dataclass


@pytree_dataclass
class ClassifierFreeGuidance(LogitsProcessor):
    """``uncond + guidance_scale * (cond - uncond)`` on the two halves of the rows.

    logits: ``[2 * batch, vocab]`` (conditional rows first), ``ctx`` rows: ``batch``;
    returns ``[batch, vocab]``. Like transformers, the raw scores are mixed (no
    log-softmax) and ``guidance_scale`` must be > 1.
    """

    guidance_scale: Any

    def __post_init__(self):
        check_number("ClassifierFreeGuidance.guidance_scale", self.guidance_scale,
                     lambda v: v > 1, "> 1", per_row=False)
        set_leaves(self, jnp.float32, "guidance_scale")

    def __call__(self, logits: Float[Array, "rows2 vocab"], state: Any,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], Any]:
        if logits.shape[0] != 2 * ctx.sequences.shape[0]:
            raise ValueError(
                "ClassifierFreeGuidance: the logits need twice the rows of the sequences "
                "(conditional rows first, then unconditional ones); got "
                f"{logits.shape[0]} logits rows for {ctx.sequences.shape[0]} sequences")
        half = logits.shape[0] // 2
        cond, uncond = logits[:half], logits[half:]
        return (uncond + (cond - uncond) * self.guidance_scale).astype(logits.dtype), state


@struct.dataclass
class UnconditionalState:
    """State of `UnbatchedClassifierFreeGuidance` (rows = the context's rows)."""

    cache: Any                           # the model's KV cache of the unconditional rows
    mask: Int[Array, "rows length"]      # their attention mask (slots of the cache)
    position: Int[Array, " rows"]        # position id of the next token fed to the model
    pending: Int[Array, " rows"]         # last unconditional prompt token, fed at step 1
    slot: Int[Array, ""]                 # cache slot the next token is written to
    first: Bool[Array, ""]               # no step taken yet (feed ``pending``)


@pytree_dataclass
class UnbatchedClassifierFreeGuidance(LogitsProcessor):
    """Guidance against the model's own prediction for an unconditional prompt.

    guidance_scale: float leaf; 1 returns ``log_softmax(scores)`` unchanged.
    model: a jaxgen ``CausalLM`` (static, hashable); params: its parameters (leaves).
    unconditional_ids: ``[rows or 1, u]`` int ids, left-padded; None (transformers'
        default) uses the last token of each row's prompt.
    unconditional_attention_mask: ``[rows or 1, u]``; None means all ones.

    The cache holds ``u + (buffer - cur)`` slots when ``ctx.cur`` is concrete at ``init``
    (the smallest ``cur`` when it is per row); inside a jitted loop (traced ``cur``) it
    holds ``u + buffer - 1``, enough for any start. Every call feeds one token per row,
    whatever the rows' cursors. Positions come from the unconditional mask
    (``cumsum - 1``), as in jaxgen's decoding, so left padding does not shift them.
    """

    guidance_scale: Any
    model: Any = struct.field(pytree_node=False)
    params: Any
    unconditional_ids: Int[Array, "rows u"] | None = None
    unconditional_attention_mask: Int[Array, "rows u"] | None = None

    def __post_init__(self):
        check_number("UnbatchedClassifierFreeGuidance.guidance_scale", self.guidance_scale,
                     np.isfinite, "a number", per_row=False)
        set_leaves(self, jnp.float32, "guidance_scale")
        if not (hasattr(self.model, "apply") and hasattr(self.model, "init_cache")):
            raise ValueError("UnbatchedClassifierFreeGuidance.model must be a jaxgen CausalLM "
                             f"(init_cache and apply), got {type(self.model).__name__}")
        ids, mask = self.unconditional_ids, self.unconditional_attention_mask
        if isinstance(ids, (list, tuple, np.ndarray)):
            ids = np.asarray(ids, np.int32)
            ids = ids[None, :] if ids.ndim == 1 else ids
            if ids.ndim != 2 or ids.shape[1] == 0:
                raise ValueError("UnbatchedClassifierFreeGuidance.unconditional_ids must be "
                                 f"[rows, length] ids, got shape {ids.shape}")
            object.__setattr__(self, "unconditional_ids", ids)
        if isinstance(mask, (list, tuple, np.ndarray)):
            mask = np.asarray(mask, np.int32)
            mask = mask[None, :] if mask.ndim == 1 else mask
            object.__setattr__(self, "unconditional_attention_mask", mask)
            if ids is None:
                raise ValueError("UnbatchedClassifierFreeGuidance.unconditional_attention_mask "
                                 "needs unconditional_ids")
            if isinstance(ids, np.ndarray) and mask.shape != ids.shape:
                raise ValueError("UnbatchedClassifierFreeGuidance.unconditional_attention_mask "
                                 f"shape {mask.shape} differs from unconditional_ids "
                                 f"{ids.shape}")

    def _prompt(self, ctx: Context) -> tuple[Array, Array]:
        rows = ctx.sequences.shape[0]
        if self.unconditional_ids is None:
            ids = ctx.last_tokens[:, None]
            return ids, jnp.ones_like(ids)
        ids = jnp.asarray(self.unconditional_ids, jnp.int32)
        mask = (jnp.ones_like(ids) if self.unconditional_attention_mask is None
                else jnp.asarray(self.unconditional_attention_mask, jnp.int32))
        if ids.shape[0] not in (1, rows):
            raise ValueError(f"UnbatchedClassifierFreeGuidance.unconditional_ids has "
                             f"{ids.shape[0]} rows, the sequences {rows}")
        shape = (rows, ids.shape[1])
        return jnp.broadcast_to(ids, shape), jnp.broadcast_to(mask, shape)

    def init(self, ctx: Context) -> UnconditionalState:
        ids, umask = self._prompt(ctx)                          # [rows, u]
        rows, u = ids.shape
        buffer = ctx.sequences.shape[1]
        try:
            left = buffer - int(jnp.min(ctx.cur))               # steps still to come
        except jax.errors.ConcretizationTypeError:
            left = buffer - 1                                   # cur >= 1 always
        length = u + max(left, 1)
        mask = jnp.zeros((rows, length), jnp.int32).at[:, :u].set(umask)
        positions = positions_from_mask(umask)
        cache = self.model.init_cache(rows, length)
        if u > 1:                                               # prefill all but the last
            _, cache = self.model.apply(self.params, ids[:, :-1], positions[:, :-1], cache,
                                        mask)
        return UnconditionalState(cache=cache, mask=mask, position=positions[:, -1],
                                  pending=ids[:, -1], slot=jnp.asarray(u - 1, jnp.int32),
                                  first=jnp.ones((), bool))

    def __call__(self, logits: Float[Array, "rows vocab"], state: UnconditionalState,
                 ctx: Context) -> tuple[Float[Array, "rows vocab"], UnconditionalState]:
        tokens = jnp.where(state.first, state.pending, ctx.last_tokens)
        column = jax.lax.dynamic_slice_in_dim(state.mask, state.slot, 1, axis=1)
        column = jnp.where(state.first, column, 1)              # new tokens are real
        mask = jax.lax.dynamic_update_slice_in_dim(state.mask, column, state.slot, axis=1)
        out, cache = self.model.apply(self.params, tokens[:, None], state.position[:, None],
                                      state.cache, mask)
        scores = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        unc = jax.nn.log_softmax(out[:, -1].astype(jnp.float32), axis=-1)
        mixed = self.guidance_scale * (scores - unc) + unc
        scores = jnp.where(self.guidance_scale == 1, scores, mixed).astype(logits.dtype)
        new = UnconditionalState(cache=cache, mask=mask, position=state.position + 1,
                                 pending=state.pending, slot=state.slot + 1,
                                 first=jnp.zeros((), bool))
        return scores, new

    def reorder_state(self, state: UnconditionalState,
                      rows: Int[Array, " rows"]) -> UnconditionalState:
        """Follow beam search: cache leaves carry rows on axis 1 (``[layers, rows, ...]``,
        see `jaxgen.models.base`), scalar leaves (the cache index) are shared."""
        cache = jax.tree.map(lambda x: jnp.take(x, rows, axis=1) if jnp.ndim(x) >= 2 else x,
                             state.cache)
        return state.replace(cache=cache, mask=jnp.take(state.mask, rows, axis=0),
                             position=jnp.take(state.position, rows, axis=0),
                             pending=jnp.take(state.pending, rows, axis=0))
