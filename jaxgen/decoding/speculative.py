"""Speculative decoding (draft model or prompt lookup), batched, inside one while_loop.

Each iteration, for every row at once:

1. propose ``K`` tokens ``x_1..x_K``: autoregressively with the draft model, or copied
   from the first earlier occurrence of the row's last n-gram (prompt lookup; ``c_r <= K``
   candidates per row);
2. score ``[last, x_1..x_K]`` with the target in ONE forward pass of ``K + 1`` tokens;
3. accept the longest agreeing prefix (greedy: ``x_{i+1} == argmax p_i``; sampling:
   ``u < min(1, p(x)/q(x))``), then one more token from the target (greedy: its argmax;
   sampling: from ``norm(max(0, p - q))`` after a rejection, else from ``p``), so the
   output equals plain greedy decoding / follows the target's distribution;
4. cut at eos, a stopping criterion or ``max_new_tokens``.

Fixed shapes with a shared write position: rows that accept fewer tokens than the best
row leave masked holes (attention mask 0) and put their newest token in the last slot
of the block, so every row's newest token sits at ``cur - 1``. Positions are per row,
so holes never shift them; both KV caches are rolled back by resetting their write
index to ``cur - 1`` (the newest token is not yet in either cache). ``finish`` drops the
holes. With one row there are never holes.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxgen.decoding.loop import DecodeSpec, prefill
from jaxgen.decoding.sample import fast_argmax
from jaxgen.decoding.state import Knobs
from jaxgen.models.base import positions_from_mask
from jaxgen.processors.base import Context, id_mask
from jaxgen.stopping import any_done


@dataclasses.dataclass(frozen=True)
class SpecSpec:
    """Static structure of a speculative decode."""

    base: DecodeSpec               # the target's decode spec (prefill, sampling flag)
    draft: Any = None              # draft CausalLM, or None for prompt lookup
    k: int = 5                     # tokens proposed per iteration
    ngram: int = 2                 # prompt lookup: longest n-gram matched


@struct.dataclass
class SpecState:
    sequences: Int[Array, "batch buffer"]
    attention_mask: Int[Array, "batch buffer"]     # 0 on padding and on holes
    position: Int[Array, " batch"]                 # position of each row's newest token
    cache: Any                                     # target cache (index == cur - 1)
    draft_cache: Any                               # draft cache (index == cur - 1) or ()
    draft_params: Any                              # draft parameters or ()
    cur: Int[Array, ""]
    start: Int[Array, ""]
    elapsed: Float[Array, ""]
    max_new: Int[Array, ""]                        # max_new_tokens
    n_new: Int[Array, " batch"]                    # tokens generated per row
    done: Bool[Array, " batch"]
    rng: Any                                       # [batch] keys
    knobs: Knobs
    accepted: Int[Array, " batch"]                 # draft tokens accepted (statistics)
    passes: Int[Array, ""]                         # target forward passes (statistics)
    prompt_end: int = struct.field(pytree_node=False)

    def running(self) -> Bool[Array, ""]:
        return ~jnp.all(self.done)


def _warp(knobs: Knobs, logits: Float[Array, "n vocab"], ctx: Context,
          do_sample: bool) -> Float[Array, "n vocab"]:
    logits = logits.astype(jnp.float32)
    if do_sample:
        logits, _ = knobs.warpers(logits, knobs.warpers.init(ctx), ctx)
    return logits


@partial(jax.jit, static_argnums=0)
def spec_prefill(spec: SpecSpec, params: Any, draft_params: Any, input_ids: jax.Array,
                 attention_mask: jax.Array, knobs: Knobs, rng: Any, start: jax.Array,
                 max_len: jax.Array) -> SpecState:
    """Target prefill + first token (as plain decoding), then the draft's prefill."""
    base = prefill(spec.base, params, input_ids, attention_mask, knobs, rng, start, max_len)
    b, p = input_ids.shape
    length = base.sequences.shape[1]
    if spec.draft is not None:
        _, dcache = spec.draft.apply(draft_params, input_ids, positions_from_mask(attention_mask),
                                     spec.draft.init_cache(b, length),
                                     base.attention_mask)
    else:
        dcache, draft_params = (), ()
    return SpecState(
        sequences=base.sequences, attention_mask=base.attention_mask, position=base.position,
        cache=base.cache, draft_cache=dcache, draft_params=draft_params, cur=base.cur,
        start=base.start, elapsed=base.elapsed, max_new=max_len - p,
        n_new=jnp.ones((b,), jnp.int32), done=base.done | (max_len - p <= 1), rng=base.rng,
        knobs=knobs, accepted=jnp.zeros((b,), jnp.int32), passes=jnp.zeros((), jnp.int32),
        prompt_end=p)


