"""Beam search and beam sampling as one fixed-shape step (transformers v5 semantics).

Per batch row ``b`` there are ``K = num_beams`` running beams (rows ``b*K .. b*K+K-1`` of
the flat model batch) and ``K`` finished hypotheses. One step::

    log_probs = processors(log_softmax(logits))          [b*K, V]   (+ warpers if sampling)
    acc       = log_probs + running_scores                [b, K*V]
    top n_keep = max(2, 1 + n_eos) * K candidates          (Gumbel top-k when sampling)
    running  <- best K candidates that did not hit eos / max length
    finished <- best K of (finished, candidates in the top K that hit a stop),
                scored by acc / generated_length ** length_penalty
    caches and processor states follow the surviving beams (a gather on the batch axis).

The search stops as transformers does: when no row can improve (the early-stopping
heuristic), when every beam of every row is finished and ``early_stopping=True``, or
when every candidate hit a stop.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxgen.decoding.state import Knobs, LoopState
from jaxgen.processors.base import Context, id_mask
from jaxgen.stopping import any_done

DEAD = -1.0e9  # transformers' score for dead / unusable beams


@struct.dataclass
class BeamState(LoopState):
    """Fixed-shape state of beam search (``B`` batch rows, ``K`` beams, ``N`` new slots)."""

    sequences: Int[Array, "rows buffer"]        # running beams, rows = B*K (model batch)
    attention_mask: Int[Array, "rows buffer"]   # same for every beam of a row
    position: Int[Array, " rows"]               # position id of the token in slot cur - 1
    cache: Any                                  # model cache for the B*K running beams
    cur: Int[Array, ""]                         # next slot to write
    start: Int[Array, ""]                       # first slot of the caller's input_ids
    max_len: Int[Array, ""]                     # stop before writing this slot
    elapsed: Float[Array, ""]                   # host wall clock before this chunk (s)
    rng: Any                                    # [B] keys (beam sampling only)
    knobs: Knobs
    proc_state: Any
    scores: Float[Array, "rows new vocab"] | None  # processed log-probs per step
    running_scores: Float[Array, "B K"]         # summed log-probs of running beams
    running_beams: Int[Array, "B K new"]        # flat beam index chosen at each step (-1)
    done_sequences: Int[Array, "B K buffer"]    # finished hypotheses
    done_scores: Float[Array, "B K"]            # length-penalised scores (DEAD if empty)
    done_beams: Int[Array, "B K new"]
    finished: Bool[Array, "B K"]                # slot holds a finished hypothesis
    improvable: Bool[Array, " B"]               # early-stop heuristic still unsatisfied
    stop: Bool[Array, ""]                       # transformers' loop condition failed
    prompt_end: int = struct.field(pytree_node=False)

    def running(self) -> Bool[Array, ""]:
        return (self.cur < self.max_len) & ~self.stop


def init_beam_state(common: dict[str, Any], num_beams: int, vocab: int,
                    output_scores: bool) -> BeamState:
    """Beam state from the fields ``prefill`` computed for the ``B*K`` expanded rows."""
    seqs = common["sequences"]
    rows, length = seqs.shape
    b, k = rows // num_beams, num_beams
    new = length - common["prompt_end"]
    running_scores = jnp.zeros((b, k), jnp.float32).at[:, 1:].set(DEAD)
    return BeamState(
        **{n: common[n] for n in ("sequences", "attention_mask", "position", "cache", "cur",
                                  "start", "max_len", "elapsed", "knobs", "prompt_end")},
        rng=common["rng"][::k], proc_state=None,
        scores=jnp.zeros((rows, new, vocab), jnp.float32) if output_scores else None,
        running_scores=running_scores,
        running_beams=jnp.full((b, k, new), -1, jnp.int32),
        done_sequences=seqs.reshape(b, k, length),
        done_scores=jnp.full((b, k), DEAD, jnp.float32),
        done_beams=jnp.full((b, k, new), -1, jnp.int32),
        finished=jnp.zeros((b, k), bool), improvable=jnp.ones((b,), bool),
        stop=jnp.zeros((), bool))


def _gather(x: Array, idx: Int[Array, "B n"]) -> Array:
    """``x[b, idx[b, j], ...]``: pick beams along axis 1."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def reorder_cache(model: Any, cache: Any, rows: Int[Array, " rows"]) -> Any:
    """The cache of the surviving beams: ``model.reorder_cache`` if the model has one,
    else a gather on axis 1 of ``k``/``v`` (``[layers, batch, ...]``) and on axis 0 of any
    other leaf with the batch as leading axis (scalars such as the write index stay)."""
    if hasattr(model, "reorder_cache"):
        return model.reorder_cache(cache, rows)
    n = rows.shape[0]

    def take(path, x):
        name = getattr(path[-1], "name", None) if path else None
        if name in ("k", "v") and x.ndim >= 2 and x.shape[1] == n:
            return jnp.take(x, rows, axis=1)
        if x.ndim >= 1 and x.shape[0] == n:
            return jnp.take(x, rows, axis=0)
        return x

    return jax.tree_util.tree_map_with_path(take, cache)


