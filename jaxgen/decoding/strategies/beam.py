"""Beam search and beam sampling as one fixed-shape step (transformers v5 semantics).

Per batch row ``b`` there are ``K = num_beams`` running beams (rows ``b*K .. b*K+K-1`` of
the flat model batch) and ``K`` finished hypotheses. One step::

    log_probs = processors(log_softmax(logits))          [b*K, V]   (+ warpers if sampling)
    acc       = log_probs + running_scores                [b, K*V]
    top n_keep = max(2, 1 + n_eos) * K candidates          (Gumbel top-k when sampling)
    running  <- best K candidates that did not hit eos / max length / a criterion
    finished <- candidates in the top K that hit a stop, scored by
                acc / generated_length ** length_penalty (``Hypotheses.add``)
    caches and processor states follow the surviving beams: beams stay in their cache
    lanes and only forks copy (``beam_lanes``), else ``model.reorder_cache``.

The search stops as transformers does: when no row can improve (the early-stopping
heuristic), when every beam of every row is finished and ``early_stopping=True``, or
when every candidate hit a stop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxgen.decoding.kernel import (
    criteria_hit,
    eos_hit,
    feed,
    process,
    put,
    record,
    row_keys,
)
from jaxgen.decoding.output import GenerateOutput, host, score_steps
from jaxgen.decoding.protocol import Request, Strategy, recorded
from jaxgen.decoding.record import FLAGS
from jaxgen.decoding.state import DecodeState, LoopState
from jaxgen.decoding.strategies import beam_lanes
from jaxgen.decoding.strategies.hypotheses import Hypotheses, ranked

DEAD = -1.0e9  # transformers' score for dead / unusable beams


@struct.dataclass
class BeamSub:
    """Beam search's own state (``B`` batch rows, ``K`` beams, ``N`` new slots)."""

    running_scores: Float[Array, "B K"]   # summed log-probs of the running beams
    running_beams: Int[Array, "B K N"]    # flat beam index chosen at each step (-1)
    hyps: Hypotheses                      # finished hypotheses, K per batch row
    improvable: Bool[Array, " B"]         # early-stop heuristic still unsatisfied
    stop: Bool[Array, ""]                 # transformers' loop condition failed
    lanes: Int[Array, "B K"] | None = None  # cache lane of each beam (None: reorder_cache)