def _draft_propose(spec: SpecSpec, s: SpecState, mask: Array, do_sample: bool):
    """K draft tokens and their (warped) draft distributions q [b, K, V] (sampling)."""
    model, k, c = spec.draft, spec.k, s.cur
    two = jax.lax.dynamic_slice_in_dim(s.sequences, c - 2, 2, axis=1)
    pos2 = s.position[:, None] + jnp.arange(-1, 1)[None, :]
    cache = s.draft_cache.replace(index=c - 2)
    logits, cache = model.apply(s.draft_params, two, pos2, cache, mask)
    logits = logits[:, -1]
    ctx = Context(sequences=s.sequences, attention_mask=mask, cur=c, start=s.start,
                  elapsed=s.elapsed)

    def pick(logits, i, key_base):
        lg = _warp(s.knobs, logits, ctx, do_sample)
        if do_sample:
            keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(key_base, i)
            tok = jax.vmap(jax.random.categorical)(keys, lg).astype(jnp.int32)
            return tok, jax.nn.softmax(lg, axis=-1)
        return fast_argmax(lg), jnp.zeros((lg.shape[0], 0), jnp.float32)

    draft_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(s.rng, 2 * c + 1)
    tok, q = pick(logits, 0, draft_keys)

    def body(carry, i):
        tok, cache = carry
        out, cache = model.apply(s.draft_params, tok[:, None], (s.position + i)[:, None],
                                 cache, mask)
        nxt, q = pick(out[:, 0], i, draft_keys)
        return (nxt, cache), (nxt, q)

    (_, cache), (toks, qs) = jax.lax.scan(body, (tok, cache), jnp.arange(1, k))
    xs = jnp.concatenate([tok[:, None], toks.T], axis=1)                   # [b, K]
    q_all = jnp.concatenate([q[:, None], jnp.swapaxes(qs, 0, 1)], axis=1)  # [b, K, V|0]
    return xs, jnp.full(xs.shape[:1], k, jnp.int32), q_all, cache


def _lookup_propose(spec: SpecSpec, s: SpecState):
    """Prompt lookup: the K tokens after the first earlier match of the last n-gram."""
    b, length = s.sequences.shape
    k = spec.k
    live = (s.attention_mask > 0) & (jnp.arange(length)[None, :] < s.cur)
    dest = jnp.where(live, jnp.cumsum(live, axis=1) - 1, length)            # compact slots
    compact = jnp.zeros((b, length + 1), jnp.int32).at[
        jnp.arange(b)[:, None], dest].set(s.sequences)[:, :length]
    n_live = live.sum(axis=1)
    best_start = jnp.full((b,), -1, jnp.int32)
    for n in range(spec.ngram, 0, -1):                  # longest n-gram first
        tail_idx = jnp.clip(n_live[:, None] - n + jnp.arange(n)[None, :], 0, length - 1)
        tail = jnp.take_along_axis(compact, tail_idx, axis=1)               # [b, n]
        width = length - n
        win = jnp.stack([compact[:, j:j + width] for j in range(n)], axis=-1)  # [b, W, n]
        i = jnp.arange(width)[None, :]
        hit = (win == tail[:, None, :]).all(-1) & (i + n < n_live[:, None]) & (
            n_live[:, None] >= n)
        first = jnp.argmax(hit, axis=1)
        found = hit.any(axis=1) & (best_start < 0)
        best_start = jnp.where(found, first + n, best_start)
    ok = best_start >= 0
    idx = jnp.clip(best_start[:, None] + jnp.arange(k)[None, :], 0, length - 1)
    xs = jnp.take_along_axis(compact, idx, axis=1)
    count = jnp.where(ok, jnp.clip(n_live - best_start, 0, k), 0).astype(jnp.int32)
    return xs, count


