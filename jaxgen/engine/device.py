"""The engine's jitted functions: empty state, prefill a chunk, insert, schedule, read back.

Slot layout (one row of the ``[slots, length]`` buffers; no left padding)::

    slot:  0 .. n-2 | n-1          | n .. cur-1 | cur .. length-1
           prompt   | last prompt  | generated  | not written yet
           (prefilled into blocks) | (fed by the first decode step)

The prefill writes the keys/values of all prompt tokens but the last; the first decode
step feeds the last one, so every request gets its first token from the same step
kernel and chain as the others (no separate first-token path). Each function compiles
once: ``prefill_chunk`` once per chunk width, the others once per engine shape.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Int

from jaxgen.decoding.state import DecodeState, LoopState
from jaxgen.engine.settings import Limits, RowSettings, knobs_for, neutral_rows, stop_table_of
from jaxgen.engine.strategy import RUNNING, SlotSub
from jaxgen.models.paged import paged_like, stacks, with_rows
from jaxgen.ops import row_take
from jaxgen.processors.base import Context


def _set_row(big: Array, small: Array, slot: Int[Array, ""]) -> Array:
    """``big`` with row ``slot`` replaced by ``small[0]``."""
    return big.at[slot].set(small[0].astype(big.dtype))


def empty_state(model: Any, *, slots: int, length: int, blocks: int, block_size: int,
                limits: Limits, stop_table: tuple[Any, Any] | None, pad: int,
                logprobs: bool, top_logprobs: int = 0) -> DecodeState:
    """Every slot idle (done, pointing at the null block), neutral settings; with
    ``logprobs``, buffers for the chosen tokens' logprobs (and ``top_logprobs`` best)."""
    settings = neutral_rows(slots, limits)
    knobs = knobs_for(settings, stop_table, vocab=model.vocab_size, limits=limits, pad=pad)
    cache = paged_like(model, batch=slots, blocks=blocks, block_size=block_size,
                       max_blocks=length // block_size)
    sequences = jnp.full((slots, length), pad, jnp.int32)
    mask = jnp.zeros((slots, length), jnp.int32)
    cur = jnp.ones((slots,), jnp.int32)
    ctx = Context(sequences=sequences, attention_mask=mask, cur=cur,
                  start=jnp.zeros((), jnp.int32))
    rng = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(0), jnp.arange(slots))
    loop = LoopState(
        sequences=sequences, attention_mask=mask, position=jnp.zeros((slots,), jnp.int32),
        cache=cache, cur=cur, start=jnp.zeros((), jnp.int32),
        max_len=jnp.ones((slots,), jnp.int32), elapsed=jnp.zeros((), jnp.float32),
        done=jnp.ones((slots,), bool), rng=rng, knobs=knobs,
        proc_state=(knobs.processors.init(ctx), knobs.warpers.init(ctx)), scores=None,
        prompt_end=0, model=model)
    sub = SlotSub(settings=jax.tree.map(jnp.asarray, settings),
                  active=jnp.zeros((slots,), bool), eager=jnp.zeros((), bool),
                  reason=jnp.zeros((slots,), jnp.int32),
                  logprobs=jnp.zeros((slots, length), jnp.float32) if logprobs else None)
    if logprobs and top_logprobs:
        sub = sub.replace(top_logprobs=jnp.zeros((slots, length, top_logprobs), jnp.float32),
                          top_ids=jnp.zeros((slots, length, top_logprobs), jnp.int32))
    return DecodeState(loop=loop, sub=sub)


@partial(jax.jit, static_argnames=("model",), donate_argnames=("cache",))
def prefill_chunk(model: Any, params: Any, cache: Any, table: Int[Array, "1 max_blocks"],
                  tokens: Int[Array, "1 chunk"], start: Int[Array, ""],
                  n_valid: Int[Array, ""]) -> Any:
    """Write the keys/values of ``tokens[:, :n_valid]`` (slots ``start ..``) of one request
    into its blocks (``table``); the other rows' table and index are kept. The logits are
    never returned, so XLA drops the output head."""
    first = stacks(cache)[0]
    keep_table, keep_index = first.table, first.index
    view = with_rows(cache, table, start[None])
    length = table.shape[1] * first.block_size
    positions = (start + jnp.arange(tokens.shape[1], dtype=jnp.int32))[None]
    mask = (jnp.arange(length) < start + n_valid).astype(jnp.int32)[None]
    _, view = model.apply(params, tokens, positions, view, mask)
    return with_rows(view, keep_table, keep_index)


