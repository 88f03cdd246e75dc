"""Speculative proposals: K draft tokens per row, from a draft model or from the prompt.

Both work on per-row cursors (``loop.cur`` is ``[rows]``): row ``r``'s newest token sits
at slot ``cur[r] - 1`` and the proposals go to slots ``cur[r] .. cur[r] + K - 1``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxgen.decoding.kernel import eos_hit, process, put, row_keys
from jaxgen.decoding.state import LoopState
from jaxgen.ops import fast_argmax, row_slice


def process_at(loop: LoopState, logits: Float[Array, "rows vocab"], states: Any,
               sequences: Array, mask: Array, cur: Int[Array, " rows"], do_sample: bool
               ) -> tuple[Float[Array, "rows vocab"], Any]:
    """The processor chain (and the warpers when sampling) at slot ``cur`` of a buffer."""
    ctx = loop.context(sequences, mask, cur)
    pstate, wstate = states
    logits, pstate = process(loop.knobs, logits, pstate, ctx)
    if do_sample:
        logits, wstate = loop.knobs.warpers(logits, wstate, ctx)
    return logits, (pstate, wstate)


def _confidence(logits: Float[Array, "rows vocab"], tok: Int[Array, " rows"]
                ) -> Float[Array, " rows"]:
    """The probability ``softmax(logits)[tok]`` of each row's chosen token."""
    chosen = jnp.take_along_axis(logits, tok[:, None], axis=-1)[:, 0]
    return jnp.exp(chosen - jax.nn.logsumexp(logits, axis=-1))


def _draft_limit(loop: LoopState, budget: Int[Array, " rows"], k: int) -> Int[Array, " rows"]:
    """Candidates a row may draft: its budget, at most ``k`` and one less than the tokens
    it has left (transformers' ``min(num_assistant_tokens, max_length - cur_len - 1)``)."""
    left = loop.max_len - loop.prompt_end - loop.new_tokens - 1
    return jnp.clip(jnp.minimum(budget, left), 0, k).astype(jnp.int32)


def draft_propose(draft: Any, draft_params: Any, draft_cache: Any, loop: LoopState,
                  mask: Array, k: int, do_sample: bool, budget: Int[Array, " rows"]
                  ) -> tuple[Int[Array, "rows k"], Int[Array, " rows"],
                             Float[Array, "rows k vocab"] | None, Any]:
    """Up to K tokens from the draft model, run with the target's processors and warpers.

    The draft re-reads slots ``cur - 2`` and ``cur - 1`` (the newest token is in no cache
    yet, and the one before it may be missing after a fully accepted block), then drafts
    autoregressively. A row stops drafting (transformers' assistant stopping criteria)
    after ``budget`` tokens, after an eos id, or after a token whose draft probability is
    below ``loop.knobs.confidence`` (``assistant_confidence_threshold``); the loop ends
    when every row has stopped. Returns ``(tokens, count, q, cache)``: ``count`` [rows]
    candidates per row, ``q`` [rows, K, vocab] the draft distribution of each token when
    sampling (None for greedy).
    """
    c, rows = loop.cur, loop.rows
    two = row_slice(loop.sequences, c - 2, 2)
    pos2 = loop.position[:, None] + jnp.arange(-1, 1)[None, :]
    cache = draft.rewind_cache(draft_cache, c - 2)
    logits, cache = draft.apply(draft_params, two, pos2, cache, mask)
    base = row_keys(loop.rng, 2 * (c - loop.prompt_end) + 1)
    limit = _draft_limit(loop, budget, k)
    threshold = loop.knobs.confidence

    def pick(logits, i, seqs, states):
        lg, states = process_at(loop, logits, states, seqs, mask, c + i, do_sample)
        if not do_sample:
            tok, q = fast_argmax(lg), None
        else:
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(base, i)
            tok = jax.vmap(jax.random.categorical)(keys, lg).astype(jnp.int32)
            q = jax.nn.softmax(lg, axis=-1)
        stop = eos_hit(loop.knobs, tok)
        if threshold is not None:
            stop = stop | (_confidence(lg, tok) < threshold)
        return tok, q, stop, states

    tok, q0, stop, states = pick(logits[:, -1], 0, loop.sequences, loop.proc_state)
    toks = jnp.zeros((rows, k), jnp.int32).at[:, 0].set(tok)
    qs = None if q0 is None else jnp.zeros((rows, k, q0.shape[-1]), q0.dtype).at[:, 0].set(q0)
    count = jnp.minimum(limit, 1)
    carry = (jnp.int32(1), tok, put(loop.sequences, tok, c), states, cache, toks, qs, count,
             (limit > 1) & ~stop)

    def cond(carry):
        i, *_, active = carry
        return (i < k) & active.any()

    def body(carry):
        i, tok, seqs, states, cache, toks, qs, count, active = carry
        out, cache = draft.apply(draft_params, tok[:, None], (loop.position + i)[:, None],
                                 cache, mask)
        nxt, q, stop, states = pick(out[:, 0], i, seqs, states)
        toks = toks.at[:, i].set(nxt)
        qs = qs if q is None else qs.at[:, i].set(q)
        active_next = active & (i + 1 < limit) & ~stop
        return (i + 1, nxt, put(seqs, nxt, c + i), states, cache, toks, qs,
                count + active.astype(jnp.int32), active_next)

    _, _, _, _, cache, toks, qs, count, _ = jax.lax.while_loop(cond, body, carry)
    return toks, count, qs, cache


def lookup_propose(loop: LoopState, k: int, ngram: int
                   ) -> tuple[Int[Array, "rows k"], Int[Array, " rows"]]:
    """Prompt lookup: the K tokens after the first earlier occurrence of the row's last
    n-gram (longest n first, ``ngram`` .. 1); returns ``(tokens, count)``, ``count <= K``
    valid candidates per row (0 without a match)."""
    seqs, cur = loop.sequences, loop.cur
    b, length = seqs.shape
    slots = jnp.arange(length)[None, :]
    real = (loop.attention_mask > 0) & (slots < cur[:, None])
    best = jnp.full((b,), -1, jnp.int32)
    for n in range(ngram, 0, -1):
        tail = row_slice(seqs, cur - n, n)                                        # [b, n]
        tail_ok = row_slice(real.astype(jnp.int32), cur - n, n).all(-1) & (cur >= n)
        width = length - n
        win = jnp.stack([seqs[:, j:j + width] for j in range(n)], axis=-1)  # [b, W, n]
        win_ok = jnp.stack([real[:, j:j + width] for j in range(n)], axis=-1).all(-1)
        starts = jnp.arange(width)[None, :]
        hit = (win == tail[:, None, :]).all(-1) & win_ok & (starts + n < cur[:, None])
        hit = hit & tail_ok[:, None]
        found = hit.any(axis=1) & (best < 0)
        best = jnp.where(found, jnp.argmax(hit, axis=1) + n, best)
    ok = best >= 0
    tokens = row_slice(seqs, jnp.where(ok, best, 0), k)
    count = jnp.where(ok, jnp.clip(cur - best, 0, k), 0).astype(jnp.int32)
    return tokens, count