def gather_beams(x: Array, idx: Int[Array, "B n"]) -> Array:
    """``x[b, idx[b, j], ...]``: pick beams along axis 1."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def follow_beams(loop: LoopState, src: Int[Array, " rows"], pstate: Any, wstate: Any,
                 cache: Any = None) -> dict[str, Any]:
    """Cache and processor states of the surviving beams (row i <- old row src[i]);
    ``cache``: the cache when the caller already made it follow (beam lanes)."""
    knobs = loop.knobs
    return dict(cache=loop.model.reorder_cache(loop.cache, src) if cache is None else cache,
                proc_state=(knobs.processors.reorder_state(pstate, src),
                            knobs.warpers.reorder_state(wstate, src)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class BeamSearch(Strategy):
    """``num_beams`` beams per row; ``do_sample`` turns it into beam sampling."""

    num_beams: int
    n_keep: int                 # candidates kept per step: max(2, 1 + n_eos) * num_beams
    do_sample: bool = False
    early_stopping: Any = False  # True / False / "never"
    lanes: bool = True          # beams keep cache lanes when the cache allows (beam_lanes)
    streamable: ClassVar[bool] = False
    outputs: ClassVar[frozenset[str]] = frozenset(FLAGS)

    def rows_per_prompt(self, config: Any) -> int:
        return self.num_beams

    def init(self, model: Any, params: Any, first_logits: Any, loop: LoopState,
             aux: Any) -> DecodeState:
        rows, length = loop.sequences.shape
        b, k = rows // self.num_beams, self.num_beams
        new = length - loop.prompt_end
        lanes = None
        if self.lanes and loop.trace is None and beam_lanes.supports(loop.cache):
            lanes = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (b, k))
        sub = BeamSub(running_scores=jnp.zeros((b, k), jnp.float32).at[:, 1:].set(DEAD),
                      running_beams=jnp.full((b, k, new), -1, jnp.int32),
                      hyps=Hypotheses.empty(b, k, length, new),
                      improvable=jnp.ones((b,), bool), stop=jnp.zeros((), bool), lanes=lanes)
        loop = loop.replace(rng=loop.rng[::k])                   # one stream per batch row
        return self._choose(DecodeState(loop=loop, sub=sub), first_logits)

    def step(self, model: Any, params: Any, state: DecodeState) -> DecodeState:
        if state.sub.lanes is None:
            logits, loop, _ = feed(params, state.loop)
            return self._choose(state.replace(loop=loop), logits)
        logits, cache = beam_lanes.feed_lanes(params, state.loop, state.sub.lanes)
        return self._choose(state.replace_loop(cache=cache), logits)

    def running(self, state: DecodeState) -> Bool[Array, ""]:
        return (state.loop.cur < state.loop.max_len) & ~state.sub.stop

    def time_up(self, state: DecodeState) -> DecodeState:
        """One last step in which every candidate counts as stopped (transformers'
        ``MaxTimeCriteria`` with beams)."""
        loop = state.loop
        return state.replace_loop(max_len=jnp.minimum(loop.max_len, loop.cur + 1))

    def _candidates(self, loop: LoopState, acc: Float[Array, "B KV"]
                    ) -> tuple[Float[Array, "B n"], Int[Array, "B n"]]:
        """The ``n_keep`` best (or Gumbel-sampled) candidates, sorted by score."""
        if not self.do_sample:
            return jax.lax.top_k(acc, self.n_keep)
        keys = row_keys(loop.rng, loop.new_tokens)
        gumbel = jax.vmap(lambda key: jax.random.gumbel(key, acc.shape[1:]))(keys)
        _, idx = jax.lax.top_k(acc + gumbel, self.n_keep)      # without replacement
        top = jnp.take_along_axis(acc, idx, axis=1)
        order = jnp.argsort(-top, axis=1, stable=True)           # transformers sorts them
        return jnp.take_along_axis(top, order, axis=1), jnp.take_along_axis(idx, order, axis=1)

    def _choose(self, state: DecodeState, logits: Float[Array, "rows vocab"]) -> DecodeState:
        """One beam step: extend, keep the best running beams, update the finished ones."""
        loop, sub, knobs = state.loop, state.sub, state.loop.knobs
        rows, vocab = logits.shape
        b, k, length = rows // self.num_beams, self.num_beams, loop.sequences.shape[1]
        ctx = loop.context()
        pstate, wstate = loop.proc_state
        log_probs, pstate = process(knobs, jax.nn.log_softmax(logits.astype(jnp.float32)),
                                    pstate, ctx)
        if self.do_sample:
            log_probs, wstate = knobs.warpers(log_probs, wstate, ctx)
        scores = record(loop.scores, log_probs, loop.new_tokens)
        # [B*K, V] -> [B, K*V]
        acc = (log_probs.reshape(b, k, vocab) + sub.running_scores[:, :, None]).reshape(b, -1)
        top_lp, idx = self._candidates(loop, acc)
        beam_of, token = idx // vocab, (idx % vocab).astype(jnp.int32)
        n = self.n_keep
        cand_seq = gather_beams(loop.sequences.reshape(b, k, length), beam_of)
        cand_seq = put(cand_seq.reshape(b * n, length), token.reshape(-1), loop.cur)
        flat_beam = (beam_of + jnp.arange(b)[:, None] * k).astype(jnp.int32)
        cand_beams = put(gather_beams(sub.running_beams, beam_of).reshape(b * n, -1),
                         flat_beam.reshape(-1), loop.new_tokens).reshape(b, n, -1)
        mask = put(loop.attention_mask, jnp.ones((rows,), jnp.int32), loop.cur)
        cand_mask = jnp.repeat(mask.reshape(b, k, length)[:, :1], n, axis=1)
        hits = eos_hit(knobs, token) | (loop.cur + 1 >= loop.max_len)
        if knobs.stopping:  # criteria see every candidate's sequence, as in transformers
            after = loop.context(cand_seq, cand_mask.reshape(b * n, length), loop.cur + 1)
            hits = hits | criteria_hit(knobs, after).reshape(b, n)
        cand_seq = cand_seq.reshape(b, n, length)

        # running beams for the next step: the best candidates that did not stop
        run_lp = top_lp + hits.astype(jnp.float32) * DEAD
        _, keep = jax.lax.top_k(run_lp, k)
        running_scores = gather_beams(run_lp, keep)
        running_beams = gather_beams(cand_beams, keep)
        hyps = self._finish(sub, loop, hits, top_lp, cand_seq, cand_beams)

        src = jax.lax.dynamic_index_in_dim(running_beams, loop.new_tokens, axis=2,
                                           keepdims=False).reshape(rows)
        improvable, stop = self._heuristic(loop, sub, running_scores, hyps, hits)
        cache, lanes = None, sub.lanes
        if lanes is not None:  # the first child keeps its parent's lane; forks copy
            parents = src.reshape(b, k) - k * jnp.arange(b, dtype=jnp.int32)[:, None]
            lanes, csrc, cdst, count = beam_lanes.assign(lanes, parents)
            cache = beam_lanes.copy_forks(loop.cache, csrc, cdst, count, loop.prompt_end)
        loop = loop.replace(sequences=gather_beams(cand_seq, keep).reshape(rows, length),
                            attention_mask=mask, position=loop.position + 1,
                            cur=loop.cur + 1, scores=scores,
                            **follow_beams(loop, src, pstate, wstate, cache))
        return DecodeState(loop=loop, sub=BeamSub(
            running_scores=running_scores, running_beams=running_beams, hyps=hyps,
            improvable=improvable, stop=stop, lanes=lanes))

    def _finish(self, sub: BeamSub, loop: LoopState, hits: Bool[Array, "B n"],
                top_lp: Float[Array, "B n"], cand_seq: Int[Array, "B n T"],
                cand_beams: Int[Array, "B n N"]) -> Hypotheses:
        """Candidates within the top K that stopped become finished hypotheses."""
        hyps = sub.hyps
        open_rows = sub.improvable
        if self.early_stopping is True:
            open_rows = open_rows & ~hyps.full()
        score = top_lp / ((loop.new_tokens + 1).astype(jnp.float32) ** loop.knobs.length_penalty)
        end = jnp.broadcast_to(loop.cur + 1, open_rows.shape)
        for r in range(self.num_beams):              # only the top K may finish
            hyps = hyps.add(hits[:, r] & open_rows, cand_seq[:, r], score[:, r], end,
                            cand_beams[:, r])
        return hyps

    def _heuristic(self, loop: LoopState, sub: BeamSub, running_scores: Float[Array, "B K"],
                   hyps: Hypotheses, hits: Bool[Array, "B n"]) -> tuple[Array, Array]:
        """transformers' ``_check_early_stop_heuristic`` and loop condition after a step."""
        lp = loop.knobs.length_penalty
        generated = (loop.new_tokens + 1).astype(jnp.float32)
        if self.early_stopping == "never":
            best_len = jnp.where(lp > 0.0, (loop.max_len - loop.prompt_end).astype(jnp.float32),
                                 generated)
        else:
            best_len = generated
        best_running = running_scores[:, 0] / best_len ** lp
        worst = jnp.where(hyps.full(), hyps.worst(), DEAD)
        improvable = sub.improvable & (best_running > worst)
        open_beams = ~(jnp.all(hyps.full()) & (self.early_stopping is True))
        stop = ~(jnp.any(improvable) & open_beams & ~jnp.all(hits))
        return improvable, stop

    def finalize(self, state: DecodeState, request: Request) -> GenerateOutput:
        """The best ``num_return_sequences`` hypotheses per row, cut to the longest of them;
        ``beam_indices`` padded with -1."""
        loop, hyps, cfg = state.loop, state.sub.hyps, request.config
        nrs = cfg.num_return_sequences
        best = ranked(hyps)[:, :nrs]                                      # [B, nrs]
        seqs = np.take_along_axis(host(hyps.sequences), best[:, :, None], axis=1)
        beams = np.take_along_axis(host(hyps.beams), best[:, :, None], axis=1)
        seqs, beams = seqs.reshape(-1, seqs.shape[-1]), beams.reshape(-1, beams.shape[-1])
        n_new = int((beams != -1).sum(axis=1).max())
        steps = int(host(loop.cur)) - loop.prompt_end
        out = GenerateOutput(sequences=seqs[:, request.start:loop.prompt_end + n_new],
                             beam_indices=beams[:, :n_new], **recorded(loop, request, steps))
        if cfg.output_scores:
            out.sequences_scores = np.take_along_axis(host(hyps.scores), best, 1).reshape(-1)
            out.scores = score_steps(loop.scores, steps)
        return out