def beam_choose(state: BeamState, logits: Float[Array, "rows vocab"], *, model: Any,
                num_beams: int, n_keep: int, do_sample: bool, early_stopping: Any,
                output_scores: bool) -> BeamState:
    """One beam step: extend, keep the best running beams, update the finished ones."""
    knobs, ctx = state.knobs, state.context()
    rows, vocab = logits.shape
    b, k = rows // num_beams, num_beams
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    pstate, wstate = state.proc_state
    log_probs, pstate = knobs.processors(log_probs, pstate, ctx)
    if do_sample:
        log_probs, wstate = knobs.warpers(log_probs, wstate, ctx)
    new_scores = state.scores
    if output_scores:
        new_scores = jax.lax.dynamic_update_slice(state.scores, log_probs[:, None, :],
                                                  (0, state.new_tokens, 0))
    # [B*K, V] -> [B, K*V]
    acc = (log_probs.reshape(b, k, vocab) + state.running_scores[:, :, None]).reshape(b, -1)
    if do_sample:
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state.rng, state.new_tokens)
        gumbel = jax.vmap(lambda key: jax.random.gumbel(key, (k * vocab,)))(keys)
        _, idx = jax.lax.top_k(acc + gumbel, n_keep)            # without replacement
        top_lp = jnp.take_along_axis(acc, idx, axis=1)
        order = jnp.argsort(-top_lp, axis=1, stable=True)        # transformers sorts them
        top_lp, idx = (jnp.take_along_axis(top_lp, order, axis=1),
                       jnp.take_along_axis(idx, order, axis=1))
    else:
        top_lp, idx = jax.lax.top_k(acc, n_keep)                 # [B, n_keep]
    beam_of, token = idx // vocab, (idx % vocab).astype(jnp.int32)
    length = state.sequences.shape[1]
    cand_seq = _gather(state.sequences.reshape(b, k, length), beam_of)
    cand_seq = jax.lax.dynamic_update_slice(cand_seq, token[:, :, None], (0, 0, state.cur))
    flat_beam = (beam_of + jnp.arange(b)[:, None] * k).astype(jnp.int32)
    cand_beams = jax.lax.dynamic_update_slice(_gather(state.running_beams, beam_of),
                                              flat_beam[:, :, None], (0, 0, state.new_tokens))
    hits = id_mask(knobs.eos, vocab)[token] | (state.cur + 1 >= state.max_len)
    new_mask = jax.lax.dynamic_update_slice(state.attention_mask,
                                            jnp.ones((rows, 1), jnp.int32), (0, state.cur))
    if knobs.stopping:  # criteria see every candidate's sequence, as in transformers
        cand_mask = jnp.repeat(new_mask.reshape(b, k, length)[:, :1], n_keep, axis=1)
        after = Context(sequences=cand_seq.reshape(b * n_keep, length),
                        attention_mask=cand_mask.reshape(b * n_keep, length),
                        cur=state.cur + 1, start=state.start, elapsed=state.elapsed)
        hits = hits | any_done(knobs.stopping, after).reshape(b, n_keep)

    # running beams for the next step: the best candidates that did not stop
    run_lp = top_lp + hits.astype(jnp.float32) * DEAD
    _, keep = jax.lax.top_k(run_lp, k)
    running_seq = _gather(cand_seq, keep)
    running_scores = _gather(run_lp, keep)
    running_beams = _gather(cand_beams, keep)

    # finished hypotheses: only candidates within the top K may finish
    just_done = hits & (jnp.arange(n_keep) < k)[None, :]
    lp = knobs.length_penalty
    fin = top_lp / ((state.new_tokens + 1).astype(jnp.float32) ** lp)
    if early_stopping is True:
        fin = fin + jnp.all(state.finished, axis=1, keepdims=True).astype(jnp.float32) * DEAD
    fin = fin + (~state.improvable[:, None]).astype(jnp.float32) * DEAD
    fin = fin + (~just_done).astype(jnp.float32) * DEAD
    merged_scores = jnp.concatenate([state.done_scores, fin], axis=1)
    _, best = jax.lax.top_k(merged_scores, k)
    done_sequences = _gather(jnp.concatenate([state.done_sequences, cand_seq], 1), best)
    done_scores = _gather(merged_scores, best)
    done_beams = _gather(jnp.concatenate([state.done_beams, cand_beams], 1), best)
    finished = _gather(jnp.concatenate([state.finished, just_done], 1), best)

    # caches and processor states follow the surviving beams
    src = jax.lax.dynamic_index_in_dim(running_beams, state.new_tokens, axis=2,
                                       keepdims=False).reshape(rows)
    cache = reorder_cache(model, state.cache, src)
    proc_state = (knobs.processors.reorder_state(pstate, src),
                  knobs.warpers.reorder_state(wstate, src))

    # early-stop heuristic after the step (transformers' _check_early_stop_heuristic)
    generated = (state.new_tokens + 1).astype(jnp.float32)
    if early_stopping == "never":
        best_len = jnp.where(lp > 0.0, (state.max_len - state.prompt_end).astype(jnp.float32),
                             generated)
    else:
        best_len = generated
    best_running = running_scores[:, :1] / best_len ** lp
    worst_done = jnp.where(finished, jnp.min(done_scores, axis=1, keepdims=True), DEAD)
    improvable = state.improvable & jnp.any(best_running > worst_done, axis=1)
    open_beams = ~(jnp.all(finished) & (early_stopping is True))
    stop = ~(jnp.any(improvable) & open_beams & ~jnp.all(hits))

    return state.replace(
        sequences=running_seq.reshape(rows, length),
        attention_mask=new_mask,
        position=state.position + 1, cache=cache, cur=state.cur + 1, proc_state=proc_state,
        scores=new_scores, running_scores=running_scores, running_beams=running_beams,
        done_sequences=done_sequences, done_scores=done_scores, done_beams=done_beams,
        finished=finished, improvable=improvable, stop=stop)
