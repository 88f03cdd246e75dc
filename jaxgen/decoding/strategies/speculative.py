"""Speculative decoding (draft model or prompt lookup), batched, inside one while_loop.

Each iteration, for every row at once (rows keep their own cursor, so no holes):

1. propose ``c_r <= K`` tokens ``x_1..x_K`` (``propose.py``): with the draft model, which
   stops early at the row's budget, an eos id or a token below
   ``assistant_confidence_threshold``; or copied from the first earlier occurrence of the
   row's last n-gram;
2. score ``[last, x_1..x_K]`` with the target in ONE forward pass of ``K + 1`` tokens and
   run the whole processor chain position by position over them (with its state, as
   transformers' assisted decoding does);
3. accept the longest agreeing prefix (greedy: ``x_{i+1} == argmax p_i``; sampling:
   ``u < min(1, p(x)/q(x))``), then one more token from the target (greedy: its argmax;
   sampling: from ``norm(max(0, p - q))`` after a rejection, else from ``p``), so the
   output equals plain decoding with the same processors / follows its distribution;
4. cut at eos, a stopping criterion or ``max_new_tokens``; keep the processor state of
   the last accepted position; rewind both caches to the row's newest token;
5. with ``num_assistant_tokens_schedule="heuristic"`` (transformers' rule, per row): the
   budget grows by 2 when every candidate was accepted, else shrinks by 1 (at least 1).
   The budget starts at ``K`` and never exceeds it (``K + 1`` is the verified block's
   fixed shape); transformers lets it grow past its start.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxgen.decoding.kernel import (
    advance,
    criteria_hit,
    eos_hit,
    put,
    row_keys,
)
from jaxgen.decoding.output import GenerateOutput, host
from jaxgen.decoding.protocol import Request, Strategy, finalize_rows
from jaxgen.decoding.record import model_apply, model_wants, record
from jaxgen.decoding.state import DecodeState, LoopState
from jaxgen.decoding.strategies.propose import draft_propose, lookup_propose, process_at
from jaxgen.models.base import new_cache, positions_from_mask
from jaxgen.models.cache import split_stacks
from jaxgen.ops import fast_argmax, row_slice


@struct.dataclass
class SpecSub:
    """Speculative decoding's own state."""

    draft_cache: Any                 # draft model cache, or () for prompt lookup
    draft_params: Any                # draft parameters, or ()
    budget: Int[Array, " rows"]      # tokens the draft may propose next (heuristic)
    drafted: Int[Array, " rows"]     # candidates proposed (statistics)
    accepted: Int[Array, " rows"]    # draft tokens accepted (statistics)
    passes: Int[Array, ""]           # target forward passes (statistics)


def select_rows(stacked: Any, n: Int[Array, " rows"]) -> Any:
    """Per row ``r``, entry ``n[r]`` of every ``[steps, rows, ...]`` leaf."""
    def pick(x):
        if x.ndim < 2 or x.shape[1] != n.shape[0]:
            raise ValueError("a logits processor keeps state without a leading rows axis; "
                             "speculative decoding needs per-row processor state")
        return x[n, jnp.arange(n.shape[0])]
    return jax.tree.map(pick, stacked)


def verify(loop: LoopState, logits: Float[Array, "rows t vocab"], sequences: Array,
           mask: Array, do_sample: bool) -> tuple[Float[Array, "rows t vocab"], Any]:
    """Processed logits of the ``t`` verified positions and the states before each
    position and after the last (``[t + 1, ...]`` leaves)."""
    def body(states, xs):
        lg, i = xs
        lg, states = process_at(loop, lg, states, sequences, mask, loop.cur + i, do_sample)
        return states, (lg, states)

    t = logits.shape[1]
    _, (processed, after) = jax.lax.scan(body, loop.proc_state,
                                         (jnp.swapaxes(logits, 0, 1), jnp.arange(t)))
    states = jax.tree.map(lambda a, s: jnp.concatenate([a[None], s], 0), loop.proc_state,
                          after)
    return jnp.swapaxes(processed, 0, 1), states


