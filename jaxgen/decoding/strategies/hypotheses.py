"""Finished beam hypotheses, on device: one implementation for every beam strategy.

``N`` independent sets (batch rows, or batch rows x beam groups) of at most ``H``
hypotheses each. ``add`` follows transformers' rule: a candidate enters when its set is
not full or when it beats the worst kept score strictly; it then evicts the worst one.
Ties between kept hypotheses are broken by age: the oldest wins by default
(transformers 5's top-k merge), the newest with ``newest_first`` (4.x's
``BeamHypotheses`` list order). ``ranked`` gives the final order on the host.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxgen.decoding.output import GenerateOutput, host, score_steps
from jaxgen.decoding.protocol import recorded

EMPTY = -jnp.inf        # score of an unused slot


@struct.dataclass
class Hypotheses:
    """``N`` sets of ``H`` finished hypotheses (``T`` buffer slots, ``new`` new slots)."""

    sequences: Int[Array, "N H T"]     # the hypotheses' token buffers
    scores: Float[Array, "N H"]        # length-penalised scores (EMPTY: unused slot)
    length: Int[Array, "N H"]          # slot each hypothesis ends before
    beams: Int[Array, "N H new"] | None  # beam index chosen at each step (-1 padded)
    order: Int[Array, "N H"]           # insertion counter: ties are broken by age
    added: Int[Array, ""]              # insertions so far (the next order value)
    newest_first: bool = struct.field(pytree_node=False, default=False)

    @classmethod
    def empty(cls, n: int, h: int, t: int, new: int | None, *,
              newest_first: bool = False) -> Hypotheses:
        return cls(sequences=jnp.zeros((n, h, t), jnp.int32),
                   scores=jnp.full((n, h), EMPTY, jnp.float32),
                   length=jnp.zeros((n, h), jnp.int32),
                   beams=None if new is None else jnp.full((n, h, new), -1, jnp.int32),
                   order=jnp.zeros((n, h), jnp.int32), added=jnp.zeros((), jnp.int32),
                   newest_first=newest_first)

    def filled(self) -> Bool[Array, "N H"]:
        return self.scores > EMPTY

    def full(self) -> Bool[Array, " N"]:
        return jnp.all(self.filled(), axis=-1)

    def worst(self) -> Float[Array, " N"]:
        """The lowest kept score (+inf for an empty set)."""
        return jnp.min(jnp.where(self.filled(), self.scores, jnp.inf), axis=-1)

    def _slot(self) -> Int[Array, " N"]:
        """Where the next hypothesis goes: the first unused slot, else the worst one
        (the oldest of equal worst scores when ``newest_first``, else the newest)."""
        filled = self.filled()
        first_free = jnp.argmax(~filled, axis=-1)
        tied = filled & (self.scores == self.worst()[:, None])
        big = jnp.iinfo(jnp.int32).max
        if self.newest_first:
            victim = jnp.argmin(jnp.where(tied, self.order, big), axis=-1)
        else:
            victim = jnp.argmax(jnp.where(tied, self.order, -1), axis=-1)
        return jnp.where(jnp.all(filled, axis=-1), victim, first_free)

    def add(self, ok: Bool[Array, " N"], sequences: Int[Array, "N T"],
            score: Float[Array, " N"], length: Int[Array, " N"],
            beams: Int[Array, "N new"] | None = None) -> Hypotheses:
        """One candidate per set, entered where ``ok`` and good enough."""
        accept = ok & (~self.full() | (score > self.worst()))
        hot = (jnp.arange(self.scores.shape[1])[None, :] == self._slot()[:, None]) \
            & accept[:, None]                                        # [N, H]
        new_beams = self.beams
        if beams is not None:
            new_beams = jnp.where(hot[:, :, None], beams[:, None, :], self.beams)
        return self.replace(
            sequences=jnp.where(hot[:, :, None], sequences[:, None, :], self.sequences),
            scores=jnp.where(hot, score[:, None], self.scores),
            length=jnp.where(hot, length[:, None], self.length), beams=new_beams,
            order=jnp.where(hot, self.added, self.order), added=self.added + 1)

    def take(self, rows: Int[Array, " n"]) -> Hypotheses:
        """The sets ``rows`` (e.g. one beam group of every batch row)."""
        pick = lambda x: None if x is None else x[rows]  # noqa: E731
        return self.replace(sequences=pick(self.sequences), scores=pick(self.scores),
                            length=pick(self.length), beams=pick(self.beams),
                            order=pick(self.order))

    def put(self, rows: Int[Array, " n"], sub: Hypotheses) -> Hypotheses:
        """These sets with ``sub`` written back at ``rows`` (and its insertion counter)."""
        def put(x, y):
            return None if x is None else x.at[rows].set(y)
        return self.replace(sequences=put(self.sequences, sub.sequences),
                            scores=put(self.scores, sub.scores),
                            length=put(self.length, sub.length),
                            beams=put(self.beams, sub.beams), order=put(self.order, sub.order),
                            added=sub.added)


def ranked(hyps: Hypotheses, group_of: np.ndarray | None = None) -> np.ndarray:
    """Host side: per set, slot indices best first ``[N, H]`` (unused slots last).

    Ties: the older hypothesis first, or the newer with ``newest_first``; with
    ``group_of`` ([H] group of each slot) a later group first among equal scores
    (4.x's final sort over the groups' lists).
    """
    scores, order = host(hyps.scores), host(hyps.order)
    age = -order if hyps.newest_first else order
    keys = [age]
    if group_of is not None:
        keys.append(-np.broadcast_to(group_of, scores.shape))
    keys.append(-scores)
    return np.lexsort(keys, axis=-1)


def add_finished(hyps: Hypotheses, ok: Bool[Array, "N n"], seqs: Int[Array, "N K T"],
                 beam: Int[Array, "N n"], score: Float[Array, "N n"], generated: Any,
                 lp: Any, cur: Any, top: int) -> Hypotheses:
    """4.x's finished candidates: the ``top`` best-ranked ones where ``ok`` (an eos), their
    beam's sequence (without the eos), scored by ``score / generated ** lp``."""
    rows = jnp.arange(seqs.shape[0])
    for r in range(min(top, ok.shape[1])):
        hyps = hyps.add(ok[:, r], seqs[rows, beam[:, r]],
                        score[:, r] / jnp.asarray(generated, jnp.float32) ** lp,
                        jnp.broadcast_to(cur, rows.shape))
    return hyps


