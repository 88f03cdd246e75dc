"""Prefill + the generic ``lax.while_loop`` driver, for any strategy.

``prefill`` runs the padded prompt through the model, builds the common ``LoopState`` and
hands the last position's logits to ``strategy.init`` (which picks the first token);
``run_steps(strategy, params, state, n)`` advances the state by at most ``n`` strategy
steps inside one jitted ``while_loop`` (state donated). ``generate`` runs it to the end
in one call; streaming and host-side criteria run it in chunks.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from jaxgen.decoding.record import empty, model_apply
from jaxgen.decoding.record import record as record_outputs
from jaxgen.decoding.state import DecodeState, Knobs, LoopState
from jaxgen.models.base import new_cache, positions_from_mask
from jaxgen.models.cache import split_stacks
from jaxgen.ops import row_take


def init_loop(model: Any, input_ids: jax.Array, attention_mask: jax.Array, knobs: Knobs,
              rng: Any, start: jax.Array, max_len: jax.Array, *, new_slots: int,
              output_scores: bool, vocab: int, per_row: bool,
              step_tokens: int = 1) -> LoopState:
    """The common state before the prompt's forward pass (empty cache, row streams)."""
    b, p = input_ids.shape
    rng = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, jnp.arange(b))  # row streams
    mask = jnp.concatenate([attention_mask, jnp.zeros((b, new_slots), jnp.int32)], 1)
    sequences = jnp.concatenate(
        [input_ids, jnp.broadcast_to(knobs.pad, (b, new_slots)).astype(jnp.int32)], 1)
    cur = jnp.full((b,) if per_row else (), p, jnp.int32)
    return LoopState(
        sequences=sequences, attention_mask=mask,
        position=positions_from_mask(attention_mask)[:, -1],
        cache=new_cache(model, b, p + new_slots, step_tokens), cur=cur,
        start=start.astype(jnp.int32),
        max_len=max_len.astype(jnp.int32), elapsed=jnp.zeros((), jnp.float32),
        done=jnp.zeros((b,), bool), rng=rng, knobs=knobs, proc_state=None,
        scores=jnp.zeros((b, new_slots, vocab), jnp.float32) if output_scores else None,
        prompt_end=p, model=model)


@partial(jax.jit, static_argnames=("strategy", "model", "new_slots", "output_scores",
                                   "record", "feed"))
def prefill(strategy: Any, model: Any, params: Any, input_ids: jax.Array,
            attention_mask: jax.Array, knobs: Knobs, rng: Any, start: jax.Array,
            max_len: jax.Array, aux: Any = None, past: Any = None, *, new_slots: int,
            output_scores: bool, record: tuple[str, ...] = (),
            feed: int | None = None) -> DecodeState:
    """Run the prompt ``[rows, P]`` (left-padded) and let the strategy choose the first token.

    ``start``: first slot of the caller's ids (bucket padding before it);
    ``max_len``: the slot generation stops before (``P + max_new_tokens``);
    ``rng``: one typed key, split into one stream per row with ``fold_in(rng, row)``;
    ``aux``: arrays the strategy needs (e.g. a draft model's parameters);
    ``record``: outputs to record (`jaxgen.decoding.record`);
    ``past`` / ``feed``: continue from a cache (`jaxgen.decoding.past.Carry`) feeding only
    the last ``feed`` slots of the prompt.
    """
    loop = init_loop(model, input_ids, attention_mask, knobs, rng, start, max_len,
                     new_slots=new_slots, output_scores=output_scores,
                     vocab=model.vocab_size, per_row=strategy.cursor_per_row,
                     step_tokens=strategy.tokens_per_step)
    p = input_ids.shape[1]
    lo = 0 if feed is None else p - feed
    cache = loop.cache if past is None else model.rewind_cache(past.into(model, loop.cache), lo)
    cache = split_stacks(model, cache)    # zeros (or a continued past): split, not copied
    positions = positions_from_mask(attention_mask)
    want = (*strategy.needs, *record)
    out, cache, extras = model_apply(model, params, input_ids[:, lo:], positions[:, lo:],
                                     cache, loop.attention_mask, want)
    trace = empty(record, extras, loop.rows, loop.sequences.shape[1], new_slots,
                  model.vocab_size)
    loop = loop.replace(cache=cache, trace=record_outputs(trace, out[:, -1], extras, lo, 0))
    ctx = loop.context()
    loop = loop.replace(proc_state=(knobs.processors.init(ctx), knobs.warpers.init(ctx)))
    if strategy.needs:
        return strategy.init(model, params, out[:, -1], loop, aux, extras=extras)
    return strategy.init(model, params, out[:, -1], loop, aux)


@partial(jax.jit, static_argnums=0, donate_argnums=2)
def run_steps(strategy: Any, params: Any, state: DecodeState, n: jax.Array) -> DecodeState:
    """Advance ``state`` by at most ``n`` strategy steps (stops when ``running`` is False)."""
    model = state.loop.model

    def cond(carry):
        i, s = carry
        return (i < n) & strategy.running(s)

    def body(carry):
        i, s = carry
        return i + 1, strategy.step(model, params, s)

    state = state.replace_loop(cache=split_stacks(model, state.loop.cache))  # no-op after prefill
    _, state = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state))
    return state


@partial(jax.jit, static_argnums=2)
def window(sequences: jax.Array, shown: jax.Array, width: int) -> jax.Array:
    """``sequences[:, shown : shown + width]`` (slots past the end clipped): the only part
    of the buffer a streaming driver copies to the host after a chunk."""
    slots = jnp.broadcast_to(shown + jnp.arange(width), (sequences.shape[0], width))
    return row_take(sequences, slots)
