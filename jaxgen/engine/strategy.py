"""The engine's decoding strategy: greedy or sampling per slot, a cursor per slot.

It is `jaxgen.decoding.strategies.Sample` run on slots that advance at their own pace:
the same kernel (``forward_last``, ``process``, ``warp_and_sample``, ``commit``, the
``row_keys`` rule), with the per-request choices as arrays instead of static fields:

- ``settings.greedy[r]``: slot ``r`` takes the argmax of the processed logits (what
  greedy ``generate`` does; the warpers run but are not used), else it draws;
- its draw uses key ``fold_in(rng[r], cur[r] - prompt_len[r])``: the key ``generate``
  uses for the same request alone (``rng[r] = fold_in(key(seed), 0)``);
- a slot stops at its own ``max_len`` and then stays where it is (finished slots do
  not advance, so they never write past their own blocks);
- attention reads the paged cache in place, chunk by chunk up to the longest live
  slot (`jaxgen.models.attention`; finished slots are parked past the end), so a step
  costs what the live requests need, not ``max_length``.

The state is a ``DecodeState`` whose ``sub`` is a `SlotSub`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxgen.decoding.kernel import (
    commit,
    eos_hit,
    forward_last,
    process,
    put,
    row_keys,
    warp_and_sample,
)
from jaxgen.decoding.protocol import Strategy
from jaxgen.decoding.state import DecodeState
from jaxgen.engine.settings import RowSettings
from jaxgen.ops import fast_argmax

#: ``SlotSub.reason`` codes, in the order they win when several hold at once.
RUNNING, EOS, STOP, LENGTH = 0, 1, 2, 3
FINISH_REASONS = {EOS: "eos", STOP: "stop", LENGTH: "length"}


@struct.dataclass
class SlotSub:
    """The engine's own part of the decode state."""

    settings: RowSettings                      # each slot's request numbers
    active: Bool[Array, " slots"]              # slot decoded a request when the round began
    eager: Bool[Array, ""]                     # end the round once an active slot finishes
    reason: Int[Array, " slots"]               # why the slot finished (RUNNING while not)
    logprobs: Float[Array, "slots length"] | None  # logprob of the token in each slot
    top_logprobs: Float[Array, "slots length n_top"] | None = None  # the n_top best logprobs
    top_ids: Int[Array, "slots length n_top"] | None = None         # ... and their token ids


@dataclasses.dataclass(frozen=True, kw_only=True)
class SlotSample(Strategy):
    """Per-slot greedy / sampling (see the module docstring); ``logprobs``: record the
    log-probability of every chosen token (under the scores ``generate`` would record)
    and, when the state has ``top_logprobs`` buffers, the best ones of that distribution."""

    logprobs: bool = False
    cursor_per_row: ClassVar[bool] = True

    def init(self, model: Any, params: Any, first_logits: Any, loop: Any, aux: Any
             ) -> DecodeState:
        raise NotImplementedError("SlotSample runs inside jaxgen.Engine, which inserts "
                                  "requests into slots (see jaxgen.engine)")

    def running(self, state: DecodeState) -> Bool[Array, ""]:
        """Some slot is live, unless the round should end because one finished."""
        loop, sub = state.loop, state.sub
        finished = (sub.active & loop.done).any()
        return (~loop.done).any() & ~(sub.eager & finished)

    def step(self, model: Any, params: Any, state: DecodeState) -> DecodeState:
        loop, sub = state.loop, state.sub
        s = sub.settings
        # a finished slot writes past its table (dropped) and is left out of the chunks
        # attention reads, so a step reads what the longest live request needs
        parked = jnp.where(loop.done, loop.sequences.shape[1], loop.cur - 1)
        loop = loop.replace(cache=model.rewind_cache(loop.cache, parked))
        logits, cache = forward_last(params, loop)
        loop = loop.replace(cache=cache)
        ctx = loop.context()
        pstate, wstate = loop.proc_state
        logits, pstate = process(loop.knobs, logits, pstate, ctx)
        keys = row_keys(loop.rng, loop.cur - s.prompt_len)
        drawn, wstate, warped = warp_and_sample(loop.knobs.warpers.processors, wstate, logits,
                                                ctx, keys, self.logprobs)
        tokens = jnp.where(s.greedy, fast_argmax(logits), drawn)
        new = commit(loop, tokens, None, (pstate, wstate))
        was = loop.done
        eos = ~was & eos_hit(loop.knobs, tokens)
        stop = ~was & new.done & ~eos
        length = ~new.done & (new.cur >= loop.max_len)
        reason = jnp.where(eos, EOS, jnp.where(stop, STOP, jnp.where(length, LENGTH,
                                                                      sub.reason)))
        sub = sub.replace(reason=reason)
        if sub.logprobs is not None:
            scores = jnp.where(s.greedy[:, None], logits, warped)
            sub = self._record(sub, jax.nn.log_softmax(scores, axis=-1), tokens, was, loop.cur)
        new = new.replace(cur=jnp.where(was, loop.cur, new.cur),
                          position=jnp.where(was, loop.position, new.position),
                          done=new.done | length)
        return DecodeState(loop=new, sub=sub)

    def _record(self, sub: SlotSub, lsm: Float[Array, "slots vocab"],
                tokens: Int[Array, " slots"], was: Bool[Array, " slots"],
                cur: Int[Array, " slots"]) -> SlotSub:
        """Store the chosen tokens' logprobs (and the best ``top_logprobs``) at ``cur``."""
        lp = jnp.take_along_axis(lsm, tokens[:, None], 1)[:, 0]
        sub = sub.replace(logprobs=put(sub.logprobs, jnp.where(was, 0.0, lp), cur))
        if sub.top_logprobs is None:
            return sub
        vals, ids = jax.lax.top_k(lsm, sub.top_logprobs.shape[-1])     # [slots, n_top]
        rows = jnp.arange(lsm.shape[0])
        return sub.replace(
            top_logprobs=sub.top_logprobs.at[rows, cur].set(vals, mode="drop"),
            top_ids=sub.top_ids.at[rows, cur].set(ids.astype(jnp.int32), mode="drop"))
