"""N-gram bans, bad words, sequence biases and OpenAI's logit bias.

Semantics and constructor arguments follow transformers 5.24 (``logits_process.py``);
``LogitBias`` follows OpenAI / vLLM. N-gram and sequence matches compare fixed-shape
windows of the token buffer (no Python loop over positions) and work with a per-row
``ctx.cur`` / ``ctx.start``. Token tables (bad words, biases, encoder ids) are padded
with -1 to power-of-two sizes, so changing them within a size does not recompile.

Buffer slots before ``ctx.start`` (bucket padding) never form n-grams or prefixes;
n-gram and sequence matching look at the caller's ids as transformers does, pad tokens
included.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxgen.ops import (
    NEG_INF,
    bias_row,
    bucket,
    check_int,
    eos_ids,
    ids_table,
    pad_ids,
    repeat_rows,
    row_take,
    token_mask,
)
from jaxgen.processors.base import Context, LogitsProcessor, pytree_dataclass

__all__ = ["EncoderNoRepeatNGram", "LogitBias", "NoBadWords", "NoRepeatNGram",
           "SequenceBias", "SequenceTable"]


# --- n-gram bans ------------------------------------------------------------------------

def _windows(seq: Int[Array, "batch length"], n: int) -> Int[Array, "batch windows n"]:
    """All length-``n`` windows: ``out[b, s, j] = seq[b, s + j]``."""
    w = seq.shape[1] - n + 1
    return jnp.stack([seq[:, j:j + w] for j in range(n)], axis=-1)


def _ban(logits: Array, hit: Bool[Array, "batch windows"],
         windows: Int[Array, "batch windows n"]) -> Array:
    """Ban the last token of every window with ``hit``."""
    banned = token_mask(jnp.where(hit, windows[..., -1], -1), logits.shape[-1])
    return jnp.where(banned, NEG_INF, logits)


@pytree_dataclass
class NoRepeatNGram(LogitsProcessor):
    """Forbid any n-gram of the caller's ids + generated tokens from occurring twice.

    The last ``ngram_size - 1`` tokens are compared with every window of the buffer
    (slots ``start .. cur - 1``; bucket padding never forms n-grams, the caller's pad
    tokens do, as in transformers) and each match bans the token that followed it.
    """

    ngram_size: int = struct.field(pytree_node=False)

    def __post_init__(self):
        check_int("NoRepeatNGram.ngram_size", self.ngram_size, 1, static=True)

    def __call__(self, logits, state, ctx):
        n = self.ngram_size
        if ctx.sequences.shape[1] < n:
            return logits, state
        windows = _windows(ctx.sequences, n)                    # [batch, W, n]
        s = jnp.arange(windows.shape[1])
        # whole window in start .. cur - 1: [W], or [batch, W] with per-row cursors
        hit = (s >= ctx.start_col) & (s <= ctx.cur_col - n)
        if n > 1:
            prefix = ctx.tail(n - 1)                            # [batch, n - 1]
            hit = hit & (windows[..., :-1] == prefix[:, None, :]).all(-1)
        return _ban(logits, jnp.broadcast_to(hit, windows.shape[:2]), windows), state


@pytree_dataclass
class EncoderNoRepeatNGram(LogitsProcessor):
    """Forbid n-grams of ``encoder_input_ids`` ``[batch, n]`` (ids < 0 are padding)."""

    encoder_ngram_size: int = struct.field(pytree_node=False)
    encoder_input_ids: Any

    def __post_init__(self):
        check_int("EncoderNoRepeatNGram.encoder_ngram_size", self.encoder_ngram_size, 1,
                  static=True)
        object.__setattr__(self, "encoder_input_ids", ids_table(
            self.encoder_input_ids, "EncoderNoRepeatNGram.encoder_input_ids"))

    def __call__(self, logits, state, ctx):
        n = self.encoder_ngram_size
        ids = repeat_rows(jnp.asarray(self.encoder_input_ids), logits.shape[0])
        if ids.shape[1] < n:
            return logits, state
        windows = _windows(ids, n)                              # [batch, W, n]
        hit = (windows >= 0).all(-1)
        if n > 1:
            prefix = ctx.tail(n - 1)
            hit = hit & (windows[..., :-1] == prefix[:, None, :]).all(-1) & (
                ctx.cur_len_col >= n - 1)
        return _ban(logits, hit, windows), state


# --- token and sequence biases ----------------------------------------------------------

@struct.dataclass
class SequenceTable:
    """Padded, static-shaped token sequences with one number each (bias or ban).

    single_ids / single_bias: [S1] one-token sequences (ids -1 = padding).
    prefixes: [S2, P] the other sequences without their last token, right-aligned,
        -1 = no token (wildcard); last / bias: [S2] their last token (-1 = padding).
    """

    single_ids: Int[Array, " s1"]
    single_bias: Float[Array, " s1"]
    prefixes: Int[Array, "s2 p"]
    last: Int[Array, " s2"]
    bias: Float[Array, " s2"]

    @classmethod
    def build(cls, items: dict[tuple[int, ...], float]) -> SequenceTable:
        singles = [(k[0], v) for k, v in items.items() if len(k) == 1]
        multis = [(k, v) for k, v in items.items() if len(k) > 1]
        s1 = bucket(len(singles), 4)
        single_bias = np.zeros((s1,), np.float32)
        single_bias[: len(singles)] = [v for _, v in singles]
        p = bucket(max(len(k) - 1 for k, _ in multis), 4) if multis else 0
        s2 = bucket(len(multis), 4) if multis else 0
        prefixes = np.full((s2, p), -1, np.int32)
        last = np.full((s2,), -1, np.int32)
        bias = np.zeros((s2,), np.float32)
        for i, (k, v) in enumerate(multis):
            prefixes[i, p - len(k) + 1:] = k[:-1]
            last[i], bias[i] = k[-1], v
        return cls(single_ids=pad_ids([k for k, _ in singles], s1), single_bias=single_bias,
                   prefixes=prefixes, last=last, bias=bias)

    def matches(self, ctx: Context) -> Bool[Array, "batch s2"]:
        """Which multi-token sequences have their prefix at the end of the row's tokens
        (slots ``start .. cur - 1``; a prefix longer than that never matches)."""
        p = self.prefixes.shape[1]
        slots = ctx.cur_col - p + jnp.arange(p)                 # [P], or [batch, P] per row
        tail = row_take(ctx.sequences, slots)                   # [batch, P]
        pre = self.prefixes[None]                               # [1, S2, P]
        live = (slots >= ctx.start_col)[..., None, :]           # [1 or batch, 1, P]
        ok = (pre < 0) | ((tail[:, None, :] == pre) & live)
        return ok.all(-1)

    def single_bias_row(self, vocab: int) -> Float[Array, " vocab"]:
        return bias_row(self.single_ids, self.single_bias, vocab)


def _check_ids(ids: Any, what: str) -> tuple[int, ...]:
    ids = tuple(ids)
    if not ids or any(not isinstance(i, (int, np.integer)) or isinstance(i, bool) or i < 0
                      for i in ids):
        raise ValueError(f"{what} must be non-empty sequences of non-negative ints, "
                         f"got {list(ids)!r}")
    return tuple(int(i) for i in ids)


def _sequence_items(sequence_bias: Any) -> dict[tuple[int, ...], float]:
    """transformers' two forms, ``{(ids...): bias}`` or ``[[[ids...], bias], ...]``."""
    what = "SequenceBias.sequence_bias"
    if isinstance(sequence_bias, dict):
        pairs = list(sequence_bias.items())
        if any(not isinstance(k, tuple) for k, _ in pairs):
            raise ValueError(f"{what} must be a dict with tuples as keys, got {sequence_bias!r}")
    elif isinstance(sequence_bias, list):
        if any(not isinstance(e, (list, tuple)) or len(e) != 2 or
               not isinstance(e[0], (list, tuple)) for e in sequence_bias):
            raise ValueError(f"{what} must be a list of [[ids...], bias] pairs, "
                             f"got {sequence_bias!r}")
        pairs = [(tuple(e[0]), e[1]) for e in sequence_bias]
    else:
        raise ValueError(f"{what} must be a dict or a list, got {type(sequence_bias).__name__}")
    if not pairs:
        raise ValueError(f"{what} must not be empty")
    out: dict[tuple[int, ...], float] = {}
    for k, v in pairs:
        if not isinstance(v, (int, float, np.number)) or isinstance(v, bool):
            raise ValueError(f"{what} biases must be floats, got {v!r}")
        out[_check_ids(k, what)] = float(v)           # later duplicates win, like a dict
    return out


