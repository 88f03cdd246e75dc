"""Stub models with known logits, so expected tokens are exact."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class StubCache:
    index: jnp.ndarray


@dataclasses.dataclass(frozen=True)
class TableLM:
    """Next-token logits = ``table[last_token] + pos_bias[position]``.

    params: {"table": [vocab, vocab], "pos_bias": [max_pos, vocab]}.
    """

    vocab_size: int

    def init_cache(self, batch: int, length: int) -> StubCache:
        return StubCache(index=jnp.zeros((), jnp.int32))

    def apply(self, params, tokens, positions, cache, mask):
        logits = params["table"][tokens] + params["pos_bias"][positions]
        return logits, cache.replace(index=cache.index + tokens.shape[1])

    def reorder_cache(self, cache: StubCache, rows) -> StubCache:
        return cache                      # the logits depend on the tokens only

    def rewind_cache(self, cache: StubCache, index) -> StubCache:
        return cache.replace(index=jnp.asarray(index, jnp.int32))


def table_params(table: np.ndarray, max_pos: int = 64, pos_bias: np.ndarray | None = None):
    v = table.shape[0]
    if pos_bias is None:
        pos_bias = np.zeros((max_pos, v), np.float32)
    return {"table": jnp.asarray(table, jnp.float32), "pos_bias": jnp.asarray(pos_bias)}


def chain_table(vocab: int, nxt: dict[int, int], default: int = 0,
                margin: float = 5.0) -> np.ndarray:
    """A table whose greedy successor of token t is ``nxt.get(t, default)``."""
    table = np.zeros((vocab, vocab), np.float32)
    for t in range(vocab):
        table[t, nxt.get(t, default)] = margin
    return table


def left_padded_prompts(seed: int = 0, lengths=(5, 9, 3), vocab: int = 97, low: int = 3):
    """Random prompts of the given lengths, left-padded with 0: (ids, mask) int64."""
    rs = np.random.RandomState(seed)
    width = max(lengths)
    ids = np.zeros((len(lengths), width), np.int64)
    mask = np.zeros_like(ids)
    for r, n in enumerate(lengths):
        ids[r, width - n:] = rs.randint(low, vocab, size=n)
        mask[r, width - n:] = 1
    return ids, mask