def spec_step(spec: SpecSpec, params: Any, s: SpecState) -> SpecState:
    """One propose / verify / accept iteration (see the module docstring)."""
    k, c, do_sample = spec.k, s.cur, spec.base.do_sample
    b, length = s.sequences.shape
    knobs = s.knobs
    # proposals occupy slots c .. c+K-1 while they are verified
    block_mask = jnp.ones((b, k), jnp.int32)
    mask = jax.lax.dynamic_update_slice(s.attention_mask, block_mask, (0, c))
    if spec.draft is not None:
        xs, count, q, dcache = _draft_propose(spec, s, mask, do_sample)
    else:
        (xs, count), dcache = _lookup_propose(spec, s), ()
        q = None
    seqs = jax.lax.dynamic_update_slice(s.sequences, xs, (0, c))
    # target: [last, x_1..x_K] in one pass -> next-token logits for slots c .. c+K
    tokens = jax.lax.dynamic_slice_in_dim(seqs, c - 1, k + 1, axis=1)
    positions = s.position[:, None] + jnp.arange(k + 1)[None, :]
    out, cache = spec.base.model.apply(params, tokens, positions,
                                       s.cache.replace(index=c - 1), mask)
    ctx = Context(sequences=seqs, attention_mask=mask, cur=c, start=s.start,
                  elapsed=s.elapsed)
    p_logits = _warp(knobs, out.reshape(b * (k + 1), -1), ctx, do_sample)
    p_logits = p_logits.reshape(b, k + 1, -1)                                # [b, K+1, V]
    vocab = p_logits.shape[-1]
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(s.rng, 2 * c)
    has_cand = jnp.arange(k)[None, :] < count[:, None]                       # [b, K]
    if do_sample:
        p = jax.nn.softmax(p_logits, axis=-1)
        p_x = jnp.take_along_axis(p[:, :k], xs[:, :, None], axis=-1)[..., 0]  # [b, K]
        if q is None:                                    # prompt lookup: one-hot drafts
            q = jax.nn.one_hot(xs, vocab, dtype=jnp.float32)
        q_x = jnp.take_along_axis(q, xs[:, :, None], axis=-1)[..., 0]
        u = jax.vmap(lambda key: jax.random.uniform(jax.random.fold_in(key, 0), (k,)))(keys)
        agree = (u * q_x < p_x) & has_cand               # u < min(1, p/q)
    else:
        y = fast_argmax(p_logits.reshape(b * (k + 1), vocab)).reshape(b, k + 1)
        agree = (xs == y[:, :k]) & has_cand
    a = jnp.cumprod(agree.astype(jnp.int32), axis=1).sum(axis=1)            # accepted [b]
    rows = jnp.arange(b)
    if do_sample:
        p_a = p[rows, a]                                                     # [b, V]
        q_a = q[rows, jnp.minimum(a, k - 1)]
        residual = jnp.maximum(p_a - q_a, 0.0)
        rejected = a < count
        dist = jnp.where(rejected[:, None], residual, p_a)
        dist = jnp.where(dist.sum(-1, keepdims=True) > 0, dist, p_a)
        bonus = jax.vmap(lambda key, d: jax.random.categorical(
            jax.random.fold_in(key, 1), jnp.log(d)))(keys, dist).astype(jnp.int32)
    else:
        bonus = y[rows, a]
    # new tokens t_0..t_K: accepted drafts, then the bonus token at index a
    j = jnp.arange(k + 1)[None, :]
    xs_ext = jnp.concatenate([xs, jnp.zeros((b, 1), jnp.int32)], axis=1)
    new = jnp.where(j < a[:, None], xs_ext, bonus[:, None])                  # [b, K+1]
    n = a + 1
    # cut at eos, stopping criteria and max_new_tokens (the first stop wins)
    stop = id_mask(knobs.eos, vocab)[new] | (s.n_new[:, None] + j + 1 >= s.max_new)
    if knobs.stopping:
        contiguous = jax.lax.dynamic_update_slice(s.sequences, new, (0, c))
        cmask = jax.lax.dynamic_update_slice(s.attention_mask, jnp.ones((b, k + 1), jnp.int32),
                                             (0, c))
        crit = [any_done(knobs.stopping, Context(sequences=contiguous, attention_mask=cmask,
                                                 cur=c + i + 1, start=s.start,
                                                 elapsed=s.elapsed)) for i in range(k + 1)]
        stop = stop | jnp.stack(crit, axis=1)
    stop = stop & (j < n[:, None])
    first_stop = jnp.argmax(stop, axis=1)
    stopped = stop.any(axis=1)
    n = jnp.where(stopped, first_stop + 1, n)
    n = jnp.where(s.done, 0, n)
    m = jnp.maximum(jnp.max(n), 1)
    # layout: row r keeps t_0..t_{n-2} at c.., its newest token at c+m-1, holes between
    last_tok = jnp.take_along_axis(new, jnp.maximum(n - 1, 0)[:, None], axis=1)[:, 0]
    body = (j < (n - 1)[:, None])
    at_end = (j == m - 1) & (n > 0)[:, None]
    block = jnp.where(at_end, last_tok[:, None], jnp.where(body, new, knobs.pad))
    block_mask = (body | at_end).astype(jnp.int32)
    seqs = jax.lax.dynamic_update_slice(s.sequences, block, (0, c))
    mask = jax.lax.dynamic_update_slice(s.attention_mask, block_mask, (0, c))
    new_cur = c + m
    if spec.draft is not None:
        dcache = dcache.replace(index=new_cur - 1)
    return s.replace(
        sequences=seqs, attention_mask=mask, position=s.position + n,
        cache=cache.replace(index=new_cur - 1), draft_cache=dcache, cur=new_cur,
        n_new=s.n_new + n, done=s.done | stopped, accepted=s.accepted + jnp.minimum(n, a),
        passes=s.passes + 1)


@partial(jax.jit, static_argnums=0, donate_argnums=2)
def spec_run(spec: SpecSpec, params: Any, state: SpecState, n: jax.Array) -> SpecState:
    """Run at most ``n`` iterations (each writes 1 .. K+1 tokens per row)."""
    length = state.sequences.shape[1]

    def cond(carry):
        i, s = carry
        return (i < n) & ~jnp.all(s.done) & (s.cur + spec.k + 1 <= length)

    def body(carry):
        i, s = carry
        return i + 1, spec_step(spec, params, s)

    _, state = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state))
    return state
