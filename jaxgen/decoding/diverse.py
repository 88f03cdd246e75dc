"""Diverse (group) beam search: transformers 4.x ``_group_beam_search`` semantics.

``K = num_beams`` beams per batch row are split into ``G = num_beam_groups`` groups of
``S = K // G``. Each step the groups are searched one after the other; group ``g``'s
log-probabilities are lowered by ``diversity_penalty`` times how often each token was
chosen by groups ``0 .. g-1`` of the same row at this step (Hamming diversity). Every
(row, group) keeps its own ``S`` finished hypotheses like 4.x's ``BeamHypotheses``
(eos tokens are not stored; the final sequences get ``eos_token_id[0]`` appended when
shorter than the longest), and is done by 4.x's ``is_done`` rule. The final selection
across groups runs on the host with 4.x's ``finalize`` ordering (``finalize_groups``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxgen.decoding.beam import DEAD, reorder_cache
from jaxgen.decoding.state import Knobs, LoopState
from jaxgen.processors.base import id_mask

EMPTY = -jnp.inf


@struct.dataclass
class GroupBeamState(LoopState):
    """Fixed-shape state of group beam search (``B`` rows, ``G`` groups of ``S`` beams)."""

    sequences: Int[Array, "rows buffer"]        # running beams, rows = B*K
    attention_mask: Int[Array, "rows buffer"]
    position: Int[Array, " rows"]
    cache: Any
    cur: Int[Array, ""]
    start: Int[Array, ""]
    max_len: Int[Array, ""]
    elapsed: Float[Array, ""]                   # host wall clock before this chunk (s)
    rng: Any
    knobs: Knobs
    proc_state: Any
    scores: Float[Array, "rows new vocab"] | None
    beam_scores: Float[Array, "B K"]             # running summed log-probs
    hyp_sequences: Int[Array, "B G S buffer"]    # finished hypotheses (without their eos)
    hyp_lengths: Int[Array, "B G S"]             # slots used: hypothesis ends at this slot
    hyp_scores: Float[Array, "B G S"]            # length-penalised (-inf = empty)
    hyp_order: Int[Array, "B G S"]               # insertion counter (4.x list order)
    done: Bool[Array, "B G"]
    added: Int[Array, ""]                        # insertion counter
    prompt_end: int = struct.field(pytree_node=False)

    def running(self) -> Bool[Array, ""]:
        return (self.cur < self.max_len) & ~jnp.all(self.done)


def init_group_state(common: dict[str, Any], num_beams: int, num_groups: int, vocab: int,
                     output_scores: bool) -> GroupBeamState:
    seqs = common["sequences"]
    rows, length = seqs.shape
    b, k = rows // num_beams, num_beams
    s = k // num_groups
    beam_scores = jnp.full((b, k), DEAD, jnp.float32).at[:, ::s].set(0.0)
    new = length - common["prompt_end"]
    return GroupBeamState(
        **{n: common[n] for n in ("sequences", "attention_mask", "position", "cache", "cur",
                                  "start", "max_len", "elapsed", "rng", "knobs", "prompt_end")},
        proc_state=None,
        scores=jnp.zeros((rows, new, vocab), jnp.float32) if output_scores else None,
        beam_scores=beam_scores,
        hyp_sequences=jnp.zeros((b, num_groups, s, length), jnp.int32),
        hyp_lengths=jnp.zeros((b, num_groups, s), jnp.int32),
        hyp_scores=jnp.full((b, num_groups, s), EMPTY, jnp.float32),
        hyp_order=jnp.zeros((b, num_groups, s), jnp.int32),
        done=jnp.zeros((b, num_groups), bool), added=jnp.zeros((), jnp.int32))


def _worst(scores: Float[Array, "B S"]) -> Float[Array, " B"]:
    """4.x ``worst_score``: the lowest kept score (1e9 while empty)."""
    filled = scores > EMPTY
    return jnp.where(filled.any(-1), jnp.min(jnp.where(filled, scores, jnp.inf), -1), 1e9)


def _add(hs, hl, hsc, ho, added, ok, seq, length, score):
    """4.x ``BeamHypotheses.add`` for one candidate per row (where ``ok``).

    hs [B, S, T], hl/hsc/ho [B, S]; seq [B, T]; length, score [B].
    """
    count = (hsc > EMPTY).sum(-1)
    cap = hsc.shape[-1]
    accept = ok & ((count < cap) | (score > _worst(hsc)))
    # slot to use: the first empty one, else the lowest (score, insertion order)
    empty_slot = jnp.argmax(hsc == EMPTY, axis=-1)
    key = jnp.where(hsc == EMPTY, jnp.inf, hsc)
    low = jnp.min(key, -1, keepdims=True)
    victim = jnp.argmin(jnp.where(key == low, ho, jnp.iinfo(jnp.int32).max), -1)
    slot = jnp.where(count < cap, empty_slot, victim)
    onehot = (jnp.arange(cap)[None, :] == slot[:, None]) & accept[:, None]     # [B, S]
    hs = jnp.where(onehot[:, :, None], seq[:, None, :], hs)
    hl = jnp.where(onehot, length[:, None], hl)
    hsc = jnp.where(onehot, score[:, None], hsc)
    ho = jnp.where(onehot, added, ho)
    return hs, hl, hsc, ho


def _is_done(hsc, best_sum, generated, max_new, lp, early_stopping):
    """4.x ``BeamHypotheses.is_done`` (``generated`` = cur_len - prompt length)."""
    full = (hsc > EMPTY).sum(-1) >= hsc.shape[-1]
    if early_stopping is True:
        return full
    if early_stopping == "never":
        length = jnp.where(lp > 0.0, max_new, generated)
    else:
        length = generated
    return full & (_worst(hsc) >= best_sum / length.astype(jnp.float32) ** lp)


def group_beam_choose(state: GroupBeamState, logits: Float[Array, "rows vocab"], *,
                      model: Any, num_beams: int, num_groups: int, n_eos: int,
                      early_stopping: Any, diversity_penalty: Any,
                      output_scores: bool) -> GroupBeamState:
    knobs, ctx = state.knobs, state.context()
    rows, vocab = logits.shape
    b, k, g_n = rows // num_beams, num_beams, num_groups
    s = k // g_n
    n_keep = max(2, 1 + n_eos) * s
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    pstate, wstate = state.proc_state
    log_probs, pstate = knobs.processors(log_probs, pstate, ctx)
    log_probs = log_probs.reshape(b, k, vocab)
    length = state.sequences.shape[1]
    seqs = state.sequences.reshape(b, k, length)
    eos_mask = id_mask(knobs.eos, vocab)
    lp = knobs.length_penalty
    generated = state.new_tokens + 1            # 4.x: cur_len (after this token) - prompt
    max_new = state.max_len - state.prompt_end
    hs, hl, hsc, ho = state.hyp_sequences, state.hyp_lengths, state.hyp_scores, state.hyp_order
    done, added = state.done, state.added
    tokens = jnp.zeros((b, k), jnp.int32)
    new_scores = jnp.zeros((b, k), jnp.float32)
    src = jnp.zeros((b, k), jnp.int32)
    processed = []
    rows_b = jnp.arange(b)
    for g in range(g_n):
        lo, hi = g * s, (g + 1) * s
        lp_g = log_probs[:, lo:hi]                                      # [B, S, V]
        if g > 0:
            seen = jax.nn.one_hot(tokens[:, :lo], vocab, dtype=jnp.float32).sum(1)
            lp_g = lp_g - diversity_penalty * seen[:, None, :]
        processed.append(lp_g)
        acc = (lp_g + state.beam_scores[:, lo:hi, None]).reshape(b, s * vocab)
        top_lp, idx = jax.lax.top_k(acc, n_keep)                        # [B, n_keep]
        beam_in = (idx // vocab).astype(jnp.int32)
        tok = (idx % vocab).astype(jnp.int32)
        is_eos = eos_mask[tok]
        # finished hypotheses: eos candidates ranked within the group size
        hgs, hgl, hgsc, hgo = hs[:, g], hl[:, g], hsc[:, g], ho[:, g]
        for r in range(min(s, n_keep)):
            ok = is_eos[:, r] & ~done[:, g]
            seq = seqs[rows_b, lo + beam_in[:, r]]
            score = top_lp[:, r] / generated.astype(jnp.float32) ** lp
            hgs, hgl, hgsc, hgo = _add(hgs, hgl, hgsc, hgo, added, ok, seq,
                                       jnp.broadcast_to(state.cur, (b,)), score)
            added = added + 1
        # running beams: the first S candidates that are not eos, in rank order
        non_eos = ~is_eos
        pos = jnp.cumsum(non_eos, axis=1) - 1
        pick = non_eos[:, None, :] & (pos[:, None, :] == jnp.arange(s)[None, :, None])
        r_of = jnp.argmax(pick, axis=-1)                                # [B, S]
        g_tok, g_score, g_src = (jnp.take_along_axis(x, r_of, axis=1)
                                 for x in (tok, top_lp, beam_in))
        g_src = lo + g_src
        was_done = done[:, g:g + 1]
        g_tok = jnp.where(was_done, knobs.pad, g_tok)
        g_score = jnp.where(was_done, 0.0, g_score)
        g_src = jnp.where(was_done, lo + jnp.arange(s)[None, :], g_src)
        tokens = tokens.at[:, lo:hi].set(g_tok)
        new_scores = new_scores.at[:, lo:hi].set(g_score)
        src = src.at[:, lo:hi].set(g_src)
        now_done = _is_done(hgsc, top_lp[:, 0], generated, max_new, lp, early_stopping)
        done = done.at[:, g].set(done[:, g] | now_done)
        hs, hl, hsc, ho = (hs.at[:, g].set(hgs), hl.at[:, g].set(hgl),
                           hsc.at[:, g].set(hgsc), ho.at[:, g].set(hgo))

    new_seq = jnp.take_along_axis(seqs, src[:, :, None], axis=1)
    new_seq = jax.lax.dynamic_update_slice(new_seq, tokens[:, :, None], (0, 0, state.cur))
    flat_src = (src + rows_b[:, None] * k).reshape(rows)
    scores = state.scores
    if output_scores:
        step_scores = jnp.concatenate(processed, axis=1).reshape(rows, vocab)
        scores = jax.lax.dynamic_update_slice(scores, step_scores[:, None, :],
                                              (0, state.new_tokens, 0))
    return state.replace(
        sequences=new_seq.reshape(rows, length),
        attention_mask=jax.lax.dynamic_update_slice(
            state.attention_mask, jnp.ones((rows, 1), jnp.int32), (0, state.cur)),
        position=state.position + 1,
        cache=reorder_cache(model, state.cache, flat_src),
        cur=state.cur + 1,
        proc_state=(knobs.processors.reorder_state(pstate, flat_src),
                    knobs.warpers.reorder_state(wstate, flat_src)),
        scores=scores, beam_scores=new_scores, hyp_sequences=hs, hyp_lengths=hl,
        hyp_scores=hsc, hyp_order=ho, done=done, added=added)


def finalize_groups(state: GroupBeamState, *, num_return_sequences: int, pad: int,
                    eos: list[int], start: int, max_length_slot: int,
                    length_penalty: float) -> tuple[np.ndarray, np.ndarray]:
    """4.x ``BeamSearchScorer.finalize`` on the host: add the open beams of unfinished
    groups, pick the best ``num_return_sequences`` per row, append ``eos[0]``, pad.

    Returns (sequences [B * nrs, width], scores [B * nrs]).
    """
    seqs = np.asarray(state.sequences)
    cur = int(state.cur)
    b, g_n, s, _ = state.hyp_sequences.shape
    k = g_n * s
    hyps = _hyp_lists(state)
    done = np.asarray(state.done)
    beam_scores = np.asarray(state.beam_scores)
    generated = cur - state.prompt_end
    for bi in range(b):
        for g in range(g_n):
            if done[bi, g]:
                continue
            for j in range(s):
                row = bi * k + g * s + j
                score = float(beam_scores[bi, g * s + j]) / (generated ** length_penalty)
                _py_add(hyps[bi][g], s, score, seqs[row, start:cur])
    out, out_scores = [], []
    for bi in range(b):
        cands = [h for g in range(g_n) for h in hyps[bi][g][0]]
        ordered = sorted(cands, key=lambda h: h[0])
        for _ in range(num_return_sequences):
            score, hyp = ordered.pop()
            out.append(hyp)
            out_scores.append(score)
    lengths = [len(h) for h in out]
    width = min(max(lengths) + 1, max_length_slot - start)
    fill = pad if min(lengths) != max(lengths) else 0
    decoded = np.full((len(out), width), fill, np.int32)
    for i, hyp in enumerate(out):
        decoded[i, :len(hyp)] = hyp
        if len(hyp) < width:
            decoded[i, len(hyp)] = eos[0]
    return decoded, np.asarray(out_scores, np.float32)


def _hyp_lists(state: GroupBeamState) -> list[list[list[Any]]]:
    """Device hypotheses as 4.x lists ``[beams (score, tokens), worst_score]``."""
    hs = np.asarray(state.hyp_sequences)
    hl, hsc = np.asarray(state.hyp_lengths), np.asarray(state.hyp_scores)
    ho = np.asarray(state.hyp_order)
    start = int(state.start)
    out = []
    for bi in range(hs.shape[0]):
        row = []
        for g in range(hs.shape[1]):
            kept = [j for j in np.argsort(ho[bi, g], kind="stable") if np.isfinite(hsc[bi, g, j])]
            beams = [(float(hsc[bi, g, j]), hs[bi, g, j, start:hl[bi, g, j]]) for j in kept]
            worst = min((x[0] for x in beams), default=1e9)
            row.append([beams, worst])
        out.append(row)
    return out


def _py_add(hyp: list[Any], cap: int, score: float, tokens: np.ndarray) -> None:
    beams = hyp[0]
    if len(beams) < cap or score > hyp[1]:
        beams.append((score, tokens))
        if len(beams) > cap:
            order = sorted((sc, i) for i, (sc, _) in enumerate(beams))
            del beams[order[0][1]]
            hyp[1] = order[1][0]
        else:
            hyp[1] = min(score, hyp[1])