@pytree_dataclass
class SequenceBias(LogitsProcessor):
    """Add a bias to the last token of each sequence when the tokens before it end the row.

    ``sequence_bias``: ``{(ids...): bias}`` or ``[[[ids...], bias], ...]``. One-token
    sequences are always biased. Prefixes match across the prompt / generation boundary.
    Ids >= the vocabulary size are ignored (transformers raises).
    """

    sequence_bias: Any

    def __post_init__(self):
        if isinstance(self.sequence_bias, (dict, list)) or self.sequence_bias is None:
            object.__setattr__(self, "sequence_bias",
                               SequenceTable.build(_sequence_items(self.sequence_bias)))

    def __call__(self, logits, state, ctx):
        t: SequenceTable = self.sequence_bias
        b, vocab = logits.shape
        bias = jnp.broadcast_to(t.single_bias_row(vocab), (b, vocab))
        if t.last.shape[0]:
            add = jnp.where(t.matches(ctx), t.bias[None, :], 0.0)      # [batch, S2]
            last = jnp.broadcast_to(jnp.where((t.last < 0) | (t.last >= vocab), vocab,
                                              t.last), add.shape)
            rows = jnp.arange(b)[:, None]
            bias = bias.at[rows, last].add(add, mode="drop")
        return logits + bias.astype(logits.dtype), state


