"""Diverse (group) beam search: transformers 4.x ``_group_beam_search`` semantics.

``K = num_beams`` beams per batch row are split into ``G = num_beam_groups`` groups of
``S = K // G``. Each step the groups are searched one after the other; group ``g``'s
log-probabilities are lowered by ``diversity_penalty`` times how often each token was
chosen by groups ``0 .. g-1`` of the same row at this step (Hamming diversity). Every
(row, group) keeps its own ``S`` finished hypotheses like 4.x's ``BeamHypotheses``
(``Hypotheses`` with ``newest_first``; eos tokens are not stored, the final sequences get
``eos_token_id[0]`` appended when shorter than the longest) and is done by 4.x's
``is_done`` rule. ``finalize`` adds the open beams of unfinished groups on device, then
picks the best hypotheses across groups with 4.x's ordering.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool, Float

from jaxgen.decoding.kernel import eos_hit, feed, process, put, record
from jaxgen.decoding.output import GenerateOutput
from jaxgen.decoding.protocol import Request, Strategy
from jaxgen.decoding.record import FLAGS
from jaxgen.decoding.state import DecodeState, LoopState
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
class GroupSub:
    """Group beam search's own state (``B`` rows, ``G`` groups of ``S`` beams)."""

    beam_scores: Float[Array, "B K"]   # running summed log-probs
    hyps: Hypotheses                   # B*G sets (row b, group g at b*G + g) of S each
    done: Bool[Array, "B G"]           # 4.x ``is_done`` per (row, group)


