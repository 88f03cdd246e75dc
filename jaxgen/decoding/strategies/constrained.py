"""Constrained beam search (``force_words_ids``, ``constraints``): transformers 4.55
``_constrained_beam_search`` with ``ConstrainedBeamSearchScorer``, in the fixed-shape loop.

Per batch row (``K`` beams), one step::

    acc        = processors(log_softmax(logits)) + beam scores               [K, V]
    top n_keep = max(2, 1 + n_eos) * K candidates of acc
    finished  <- eos candidates ranked < K whose beam already meets every constraint
    kept       = the first K candidates that are not an eos
    advance    = per beam, every token that makes progress on a constraint, scored
                 acc[beam, token] (dropped when that sequence is already a candidate)
    next beams = kept + advance, sorted by bank * 100 + score and taken round-robin over
                 the runs of equal banks (the best of each first): the first K

A beam's constraint progress is per-beam state (`forced.Progress`, started on the
prompt as transformers does); the row is done by 4.x's ``is_done``. At the end the
running beams that meet the constraints join the hypotheses (all of them if fewer than
``num_return_sequences`` do), and the best win (4.x's ``finalize``).
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxgen.decoding.kernel import eos_hit, feed, process, put, record
from jaxgen.decoding.output import GenerateOutput
from jaxgen.decoding.protocol import Request, Strategy
from jaxgen.decoding.record import FLAGS
from jaxgen.decoding.state import DecodeState, LoopState
from jaxgen.decoding.strategies import forced
from jaxgen.decoding.strategies.beam import DEAD, BeamSearch, follow_beams
from jaxgen.decoding.strategies.hypotheses import (
    Hypotheses,
    add_finished,
    first_live,
    legacy_done,
    legacy_output,
    ranked,
)


@struct.dataclass
class ConstrainedSub:
    """Constrained beam search's own state (``B`` rows of ``K`` beams)."""

    beam_scores: Float[Array, "B K"]   # running summed log-probs
    progress: forced.Progress          # constraint progress of every beam ([B*K] leaves)
    hyps: Hypotheses                   # K finished hypotheses per row (4.x order)
    done: Bool[Array, " B"]            # 4.x ``is_done``


