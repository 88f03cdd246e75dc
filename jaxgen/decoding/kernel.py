"""THE step kernel: what every strategy does with a step's logits, written once.

    process -> record scores -> pick -> write token and mask -> test eos and criteria

Strategies call these pieces (``advance`` is all of them for one token per row):
beam search picks among beams, speculative decoding verifies several positions, but
they all process with the same chain, record, write and stop through here. Every
function takes a scalar ``cur`` (one write slot for the batch) or a ``[rows]`` one.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxgen.decoding.record import model_apply, model_wants
from jaxgen.decoding.record import record as record_outputs
from jaxgen.decoding.state import Knobs, LoopState
from jaxgen.ops import NEG_INF, fast_argmax, row_slice
from jaxgen.processors.base import Context
from jaxgen.processors.sampling import TopK
from jaxgen.stopping import any_done


def row_keys(rng: Any, step: Int[Array, "*rows"]) -> Any:
    """One key per row for this step: ``fold_in(row_key, step)`` (``step`` scalar or per row),
    so a row's draws never depend on the other rows."""
    if jnp.ndim(step) == 0:
        return jax.vmap(jax.random.fold_in, in_axes=(0, None))(rng, step)
    return jax.vmap(jax.random.fold_in)(rng, step)


def put(buf: Int[Array, "rows length"], values: Array, cur: Int[Array, "*rows"]) -> Array:
    """``buf`` with ``values`` ([rows] or [rows, t]) written from slot ``cur`` on; per-row
    slots past the end are dropped."""
    values = values[:, None] if values.ndim == 1 else values
    values = values.astype(buf.dtype)
    if jnp.ndim(cur) == 0:
        return jax.lax.dynamic_update_slice(buf, values, (0, cur))
    rows = jnp.arange(buf.shape[0])[:, None]
    slots = cur[:, None] + jnp.arange(values.shape[1])[None, :]
    return buf.at[rows, slots].set(values, mode="drop")


def forward_last(params: Any, loop: LoopState) -> tuple[Float[Array, "rows vocab"], Any]:
    """Feed the token of slot ``cur - 1`` to the model: next-token logits and the cache."""
    tokens = row_slice(loop.sequences, loop.cur - 1, 1)
    out, cache = loop.model.apply(params, tokens, loop.position[:, None], loop.cache,
                                  loop.attention_mask)
    return out[:, 0], cache


def feed(params: Any, loop: LoopState, want: tuple[str, ...] = ()
         ) -> tuple[Float[Array, "rows vocab"], LoopState, dict[str, Any]]:
    """`forward_last`, recording what ``loop.trace`` asks for: ``(next-token logits, the
    loop with the new cache and trace, the model's extras)``; ``want`` names extras the
    strategy needs itself (``"hidden_states"``, ``"attentions"``)."""
    tokens = row_slice(loop.sequences, loop.cur - 1, 1)
    want = tuple(dict.fromkeys((*want, *model_wants(loop.trace))))
    out, cache, extras = model_apply(loop.model, params, tokens, loop.position[:, None],
                                     loop.cache, loop.attention_mask, want)
    trace = record_outputs(loop.trace, out[:, 0], extras, loop.cur - 1, loop.new_tokens)
    return out[:, 0], loop.replace(cache=cache, trace=trace), extras


def process(knobs: Knobs, logits: Float[Array, "rows vocab"], pstate: Any, ctx: Context
            ) -> tuple[Float[Array, "rows vocab"], Any]:
    """Run the processor chain (transformers' order) with its state, in float32."""
    return knobs.processors(logits.astype(jnp.float32), pstate, ctx)


def eos_hit(knobs: Knobs, tokens: Int[Array, "*shape"]) -> Bool[Array, "*shape"]:
    """Whether each token is one of the eos ids (padded with -1, which never matches)."""
    return (tokens[..., None] == knobs.eos).any(-1)