def accept_sampled(keys: Any, p_logits: Float[Array, "rows t vocab"], xs: Int[Array, "rows k"],
                   q: Any, has_cand: Bool[Array, "rows k"]
                   ) -> tuple[Int[Array, " rows"], Int[Array, " rows"]]:
    """Rejection sampling: ``(accepted count, bonus token)`` per row."""
    k, vocab = xs.shape[1], p_logits.shape[-1]
    p = jax.nn.softmax(p_logits, axis=-1)
    p_x = jnp.take_along_axis(p[:, :k], xs[:, :, None], axis=-1)[..., 0]     # [rows, K]
    if q is None:                                       # prompt lookup: one-hot drafts
        q = jax.nn.one_hot(xs, vocab, dtype=jnp.float32)
    q_x = jnp.take_along_axis(q, xs[:, :, None], axis=-1)[..., 0]
    u = jax.vmap(lambda key: jax.random.uniform(jax.random.fold_in(key, 0), (k,)))(keys)
    agree = (u * q_x < p_x) & has_cand                  # u < min(1, p/q)
    a = jnp.cumprod(agree.astype(jnp.int32), axis=1).sum(axis=1)
    rows = jnp.arange(xs.shape[0])
    p_a, q_a = p[rows, a], q[rows, jnp.minimum(a, k - 1)]
    dist = jnp.where((a < has_cand.sum(1))[:, None], jnp.maximum(p_a - q_a, 0.0), p_a)
    dist = jnp.where(dist.sum(-1, keepdims=True) > 0, dist, p_a)
    bonus = jax.vmap(lambda key, d: jax.random.categorical(
        jax.random.fold_in(key, 1), jnp.log(d)))(keys, dist).astype(jnp.int32)
    return a, bonus