@dataclasses.dataclass(frozen=True, kw_only=True)
class GroupBeamSearch(Strategy):
    """``num_beams`` beams in ``num_beam_groups`` groups (no sampling)."""

    num_beams: int
    num_groups: int
    n_eos: int = 0             # number of eos ids (the candidate count per group)
    early_stopping: Any = False
    streamable: ClassVar[bool] = False
    outputs: ClassVar[frozenset[str]] = frozenset(FLAGS)
    time_up = BeamSearch.time_up

    def rows_per_prompt(self, config: Any) -> int:
        return self.num_beams

    def check(self, request: Request) -> None:
        if request.knobs.stopping:
            raise ValueError("stopping_criteria / stop_strings are not supported with "
                             "num_beam_groups > 1 (diverse beam search); allowed: None")

    @property
    def group_size(self) -> int:
        return self.num_beams // self.num_groups

    def init(self, model: Any, params: Any, first_logits: Any, loop: LoopState,
             aux: Any) -> DecodeState:
        rows, length = loop.sequences.shape
        b, s = rows // self.num_beams, self.group_size
        sub = GroupSub(
            beam_scores=jnp.full((b, self.num_beams), DEAD, jnp.float32).at[:, ::s].set(0.0),
            hyps=Hypotheses.empty(b * self.num_groups, s, length, None, newest_first=True),
            done=jnp.zeros((b, self.num_groups), bool))
        return self._choose(DecodeState(loop=loop, sub=sub), first_logits)

    def step(self, model: Any, params: Any, state: DecodeState) -> DecodeState:
        logits, loop, _ = feed(params, state.loop)
        return self._choose(state.replace(loop=loop), logits)

    def running(self, state: DecodeState) -> Bool[Array, ""]:
        return (state.loop.cur < state.loop.max_len) & ~jnp.all(state.sub.done)

    def _group(self, loop: LoopState, sub: GroupSub, g: int, lp_g: Array,
               hyps: Hypotheses) -> tuple[Any, ...]:
        """Search group ``g``: its finished hypotheses, next tokens, scores and sources."""
        b, s = lp_g.shape[0], self.group_size
        vocab, lo = lp_g.shape[-1], g * s
        n_keep = max(2, 1 + self.n_eos) * s
        acc = (lp_g + sub.beam_scores[:, lo:lo + s, None]).reshape(b, s * vocab)
        top_lp, idx = jax.lax.top_k(acc, n_keep)                       # [B, n_keep]
        beam_in, tok = (idx // vocab).astype(jnp.int32), (idx % vocab).astype(jnp.int32)
        is_eos = eos_hit(loop.knobs, tok)
        # finished hypotheses: eos candidates ranked within the group size
        rows_b = jnp.arange(b)
        seqs = loop.sequences.reshape(b, self.num_beams, -1)
        generated = loop.new_tokens + 1          # 4.x: cur_len (after this token) - prompt
        lp = loop.knobs.length_penalty
        group_rows = rows_b * self.num_groups + g
        hg = hyps.take(group_rows)
        hg = add_finished(hg, is_eos & ~sub.done[:, g:g + 1], seqs, lo + beam_in, top_lp,
                          generated, lp, loop.cur, s)
        r_of = first_live(is_eos, s)     # running beams: the first S non-eos candidates
        g_tok, g_score, g_src = (jnp.take_along_axis(x, r_of, axis=1)
                                 for x in (tok, top_lp, beam_in))
        was_done = sub.done[:, g:g + 1]
        g_tok = jnp.where(was_done, loop.knobs.pad, g_tok)
        g_score = jnp.where(was_done, 0.0, g_score)
        g_src = jnp.where(was_done, lo + jnp.arange(s)[None, :], lo + g_src)
        now_done = legacy_done(hg, top_lp[:, 0], generated, loop.max_len - loop.prompt_end, lp,
                            self.early_stopping)
        return hyps.put(group_rows, hg), g_tok, g_score, g_src, now_done

    def _choose(self, state: DecodeState, logits: Float[Array, "rows vocab"]) -> DecodeState:
        loop, sub, knobs = state.loop, state.sub, state.loop.knobs
        rows, vocab = logits.shape
        b, s = rows // self.num_beams, self.group_size
        pstate, wstate = loop.proc_state
        log_probs, pstate = process(knobs, jax.nn.log_softmax(logits.astype(jnp.float32)),
                                    pstate, loop.context())
        log_probs = log_probs.reshape(b, self.num_beams, vocab)
        hyps, done = sub.hyps, sub.done
        tokens, scores, src, processed = [], [], [], []
        for g in range(self.num_groups):
            lp_g = log_probs[:, g * s:(g + 1) * s]                          # [B, S, V]
            if g > 0:
                seen = jax.nn.one_hot(jnp.concatenate(tokens, 1), vocab,
                                      dtype=jnp.float32).sum(1)
                lp_g = lp_g - knobs.diversity_penalty * seen[:, None, :]
            processed.append(lp_g)
            hyps, g_tok, g_score, g_src, now_done = self._group(loop, sub, g, lp_g, hyps)
            done = done.at[:, g].set(done[:, g] | now_done)
            tokens.append(g_tok)
            scores.append(g_score)
            src.append(g_src)
        tokens, src = jnp.concatenate(tokens, 1), jnp.concatenate(src, 1)       # [B, K]
        length = loop.sequences.shape[1]
        new_seq = jnp.take_along_axis(loop.sequences.reshape(b, self.num_beams, length),
                                      src[:, :, None], axis=1).reshape(rows, length)
        flat_src = (src + jnp.arange(b)[:, None] * self.num_beams).reshape(rows)
        step_scores = jnp.concatenate(processed, axis=1).reshape(rows, vocab)
        loop = loop.replace(
            sequences=put(new_seq, tokens.reshape(rows), loop.cur),
            attention_mask=put(loop.attention_mask, jnp.ones((rows,), jnp.int32), loop.cur),
            position=loop.position + 1, cur=loop.cur + 1,
            scores=record(loop.scores, step_scores, loop.new_tokens),
            **follow_beams(loop, flat_src, pstate, wstate))
        return DecodeState(loop=loop, sub=GroupSub(
            beam_scores=jnp.concatenate(scores, 1), hyps=hyps, done=done))

    def finalize(self, state: DecodeState, request: Request) -> GenerateOutput:
        """4.x ``BeamSearchScorer.finalize``: open beams of unfinished groups join their
        hypotheses, the best ``num_return_sequences`` per row win, ``eos[0]`` is appended
        to the shorter ones."""
        cfg, loop = request.config, state.loop
        hyps = _add_open_beams(state, self.group_size)
        g_n, s = self.num_groups, self.group_size
        n_sets, _, t = hyps.sequences.shape
        b = n_sets // g_n
        # [B*G, S, ...] -> [B, G*S, ...]: every row's hypotheses across its groups
        flat = hyps.replace(sequences=hyps.sequences.reshape(b, g_n * s, t),
                            scores=hyps.scores.reshape(b, -1), order=hyps.order.reshape(b, -1),
                            length=hyps.length.reshape(b, -1))
        best = ranked(flat, group_of=np.repeat(np.arange(g_n), s))[:, :cfg.num_return_sequences]
        return legacy_output(flat, best, loop, request)


@partial(jax.jit, static_argnums=1)
def _add_open_beams(state: DecodeState, group_size: int) -> Hypotheses:
    """The running beams of every unfinished (row, group) added to its hypotheses."""
    loop, sub = state.loop, state.sub
    hyps = sub.hyps
    n_sets, t = hyps.scores.shape[0], loop.sequences.shape[1]
    seqs = loop.sequences.reshape(n_sets, group_size, t)
    beam_scores = sub.beam_scores.reshape(n_sets, group_size)
    open_sets = ~sub.done.reshape(n_sets)
    generated = (loop.new_tokens).astype(jnp.float32)
    for j in range(group_size):
        hyps = hyps.add(open_sets, seqs[:, j],
                        beam_scores[:, j] / generated ** loop.knobs.length_penalty,
                        jnp.broadcast_to(loop.cur, (n_sets,)))
    return hyps