def _merge(kept: tuple[Array, ...], adv: tuple[Array, ...], same: Bool[Array, "K K"]
           ) -> tuple[Int[Array, " K"], Int[Array, " K"], Float[Array, " K"]]:
    """One row's next beams ``(source beam, token, score)`` from the kept candidates
    ``(token, score, source, bank)`` [K] and the advance ones ``(token, valid, bank,
    score, source)`` [n] (transformers' ``step_sentence_constraint``)."""
    k_tok, k_score, k_src, k_bank = kept
    a_tok, a_ok, a_bank, a_score, a_src = adv
    k, n = k_tok.shape[0], a_tok.shape[0]
    # a sequence already listed (a kept one, or an earlier advance one) is not added again
    eq = same[a_src[:, None], a_src[None, :]] & (a_tok[:, None] == a_tok[None, :])
    dup = (eq & jnp.tri(n, k=-1, dtype=bool) & a_ok[None, :]).any(-1)
    dup |= (same[a_src[:, None], k_src[None, :]] & (a_tok[:, None] == k_tok[None, :])).any(-1)
    valid = jnp.concatenate([jnp.ones((k,), bool), a_ok & ~dup])
    tok, src = jnp.concatenate([k_tok, a_tok]), jnp.concatenate([k_src, a_src])
    bank, score = jnp.concatenate([k_bank, a_bank]), jnp.concatenate([k_score, a_score])
    order = jnp.lexsort((-(bank * 100.0 + score), ~valid))        # best first, invalid last
    sb = bank[order]
    m = jnp.arange(sb.shape[0])
    change = jnp.concatenate([jnp.ones((1,), bool), sb[1:] != sb[:-1]])
    run = m - jax.lax.cummax(jnp.where(change, m, 0))              # place in its run of banks
    pick = order[jnp.argsort(jnp.where(valid[order], run, forced.BIG), stable=True)[:k]]
    return src[pick], tok[pick], score[pick]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConstrainedBeamSearch(Strategy):
    """``num_beams`` beams that must fit ``constraints`` (`forced.PhrasalConstraint` /
    `forced.DisjunctiveConstraint`); ``num_return`` hypotheses are returned per row."""

    num_beams: int
    constraints: tuple[Any, ...]
    n_eos: int = 0
    num_return: int = 1
    early_stopping: Any = False
    streamable: ClassVar[bool] = False
    outputs: ClassVar[frozenset[str]] = frozenset(FLAGS)
    time_up = BeamSearch.time_up

    def rows_per_prompt(self, config: Any) -> int:
        return self.num_beams

    def check(self, request: Request) -> None:
        if request.knobs.stopping:
            raise ValueError("stopping_criteria / stop_strings are not supported with "
                             "constrained beam search (force_words_ids / constraints); "
                             "allowed: None")

    def init(self, model: Any, params: Any, first_logits: Any, loop: LoopState,
             aux: Any) -> DecodeState:
        rows, length = loop.sequences.shape
        b, k = rows // self.num_beams, self.num_beams
        sub = ConstrainedSub(
            beam_scores=jnp.zeros((b, k), jnp.float32).at[:, 1:].set(DEAD),
            progress=self._on_prompt(loop), done=jnp.zeros((b,), bool),
            hyps=Hypotheses.empty(b, k, length, None, newest_first=True))
        return self._choose(DecodeState(loop=loop, sub=sub), first_logits)

    def _on_prompt(self, loop: LoopState) -> forced.Progress:
        """Progress after the caller's ids (transformers counts the prompt too)."""
        t = forced.tables(self.constraints)
        p = loop.prompt_end

        def body(s: forced.Progress, x: tuple[Array, Array]) -> tuple[forced.Progress, None]:
            tok, ok = x
            return jax.tree.map(lambda a, b: jnp.where(ok, a, b), forced.add(t, s, tok), s), None

        s0 = forced.start(loop.rows, len(self.constraints))
        xs = (loop.sequences[:, :p].T, jnp.arange(p) >= loop.start)
        return jax.lax.scan(body, s0, xs)[0]

    def step(self, model: Any, params: Any, state: DecodeState) -> DecodeState:
        logits, loop, _ = feed(params, state.loop)
        return self._choose(state.replace(loop=loop), logits)

    def running(self, state: DecodeState) -> Bool[Array, ""]:
        return (state.loop.cur < state.loop.max_len) & ~jnp.all(state.sub.done)

    def _choose(self, state: DecodeState, logits: Float[Array, "rows vocab"]) -> DecodeState:
        """One step (module docstring): finished hypotheses, next beams, their progress."""
        loop, sub, knobs = state.loop, state.sub, state.loop.knobs
        rows, vocab = logits.shape
        k = self.num_beams
        b, length = rows // k, loop.sequences.shape[1]
        pstate, wstate = loop.proc_state
        log_probs, pstate = process(knobs, jax.nn.log_softmax(logits.astype(jnp.float32)),
                                    pstate, loop.context())
        acc = log_probs + sub.beam_scores.reshape(rows, 1)            # [B*K, V]
        top_lp, idx = jax.lax.top_k(acc.reshape(b, k * vocab), max(2, 1 + self.n_eos) * k)
        beam_in, tok = (idx // vocab).astype(jnp.int32), (idx % vocab).astype(jnp.int32)
        is_eos = eos_hit(knobs, tok)
        met = jnp.take_along_axis(sub.progress.completed.reshape(b, k), beam_in, axis=1)
        seqs = loop.sequences.reshape(b, k, length)
        generated = loop.new_tokens + 1
        hyps = add_finished(sub.hyps, is_eos & met & ~sub.done[:, None], seqs, beam_in,
                            top_lp, generated, knobs.length_penalty, loop.cur, k)
        r_of = first_live(is_eos, k)
        src, token, score = self._next(acc, seqs, sub.progress,
                                       *(jnp.take_along_axis(x, r_of, axis=1)
                                         for x in (tok, top_lp, beam_in)))
        was_done = sub.done[:, None]
        token = jnp.where(was_done, knobs.pad, token)
        score = jnp.where(was_done, 0.0, score)
        src = jnp.where(was_done, jnp.arange(k)[None, :], src)
        flat_src = (src + jnp.arange(b)[:, None] * k).reshape(rows)
        progress = forced.add(forced.tables(self.constraints),
                              jax.tree.map(lambda x: x[flat_src], sub.progress),
                              token.reshape(rows))
        done = sub.done | legacy_done(hyps, top_lp[:, 0], generated,
                                      loop.max_len - loop.prompt_end, knobs.length_penalty,
                                      self.early_stopping)
        new_seq = jnp.take_along_axis(seqs, src[:, :, None], axis=1).reshape(rows, length)
        loop = loop.replace(
            sequences=put(new_seq, token.reshape(rows), loop.cur),
            attention_mask=put(loop.attention_mask, jnp.ones((rows,), jnp.int32), loop.cur),
            position=loop.position + 1, cur=loop.cur + 1,
            scores=record(loop.scores, acc, loop.new_tokens),
            **follow_beams(loop, flat_src, pstate, wstate))
        return DecodeState(loop=loop, sub=ConstrainedSub(beam_scores=score, progress=progress,
                                                         hyps=hyps, done=done))

    def _next(self, acc: Float[Array, "BK V"], seqs: Int[Array, "B K T"],
              progress: forced.Progress, k_tok: Array, k_score: Array, k_src: Array
              ) -> tuple[Array, Array, Array]:
        """The next beams of every row (`_merge`), from the kept candidates [B, K]."""
        t = forced.tables(self.constraints)
        b, k = k_tok.shape
        per_row = jax.tree.map(lambda x: x.reshape(b, k, *x.shape[1:]), progress)
        kept = jax.tree.map(lambda x: jnp.take_along_axis(
            x, k_src.reshape(b, k, *([1] * (x.ndim - 2))), axis=1), per_row)
        k_bank = forced.bank(t, forced.add(t, kept, k_tok))
        a_tok, a_ok, a_bank = forced.advance(t, progress)                  # [B*K, A]
        a_score = jnp.take_along_axis(acc, jnp.maximum(a_tok, 0), axis=1)
        n = k * a_tok.shape[1]
        a_src = jnp.repeat(jnp.arange(k, dtype=jnp.int32), a_tok.shape[1])
        same = (seqs[:, :, None, :] == seqs[:, None, :, :]).all(-1)       # [B, K, K]
        adv = (a_tok.reshape(b, n), a_ok.reshape(b, n), a_bank.reshape(b, n),
               a_score.reshape(b, n), jnp.broadcast_to(a_src, (b, n)))
        return jax.vmap(_merge)((k_tok, k_score, k_src, k_bank), adv, same)

    def finalize(self, state: DecodeState, request: Request) -> GenerateOutput:
        """4.x ``ConstrainedBeamSearchScorer.finalize`` (module docstring)."""
        hyps = _add_running(state, self.num_return)
        best = ranked(hyps)[:, :request.config.num_return_sequences]
        return legacy_output(hyps, best, state.loop, request)


@partial(jax.jit, static_argnums=1)
def _add_running(state: DecodeState, n_return: int) -> Hypotheses:
    """Running beams of unfinished rows join the hypotheses: those meeting the constraints,
    then, if fewer than ``n_return`` do, all the others (4.x's order)."""
    loop, sub = state.loop, state.sub
    b, k = sub.beam_scores.shape
    seqs = loop.sequences.reshape(b, k, -1)
    met = sub.progress.completed.reshape(b, k)
    short = met.sum(axis=1) < n_return
    score = sub.beam_scores / loop.new_tokens.astype(jnp.float32) ** loop.knobs.length_penalty
    end = jnp.broadcast_to(loop.cur, (b,))
    hyps = sub.hyps
    for ok in (met, short[:, None] & ~met):
        for j in range(k):
            hyps = hyps.add(~sub.done & ok[:, j], seqs[:, j], score[:, j], end)
    return hyps