@partial(jax.jit, static_argnames=("limits",), donate_argnames=("state",))
def insert(state: DecodeState, slot: Int[Array, ""], tokens: Int[Array, " length"],
           max_len: Int[Array, ""], row: RowSettings, key: Any, *, limits: Limits
           ) -> DecodeState:
    """Put a prefilled request into ``slot``: its prompt, cursor, limits, settings, rng
    stream (``fold_in(key, 0)``, as ``generate`` gives row 0) and fresh processor state."""
    loop, sub = state.loop, state.sub
    n = row.prompt_len[0]
    length = loop.sequences.shape[1]
    mask = (jnp.arange(length) < n).astype(jnp.int32)
    seq = jnp.where(mask > 0, tokens, loop.knobs.pad)
    stop_table = stop_table_of(loop.knobs)
    model = loop.model
    one = knobs_for(row, stop_table, vocab=model.vocab_size, limits=limits, pad=loop.knobs.pad)
    ctx = Context(sequences=seq[None], attention_mask=mask[None], cur=n[None],
                  start=jnp.zeros((), jnp.int32))
    fresh = (one.processors.init(ctx), one.warpers.init(ctx))
    proc_state = jax.tree.map(lambda b, s: _set_row(b, s, slot), loop.proc_state, fresh)
    settings = jax.tree.map(lambda b, s: _set_row(b, s, slot), sub.settings, row)
    knobs = knobs_for(settings, stop_table, vocab=model.vocab_size, limits=limits,
                      pad=loop.knobs.pad)
    loop = loop.replace(
        sequences=loop.sequences.at[slot].set(seq),
        attention_mask=loop.attention_mask.at[slot].set(mask),
        position=loop.position.at[slot].set(n - 1), cur=loop.cur.at[slot].set(n),
        max_len=loop.max_len.at[slot].set(max_len), done=loop.done.at[slot].set(False),
        rng=loop.rng.at[slot].set(jax.random.fold_in(key, 0)), knobs=knobs,
        proc_state=proc_state)
    logprobs = None if sub.logprobs is None else sub.logprobs.at[slot].set(0.0)
    sub = sub.replace(settings=settings, reason=sub.reason.at[slot].set(RUNNING),
                      logprobs=logprobs)
    return DecodeState(loop=loop, sub=sub)


@partial(jax.jit, donate_argnames=("state",))
def schedule(state: DecodeState, table: Int[Array, "slots max_blocks"],
             stop: Bool[Array, " slots"], active: Bool[Array, " slots"],
             eager: Bool[Array, ""]) -> DecodeState:
    """Before a round: the block tables, slots to stop now (cancelled, evicted), the
    slots that hold a live request and whether to end the round at the first finish."""
    loop = state.loop
    cache = with_rows(loop.cache, table, stacks(loop.cache)[0].index)
    loop = loop.replace(cache=cache, done=loop.done | stop)
    return DecodeState(loop=loop, sub=state.sub.replace(active=active, eager=eager))


@partial(jax.jit, static_argnames=("width",))
def readback(state: DecodeState, first: Int[Array, " slots"], *, width: int
             ) -> tuple[Array, ...]:
    """What the host needs after a round: the tokens (logprobs, top logprobs and their ids)
    of slots ``first .. first + width`` per slot, the cursors, done flags and finish
    reasons."""
    loop, sub = state.loop, state.sub
    slots = first[:, None] + jnp.arange(width, dtype=jnp.int32)
    tokens = row_take(loop.sequences, slots)
    clipped = jnp.clip(slots, 0, loop.sequences.shape[1] - 1)           # [slots, width]
    logprobs = None if sub.logprobs is None else jnp.take_along_axis(sub.logprobs, clipped, 1)
    top = None if sub.top_logprobs is None else tuple(
        jnp.take_along_axis(x, clipped[:, :, None], 1) for x in (sub.top_logprobs, sub.top_ids))
    return tokens, logprobs, top, loop.cur, loop.done, sub.reason