@pytree_dataclass
class NoBadWords(LogitsProcessor):
    """Never complete any of ``bad_words_ids`` (lists of token ids).

    One-token bad words are always masked; a longer one bans its last token when the
    tokens before it end the row (across the prompt boundary too). Like transformers,
    one-token bad words equal to an ``eos_token_id`` are dropped (unlike transformers,
    an empty list after that is allowed).
    """

    bad_words_ids: Any
    eos_token_id: Any = None

    def __post_init__(self):
        words = self.bad_words_ids
        if isinstance(words, SequenceTable):
            return
        what = "NoBadWords.bad_words_ids"
        if not isinstance(words, list) or not words or any(
                not isinstance(w, list) for w in words):
            raise ValueError(f"{what} must be a non-empty list of lists of ids, got {words!r}")
        words = [_check_ids(w, what) for w in words]
        eos = eos_ids(self.eos_token_id, "NoBadWords.eos_token_id")
        words = [w for w in words if not (len(w) == 1 and w[0] in eos)]
        object.__setattr__(self, "bad_words_ids",
                           SequenceTable.build({w: NEG_INF for w in words}))
        object.__setattr__(self, "eos_token_id", pad_ids(eos))

    def __call__(self, logits, state, ctx):
        t: SequenceTable = self.bad_words_ids
        b, vocab = logits.shape
        ban = token_mask(t.single_ids[None, :], vocab)                 # [1, vocab]
        if t.last.shape[0]:
            last = jnp.where(t.matches(ctx), t.last[None, :], -1)      # [batch, S2]
            ban = ban | token_mask(last, vocab)
        return jnp.where(ban, NEG_INF, logits), state


@pytree_dataclass
class LogitBias(LogitsProcessor):
    """OpenAI's ``logit_bias``: ``{token_id: bias}`` added to every row (string keys, as
    in OpenAI JSON, are accepted). Ids >= the vocabulary size are ignored."""

    logit_bias: Any

    def __post_init__(self):
        lb = self.logit_bias
        if isinstance(lb, dict):
            items: dict[int, float] = {}
            for k, v in lb.items():
                try:
                    tok = int(k)
                except (TypeError, ValueError):
                    tok = -1
                if tok < 0 or isinstance(k, (bool, float)):
                    raise ValueError(f"LogitBias.logit_bias keys must be token ids >= 0, "
                                     f"got {k!r}")
                if not isinstance(v, (int, float, np.number)) or isinstance(v, bool):
                    raise ValueError(f"LogitBias.logit_bias values must be numbers, got {v!r}")
                items[tok] = float(v)
            ids = pad_ids(list(items))
            bias = np.zeros(ids.shape, np.float32)
            bias[: len(items)] = list(items.values())
            object.__setattr__(self, "logit_bias", (ids, bias))
        elif not isinstance(lb, tuple):
            raise ValueError("LogitBias.logit_bias must be a dict {token_id: bias}")

    def __call__(self, logits, state, ctx):
        ids, bias = self.logit_bias
        row = bias_row(jnp.asarray(ids), jnp.asarray(bias), logits.shape[-1])
        return logits + row.astype(logits.dtype)[None, :], state
