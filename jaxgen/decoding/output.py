"""What ``generate`` returns (transformers' layout) and the one host sync that reads it."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass
class GenerateOutput:
    """What ``generate(..., return_dict_in_generate=True)`` returns (transformers layout).

    sequences: int32 [batch * num_return_sequences, prompt_len + new_len]
    scores: tuple of new_len arrays [batch * num_return_sequences, vocab] (processed
        scores) when ``output_scores=True``, else None.
    sequences_scores: [batch * num_return_sequences] (beam search, ``output_scores``).
    beam_indices: [batch * num_return_sequences, new_len], -1 padded (beam search).
    logits: tuple of new_len arrays [rows, vocab], the raw logits (``output_logits``).
    hidden_states: one tuple per step of num_layers + 1 arrays [rows, t, hidden]: the fed
        prompt at step 0, one position at each later step (``output_hidden_states``).
    attentions: the same per step, num_layers arrays [rows, heads, t, keys]
        (``output_attentions``). Beams: the running beams of each step, in the order they
        had then (as transformers; ``beam_indices`` traces the returned ones back).
    past_key_values: a `jaxgen.decoding.past.Past` (the cache and the tokens it holds):
        ``generate(input_ids=longer, past_key_values=out.past_key_values)`` prefills only
        the tokens it does not hold. None for beam strategies.
    speculative: statistics of speculative decoding (passes, accepted draft tokens).
    """

    sequences: np.ndarray
    scores: tuple[np.ndarray, ...] | None = None
    sequences_scores: np.ndarray | None = None
    beam_indices: np.ndarray | None = None
    logits: tuple[np.ndarray, ...] | None = None
    hidden_states: tuple[tuple[np.ndarray, ...], ...] | None = None
    attentions: tuple[tuple[np.ndarray, ...], ...] | None = None
    past_key_values: Any = None
    speculative: dict[str, Any] | None = None

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)

    @property
    def cache(self) -> Any:
        """transformers 5's name for ``past_key_values``."""
        return self.past_key_values


def host(x: Any) -> np.ndarray:
    """A (device) array as numpy on every process: every host-side read of decode state
    goes through here (the one sync of ``finalize``, the drivers' loop tests).

    An array spanning processes is gathered with JAX's multi-host utilities
    (``process_allgather``), a collective: every process must make the same calls in the
    same order. A fully replicated one (a loop flag) is read from a local copy.
    """
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def score_steps(scores: Any, steps: int) -> tuple[np.ndarray, ...] | None:
    """The ``[rows, new, vocab]`` scores buffer as transformers' tuple of ``steps`` arrays."""
    if scores is None:
        return None
    all_scores = host(scores)
    return tuple(all_scores[:, i] for i in range(steps))


def compute_transition_scores(sequences: Any, scores: Sequence[Any],
                              beam_indices: Any = None,
                              normalize_logits: bool = False) -> np.ndarray:
    """Per-token scores of the generated tokens, like transformers' method of that name.

    sequences: [rows, prompt + new]; scores: ``new`` arrays [batch * beams, vocab];
    beam_indices: [rows, new] (-1 padded) for beam outputs, None otherwise.
    Returns float32 [rows, new] (0 where ``beam_indices`` is -1).
    """
    seqs = np.asarray(sequences)
    stacked = np.stack([np.asarray(x, np.float32) for x in scores])   # [new, beams, vocab]
    steps, n_beams, vocab = stacked.shape
    if normalize_logits:
        stacked = np.asarray(jax.nn.log_softmax(stacked, axis=-1))
    if beam_indices is None:
        beam_indices = np.broadcast_to(np.arange(n_beams)[:, None], (n_beams, steps))
    beam_indices = np.asarray(beam_indices)
    pad = beam_indices < 0
    width = int((~pad).sum(-1).max())
    beam = np.where(pad, 0, beam_indices)[:, :width]
    tokens = seqs[:, seqs.shape[1] - width:]
    step = np.arange(width)[None, :]
    out = stacked[step, beam, tokens]
    return np.where(pad[:, :width], 0.0, out).astype(np.float32)