def first_live(is_eos: Bool[Array, "N n"], k: int) -> Int[Array, "N k"]:
    """The ranks of the first ``k`` candidates that are not an eos (4.x's running beams)."""
    live = ~is_eos
    rank = jnp.cumsum(live, axis=1) - 1
    pick = live[:, None, :] & (rank[:, None, :] == jnp.arange(k)[None, :, None])
    return jnp.argmax(pick, axis=-1)


def legacy_output(flat: Hypotheses, best: np.ndarray, loop: Any, request: Any
                  ) -> GenerateOutput:
    """4.x ``finalize``'s output: the ``best`` [B, n] hypotheses of each row's set, cut to
    the longest plus one (``eos[0]`` appended to the shorter ones, pad after), with the
    scores and recorded outputs."""
    cfg, t = request.config, flat.sequences.shape[-1]
    seqs = np.take_along_axis(host(flat.sequences), best[:, :, None], 1).reshape(-1, t)
    lengths = np.take_along_axis(host(flat.length), best, 1).reshape(-1) - request.start
    eos = list(cfg.eos_token_ids()) or [int(request.knobs.pad)]
    width = min(int(lengths.max()) + 1, request.max_len - request.start)
    fill = int(request.knobs.pad) if lengths.min() != lengths.max() else 0
    out = np.full((len(seqs), width), fill, np.int32)
    for i, n in enumerate(lengths):
        out[i, :n] = seqs[i, request.start:request.start + n]
        if n < width:
            out[i, n] = eos[0]
    steps = int(host(loop.cur)) - loop.prompt_end
    result = GenerateOutput(sequences=out, **recorded(loop, request, steps))
    if cfg.output_scores:
        result.sequences_scores = np.take_along_axis(host(flat.scores), best, 1).reshape(-1)
        result.scores = score_steps(loop.scores, steps)
    return result


def legacy_done(hyps: Hypotheses, best_sum: Float[Array, " B"], generated: Array,
                max_new: Array, lp: Array, early_stopping: Any) -> Bool[Array, " B"]:
    """4.x ``BeamHypotheses.is_done`` (``generated`` = cur_len - prompt length)."""
    if early_stopping is True:
        return hyps.full()
    length = jnp.where(lp > 0.0, max_new, generated) if early_stopping == "never" \
        else generated
    return hyps.full() & (hyps.worst() >= best_sum / length.astype(jnp.float32) ** lp)