def criteria_hit(knobs: Knobs, ctx_after: Context) -> Bool[Array, " rows"] | bool:
    """In-loop stopping criteria after a token was written (``ctx_after.cur`` is the slot
    after it); ``False`` when there are none."""
    if not knobs.stopping:
        return False
    return any_done(knobs.stopping, ctx_after)


def record(scores: Float[Array, "rows new vocab"] | None, values: Float[Array, "rows vocab"],
           at: Int[Array, "*rows"]) -> Float[Array, "rows new vocab"] | None:
    """``scores`` with this step's ``values`` stored at new-token index ``at``."""
    if scores is None:
        return None
    values = values.astype(scores.dtype)
    if jnp.ndim(at) == 0:
        return jax.lax.dynamic_update_slice(scores, values[:, None, :], (0, at, 0))
    return scores.at[jnp.arange(scores.shape[0]), at].set(values, mode="drop")


def _scatter(vals: Float[Array, "batch k"], ids: Int[Array, "batch k"],
             shape: tuple[int, int]) -> Float[Array, "batch vocab"]:
    """Candidate values back at their token ids, -inf elsewhere."""
    rows = jnp.arange(vals.shape[0])[:, None]
    return jnp.full(shape, NEG_INF, vals.dtype).at[rows, ids].set(vals)


def warp_and_sample(warpers: tuple[Any, ...], states: tuple[Any, ...],
                    logits: Float[Array, "batch vocab"], ctx: Context, keys: Any,
                    want_scores: bool) -> tuple[Int[Array, " batch"], tuple[Any, ...], Any]:
    """Apply sampling warpers, then draw one token per row with its own key.

    After a ``TopK`` warper the remaining warpers and the draw run on the ``k_max``
    candidates only (no full-vocabulary sort or categorical). Returns ``(tokens [batch],
    new warper states, warped scores [batch, vocab] or None)``.
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


def pick(loop: LoopState, logits: Float[Array, "rows vocab"], wstate: Any, ctx: Context,
         do_sample: bool) -> tuple[Int[Array, " rows"], Any, Float[Array, "rows vocab"]]:
    """Greedy argmax, or warp and draw with the rows' keys: ``(tokens, wstate, scores)``."""
    if not do_sample:
        return fast_argmax(logits), wstate, logits
    keys = row_keys(loop.rng, loop.new_tokens)
    tokens, wstate, scores = warp_and_sample(loop.knobs.warpers.processors, wstate, logits,
                                             ctx, keys, loop.scores is not None)
    return tokens, wstate, scores


def commit(loop: LoopState, tokens: Int[Array, " rows"], scores: Any, proc_state: Any
           ) -> LoopState:
    """Write one token per row at ``cur`` (pad for finished rows), then test eos and the
    in-loop criteria and record ``scores``."""
    knobs = loop.knobs
    live = ~loop.done
    tokens = jnp.where(live, tokens, knobs.pad)
    done = loop.done | eos_hit(knobs, tokens)
    sequences = put(loop.sequences, tokens, loop.cur)
    mask = put(loop.attention_mask, jnp.ones_like(tokens), loop.cur)
    done = done | criteria_hit(knobs, loop.context(sequences, mask, loop.cur + 1))
    return loop.replace(sequences=sequences, attention_mask=mask, position=loop.position + 1,
                        cur=loop.cur + 1, done=done, proc_state=proc_state,
                        scores=record(loop.scores, scores, loop.new_tokens))


def advance(loop: LoopState, logits: Float[Array, "rows vocab"], do_sample: bool
            ) -> LoopState:
    """The whole kernel for one token per row: process, pick, write, stop, record."""
    ctx = loop.context()
    pstate, wstate = loop.proc_state
    logits, pstate = process(loop.knobs, logits, pstate, ctx)
    tokens, wstate, scores = pick(loop, logits, wstate, ctx, do_sample)
    return commit(loop, tokens, scores, (pstate, wstate))