@dataclasses.dataclass(frozen=True, kw_only=True)
class Speculative(Strategy):
    """Assisted decoding with ``draft`` (a CausalLM; its params come as ``aux``), or prompt
    lookup when ``draft`` is None; at most ``k`` tokens proposed per iteration.
    ``heuristic``: the draft's budget follows transformers' heuristic schedule."""

    k: int
    draft: Any = None
    ngram: int = 2                 # prompt lookup: longest n-gram matched
    do_sample: bool = False
    heuristic: bool = False
    cursor_per_row: ClassVar[bool] = True
    outputs: ClassVar[frozenset[str]] = frozenset({"logits", "hidden_states"})

    @property
    def tokens_per_step(self) -> int:
        return self.k + 1

    def buffer_slots(self, max_new_tokens: int) -> int:
        return max_new_tokens + self.k + 1      # proposals run up to K + 1 slots ahead

    def init(self, model: Any, params: Any, first_logits: Any, loop: LoopState,
             aux: Any) -> DecodeState:
        rows, length = loop.sequences.shape
        dcache, dparams = (), ()
        if self.draft is not None:
            p = loop.prompt_end
            fresh = split_stacks(self.draft, new_cache(self.draft, rows, length, self.k + 1))
            _, dcache = self.draft.apply(
                aux, loop.sequences[:, :p], positions_from_mask(loop.attention_mask[:, :p]),
                fresh, loop.attention_mask)
            dparams = aux
            dcache = self.draft.rewind_cache(dcache, loop.cur)       # per-row write slots
        zeros = jnp.zeros((rows,), jnp.int32)
        sub = SpecSub(draft_cache=dcache, draft_params=dparams,
                      budget=jnp.full((rows,), self.k, jnp.int32), drafted=zeros,
                      accepted=zeros, passes=jnp.zeros((), jnp.int32))
        loop = advance(loop, first_logits, self.do_sample)
        loop = loop.replace(cache=model.rewind_cache(loop.cache, loop.cur - 1))
        return DecodeState(loop=loop, sub=sub)

    def _propose(self, loop: LoopState, sub: SpecSub, mask: Array) -> tuple[Any, ...]:
        if self.draft is None:
            xs, count = lookup_propose(loop, self.k, self.ngram)
            return xs, count, None, sub.draft_cache
        return draft_propose(self.draft, sub.draft_params, sub.draft_cache, loop, mask,
                             self.k, self.do_sample, sub.budget)

    def step(self, model: Any, params: Any, state: DecodeState) -> DecodeState:
        loop, sub, k = state.loop, state.sub, self.k
        c, rows = loop.cur, loop.rows
        mask = put(loop.attention_mask, jnp.ones((rows, k), jnp.int32), c)
        xs, count, q, dcache = self._propose(loop, sub, mask)
        seqs = put(loop.sequences, xs, c)
        out, cache, extras = model_apply(
            model, params, row_slice(seqs, c - 1, k + 1),
            loop.position[:, None] + jnp.arange(k + 1)[None, :],
            model.rewind_cache(loop.cache, c - 1), mask, model_wants(loop.trace))
        p_logits, states = verify(loop, out, seqs, mask, self.do_sample)
        has_cand = jnp.arange(k)[None, :] < count[:, None]
        if self.do_sample:
            keys = row_keys(loop.rng, 2 * loop.new_tokens)
            a, bonus = accept_sampled(keys, p_logits, xs, q, has_cand)
        else:
            y = fast_argmax(p_logits.reshape(rows * (k + 1), -1)).reshape(rows, k + 1)
            a = jnp.cumprod(((xs == y[:, :k]) & has_cand).astype(jnp.int32), 1).sum(1)
            bonus = y[jnp.arange(rows), a]
        j = jnp.arange(k + 1)[None, :]
        new = jnp.where(j < a[:, None], jnp.pad(xs, ((0, 0), (0, 1))), bonus[:, None])
        n, stopped = self._cut(loop, new, a + 1)
        trace = loop.trace if loop.trace is None else record(
            loop.trace, out, extras, c - 1, loop.new_tokens, jnp.arange(k + 1) < n[:, None])
        return self._commit(state, new, n, stopped, a, count, p_logits, states,
                            loop.replace(cache=cache, trace=trace), dcache)

    def _cut(self, loop: LoopState, new: Int[Array, "rows t"], n: Int[Array, " rows"]
             ) -> tuple[Int[Array, " rows"], Bool[Array, " rows"]]:
        """Tokens each row keeps (the first stop wins) and whether the row stopped."""
        t = new.shape[1]
        j = jnp.arange(t)[None, :]
        stop = eos_hit(loop.knobs, new) | (loop.new_tokens[:, None] + j + 1 >= loop.max_len
                                           - loop.prompt_end)
        if loop.knobs.stopping:
            seqs = put(loop.sequences, new, loop.cur)
            mask = put(loop.attention_mask, jnp.ones_like(new), loop.cur)
            hits = jax.lax.map(lambda i: criteria_hit(loop.knobs, loop.context(
                seqs, mask, loop.cur + i + 1)), jnp.arange(t))
            stop = stop | hits.T
        stop = stop & (j < n[:, None])
        stopped = stop.any(axis=1)
        n = jnp.where(stopped, jnp.argmax(stop, axis=1) + 1, n)
        return jnp.where(loop.done, 0, n), stopped

    def _commit(self, state: DecodeState, new: Int[Array, "rows t"], n: Int[Array, " rows"],
                stopped: Bool[Array, " rows"], a: Int[Array, " rows"],
                count: Int[Array, " rows"], p_logits: Array, states: Any, loop: LoopState,
                dcache: Any) -> DecodeState:
        """Write each row's ``n`` tokens (clearing the rest of the block), advance it."""
        keep = jnp.arange(new.shape[1])[None, :] < n[:, None]
        scores = loop.scores
        if scores is not None:
            at = loop.new_tokens[:, None] + jnp.arange(new.shape[1])[None, :]
            vals = jnp.where(keep[:, :, None], p_logits, 0.0)
            scores = scores.at[jnp.arange(loop.rows)[:, None], at].set(vals, mode="drop")
        loop = loop.replace(
            sequences=put(loop.sequences, jnp.where(keep, new, loop.knobs.pad), loop.cur),
            attention_mask=put(loop.attention_mask, keep.astype(jnp.int32), loop.cur),
            position=loop.position + n, cur=loop.cur + n, done=loop.done | stopped,
            proc_state=select_rows(states, n), scores=scores)
        sub = state.sub
        live = n > 0                                    # rows that were not done already
        budget = sub.budget
        if self.heuristic:
            budget = jnp.where(a == count, jnp.minimum(budget + 2, self.k),
                               jnp.maximum(budget - 1, 1))
        return DecodeState(loop=loop, sub=sub.replace(
            draft_cache=dcache, budget=jnp.where(live, budget, sub.budget),
            drafted=sub.drafted + jnp.where(live, count, 0),
            accepted=sub.accepted + jnp.minimum(n, a), passes=sub.passes + 1))

    def finalize(self, state: DecodeState, request: Request) -> GenerateOutput:
        passes = int(host(state.sub.passes))
        accepted = host(state.sub.accepted)
        rows = len(accepted)
        stats = {"target_passes": passes, "accepted_draft_tokens": accepted,
                 "draft_tokens": host(state.sub.drafted),
                 "num_assistant_tokens": host(state.sub.budget),
                 "mean_tokens_per_pass": float((accepted.sum() + passes * rows)
                                               / max(1, passes * rows))}
        return finalize_rows(state, request, speculative=stats)

