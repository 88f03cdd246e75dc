"""One token choice shared by greedy and sampling: process, warp, pick, write.

Greedy is the argmax of the processed logits. Sampling runs the warpers and draws
with one random stream per row (``fold_in(row_key, step)``), so a row's sample does
not depend on the other rows. After a ``TopK`` warper the remaining warpers and the
draw run on the ``k_max`` candidates only (no full-vocabulary sort or categorical).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxgen.decoding.state import DecodeState
from jaxgen.processors.base import Context, id_mask
from jaxgen.processors.sampling import NEG_INF, TopK
from jaxgen.stopping import any_done


def fast_argmax(x: Float[Array, "batch n"]) -> Int[Array, " batch"]:
    """First index of the row maximum; ``max`` + ``where`` + ``min`` is much faster than
    ``jnp.argmax``'s variadic reduce on XLA:CPU."""
    n = x.shape[-1]
    best = jnp.max(x, axis=-1, keepdims=True)
    idx = jnp.where(x == best, jnp.arange(n, dtype=jnp.int32), n)
    return jnp.minimum(jnp.min(idx, axis=-1), n - 1).astype(jnp.int32)


def warp_and_sample(warpers: tuple[Any, ...], states: tuple[Any, ...],
                    logits: Float[Array, "batch vocab"], ctx: Context, keys: Any,
                    want_scores: bool) -> tuple[Int[Array, " batch"], tuple[Any, ...], Any]:
    """Apply sampling warpers, then draw one token per row with its own key.

    Returns ``(tokens [batch], new warper states, processed scores [batch, vocab] or None)``.
    """
    vals, ids = logits, None
    new_states = []
    for w, s in zip(warpers, states, strict=True):
        if ids is None and isinstance(w, TopK):
            vals, ids = w.candidates(vals)        # [batch, vocab] -> [batch, k_max]
        elif ids is not None and not w.is_warper:
            # a processor that looks at token ids (e.g. a watermark): back to the full row
            vals, ids = _scatter(vals, ids, logits.shape), None
            vals, s = w(vals, s, ctx)
        else:
            vals, s = w(vals, s, ctx)
        new_states.append(s)
    pick = jax.vmap(jax.random.categorical)(keys, vals)          # [batch]
    tokens = pick if ids is None else jnp.take_along_axis(ids, pick[:, None], axis=1)[:, 0]
    scores = None
    if want_scores:
        scores = vals if ids is None else _scatter(vals, ids, logits.shape)
    return tokens.astype(jnp.int32), tuple(new_states), scores


def _scatter(vals: Float[Array, "batch k"], ids: Int[Array, "batch k"],
             shape: tuple[int, int]) -> Float[Array, "batch vocab"]:
    """Candidate values back at their token ids, -inf elsewhere."""
    rows = jnp.arange(vals.shape[0])[:, None]
    return jnp.full(shape, NEG_INF, vals.dtype).at[rows, ids].set(vals)


def choose(state: DecodeState, logits: Float[Array, "batch vocab"], do_sample: bool,
           output_scores: bool) -> DecodeState:
    """Pick the token of slot ``cur`` from the model's ``logits`` and write it."""
    knobs, ctx = state.knobs, state.context()
    logits = logits.astype(jnp.float32)
    pstate, wstate = state.proc_state
    logits, pstate = knobs.processors(logits, pstate, ctx)
    if do_sample:
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.rng, state.new_tokens)
        tokens, wstate, scores = warp_and_sample(knobs.warpers.processors, wstate, logits,
                                                 ctx, keys, output_scores)
    else:
        tokens, scores = fast_argmax(logits), logits
    tokens = jnp.where(state.done, knobs.pad, tokens)
    done = state.done | id_mask(knobs.eos, logits.shape[-1])[tokens]
    b = tokens.shape[0]
    sequences = jax.lax.dynamic_update_slice(state.sequences, tokens[:, None], (0, state.cur))
    mask = jax.lax.dynamic_update_slice(state.attention_mask, jnp.ones((b, 1), jnp.int32),
                                        (0, state.cur))
    if knobs.stopping:
        after = Context(sequences=sequences, attention_mask=mask,
                        cur=state.cur + 1, start=state.start, elapsed=state.elapsed)
        done = done | any_done(knobs.stopping, after)
    new_scores = state.scores
    if output_scores:
        new_scores = jax.lax.dynamic_update_slice(
            state.scores, scores[:, None, :].astype(state.scores.dtype),
            (0, state.new_tokens, 0))
    return state.replace(
        sequences=sequences,
        attention_mask=mask,
        position=state.position + 1,
        cur=state.cur + 1,
        done=done,
        proc_state=(pstate, wstate),
        scores=new_scores,
    )
