"""Penalties and biases: repetition, presence/frequency, n-grams, bad words, biases.

Semantics and constructor arguments follow transformers 5.24 (``logits_process.py``);
``PresenceFrequencyPenalty`` and ``LogitBias`` follow OpenAI / vLLM.

Count-based penalties keep a per-row token-count state (``TokenCounts``): ``[batch, vocab]``
int32 counts built by scatter-add from the buffer and advanced by one scatter-add of
``ctx.last_tokens`` per step, never a ``[batch, length, vocab]`` one-hot. N-gram and
sequence matches compare fixed-shape windows of the token buffer (no Python loop over
positions). Token tables (bad words, biases, encoder ids) are padded with -1 to
power-of-two sizes, so changing them within a size does not recompile.

Buffer slots before ``ctx.start`` (bucket padding) never count as tokens. Slots with
``attention_mask == 0`` (left padding) are never penalised by the count-based penalties,
as transformers' ``generate`` does (it passes the padding lengths as
``prompt_ignore_length``); n-gram and sequence matching look at the caller's ids as
transformers does, pad tokens included.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxgen.processors.base import Context, LogitsProcessor, as_leaf, pad_ids

NEG_INF = -float("inf")


# --- small helpers ----------------------------------------------------------------------

def _pow2(n: int, least: int = 1) -> int:
    """The next power of two >= max(n, least)."""
    return max(least, 1 << max(0, int(n) - 1).bit_length())


def _is_host_array(x: Any) -> bool:
    """A value given by the user at construction (not a jax array, tracer or placeholder)."""
    return isinstance(x, (list, tuple, np.ndarray, np.number)) or \
        type(x).__module__.split(".")[0] == "torch"


def _ids_2d(x: Any, name: str) -> Any:
    """User token ids ``[batch, n]`` (or ``[n]``) as int32, columns padded with -1."""
    if not _is_host_array(x):
        return x
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be integer token ids [batch, n], got shape {arr.shape}")
    out = np.full((arr.shape[0], _pow2(arr.shape[1], 4)), -1, np.int32)
    out[:, : arr.shape[1]] = arr
    return out


def _eos_ids(eos_token_id: Any, name: str) -> list[int]:
    """Eos ids as a Python list (int, list, numpy or torch; -1 entries of an already
    padded numpy vector are padding)."""
    if eos_token_id is None:
        return []
    if isinstance(eos_token_id, np.ndarray):
        eos_token_id = eos_token_id[eos_token_id >= 0]
    ids = np.asarray(eos_token_id).reshape(-1).tolist()
    if any(not isinstance(i, int) or i < 0 for i in ids):
        raise ValueError(f"{name} must be non-negative ints, got {eos_token_id!r}")
    return ids


def _rows(x: Array, batch: int) -> Array:
    """Per-row values ``[n, ...]`` for ``batch`` rows: repeated when ``batch`` is a multiple
    of ``n`` (beams / return sequences, like transformers' ``repeat_interleave``)."""
    if x.ndim == 0 or x.shape[0] == batch:
        return x
    if batch % x.shape[0]:
        raise ValueError(f"per-row values for {x.shape[0]} rows cannot serve {batch} rows")
    return jnp.repeat(x, batch // x.shape[0], axis=0)


def token_mask(ids: Int[Array, "batch n"], vocab: int) -> Bool[Array, "batch vocab"]:
    """Per-row boolean mask of the ids in ``ids`` (ids < 0 or >= vocab are ignored)."""
    ids = jnp.where((ids < 0) | (ids >= vocab), vocab, ids)
    rows = jnp.arange(ids.shape[0])[:, None]
    return jnp.zeros((ids.shape[0], vocab), bool).at[rows, ids].set(True, mode="drop")


def _penalise(logits: Array, where: Array, penalty: Any) -> Array:
    """transformers' repetition rule: negative logits times ``penalty``, others divided."""
    hit = jnp.where(logits < 0, logits * penalty, logits / penalty)
    return jnp.where(where, hit, logits)


# --- token counts, shared by RepetitionPenalty and PresenceFrequencyPenalty --------------

@struct.dataclass
class TokenCounts:
    """Per-row token counts over the buffer slots from a first slot on (state).

    counts: [batch, vocab] int32, occurrences of each token in the counted slots.
        ``[batch, 0]`` until the first call when the vocabulary size is not known at
        ``init`` (the processor's ``vocab_size`` is None): the first call then counts
        the whole window at once.
    upto: [batch] int32, slots ``< upto`` are accounted for (counted, or before the row's
        first counted slot); the next update counts slots ``upto .. cur - 1``. Keeping it
        per row (not the prompt end as a scalar) keeps the leading-axis convention and
        makes the first step after the prompt count nothing twice.
    """

    counts: Int[Array, "batch vocab"]
    upto: Int[Array, " batch"]


def init_counts(ctx: Context, first_slot: Any, vocab: int | None) -> TokenCounts:
    """Counts of the tokens in slots ``first_slot .. ctx.cur - 1`` (``first_slot``: scalar
    or [batch]); slots with attention_mask 0 are skipped."""
    b = ctx.sequences.shape[0]
    upto = jnp.broadcast_to(_rows(jnp.asarray(first_slot, jnp.int32), b), (b,))
    state = TokenCounts(counts=jnp.zeros((b, vocab or 0), jnp.int32), upto=upto)
    return state if vocab is None else _count_window(state, ctx)


def update_counts(state: TokenCounts, ctx: Context, vocab: int) -> TokenCounts:
    """Add the tokens written since the last update (one scatter-add per step)."""
    if state.counts.shape[1] != vocab:
        if state.counts.shape[1]:
            raise ValueError(f"token counts for vocab {state.counts.shape[1]} used with "
                             f"logits of vocab {vocab} (check vocab_size)")
        state = state.replace(counts=jnp.zeros((state.counts.shape[0], vocab), jnp.int32))
    new = ctx.cur - state.upto                                  # [batch] slots to count
    return jax.lax.cond(jnp.all(new <= 1), _count_last, _count_window, state, ctx)


def _count_last(state: TokenCounts, ctx: Context) -> TokenCounts:
    """The decode loop's case: at most the slot ``cur - 1`` is new."""
    vocab = state.counts.shape[1]
    mask = jax.lax.dynamic_index_in_dim(ctx.attention_mask, ctx.cur - 1, 1, keepdims=False)
    tok = ctx.last_tokens
    ok = (ctx.cur - state.upto == 1) & (mask != 0) & (tok >= 0)
    rows = jnp.arange(tok.shape[0])
    counts = state.counts.at[rows, jnp.where(ok, tok, vocab)].add(1, mode="drop")
    return TokenCounts(counts=counts, upto=jnp.maximum(state.upto, ctx.cur))


def _count_window(state: TokenCounts, ctx: Context) -> TokenCounts:
    """Any case: a masked scatter-add of the slots ``upto .. cur - 1`` of the buffer."""
    vocab = state.counts.shape[1]
    seq = ctx.sequences
    slots = jnp.arange(seq.shape[1])[None, :]
    ok = (slots >= state.upto[:, None]) & (slots < ctx.cur) & (ctx.attention_mask != 0) & (
        seq >= 0)
    rows = jnp.arange(seq.shape[0])[:, None]
    counts = state.counts.at[rows, jnp.where(ok, seq, vocab)].add(1, mode="drop")
    return TokenCounts(counts=counts, upto=jnp.maximum(state.upto, ctx.cur))


# --- repetition penalties ---------------------------------------------------------------

@struct.dataclass
class RepetitionPenalty(LogitsProcessor):
    """Penalise every token already in the sequence, once (CTRL's rule).

    Seen tokens' logits are multiplied by ``penalty`` when negative and divided by it
    otherwise. The first ``prompt_ignore_length`` tokens of the caller's ``input_ids``
    (an int, or one per row) are not counted, nor is left padding (attention_mask 0).
    The state is a ``TokenCounts`` ``[batch, vocab]``; ``vocab_size`` (optional, not a
    transformers argument) lets ``init`` build it at its final shape.
    """

    penalty: Any
    prompt_ignore_length: Any = None
    vocab_size: int | None = struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        p = self.penalty
        if isinstance(p, (int, float)) and not (p > 0):
            raise ValueError(f"RepetitionPenalty.penalty must be a float > 0, got {p!r}")
        object.__setattr__(self, "penalty", as_leaf(p, jnp.float32))
        n = self.prompt_ignore_length
        if n is None:
            n = 0
        if isinstance(n, int) and n < 0:
            raise ValueError(f"RepetitionPenalty.prompt_ignore_length must be >= 0, got {n!r}")
        if _is_host_array(n):
            n = np.asarray(n)
            if n.ndim > 1:
                raise ValueError("RepetitionPenalty.prompt_ignore_length must be an int or "
                                 f"1-D (one per row), got shape {n.shape}")
        object.__setattr__(self, "prompt_ignore_length", as_leaf(n, jnp.int32))

    def init(self, ctx: Context) -> TokenCounts:
        return init_counts(ctx, ctx.start + jnp.asarray(self.prompt_ignore_length),
                           self.vocab_size)

    def __call__(self, logits: Float[Array, "batch vocab"], state: TokenCounts,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], TokenCounts]:
        state = update_counts(state, ctx, logits.shape[-1])
        return _penalise(logits, state.counts > 0, self.penalty), state


@struct.dataclass
class PresenceFrequencyPenalty(LogitsProcessor):
    """OpenAI / vLLM penalties over the GENERATED tokens (the prompt is not counted)::

        logits[t] -= frequency_penalty * count[t] + presence_penalty * (count[t] > 0)

    Both in [-2, 2] (as OpenAI and vLLM); 0 disables. State: ``TokenCounts``.
    """

    presence_penalty: Any = 0.0
    frequency_penalty: Any = 0.0
    vocab_size: int | None = struct.field(pytree_node=False, default=None)

    def __post_init__(self):
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if isinstance(v, (int, float)) and not (-2.0 <= v <= 2.0):
                raise ValueError(f"PresenceFrequencyPenalty.{name} must be in [-2, 2], "
                                 f"got {v!r}")
            object.__setattr__(self, name, as_leaf(v, jnp.float32))

    def init(self, ctx: Context) -> TokenCounts:
        return init_counts(ctx, ctx.cur, self.vocab_size)       # nothing generated yet

    def __call__(self, logits: Float[Array, "batch vocab"], state: TokenCounts,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], TokenCounts]:
        state = update_counts(state, ctx, logits.shape[-1])
        counts = state.counts
        hit = logits - self.frequency_penalty * counts.astype(logits.dtype) - self.presence_penalty
        return jnp.where(counts > 0, hit, logits), state    # one fused pass over the vocab


@struct.dataclass
class EncoderRepetitionPenalty(LogitsProcessor):
    """The inverse rule on the tokens of ``encoder_input_ids`` ``[batch, n]``: a penalty
    above 1 makes them MORE likely (hallucination penalty). Ids < 0 are padding."""

    penalty: Any
    encoder_input_ids: Any

    def __post_init__(self):
        p = self.penalty
        if isinstance(p, (int, float)) and not (p > 0):
            raise ValueError(f"EncoderRepetitionPenalty.penalty must be a float > 0, got {p!r}")
        object.__setattr__(self, "penalty", as_leaf(p, jnp.float32))
        object.__setattr__(self, "encoder_input_ids", _ids_2d(
            self.encoder_input_ids, "EncoderRepetitionPenalty.encoder_input_ids"))

    def __call__(self, logits, state, ctx):
        ids = _rows(jnp.asarray(self.encoder_input_ids), logits.shape[0])
        seen = token_mask(ids, logits.shape[-1])
        return _penalise(logits, seen, 1.0 / self.penalty), state


# --- n-gram bans ------------------------------------------------------------------------

def _windows(seq: Int[Array, "batch length"], n: int) -> Int[Array, "batch windows n"]:
    """All length-``n`` windows: ``out[b, s, j] = seq[b, s + j]``."""
    w = seq.shape[1] - n + 1
    return jnp.stack([seq[:, j:j + w] for j in range(n)], axis=-1)


def _tail(ctx: Context, n: int) -> Int[Array, "batch n"]:
    """The tokens of slots ``cur - n .. cur - 1`` (clamped at slot 0; a buffer shorter than
    ``n`` is padded on the left with -1, which matches no token)."""
    seq, cur = ctx.sequences, ctx.cur
    if seq.shape[1] < n:
        extra = n - seq.shape[1]
        seq, cur = jnp.pad(seq, ((0, 0), (extra, 0)), constant_values=-1), cur + extra
    return jax.lax.dynamic_slice_in_dim(seq, jnp.maximum(cur - n, 0), n, axis=1)


def _ban(logits: Array, hit: Bool[Array, "batch windows"],
         windows: Int[Array, "batch windows n"]) -> Array:
    """Ban the last token of every window with ``hit``."""
    banned = token_mask(jnp.where(hit, windows[..., -1], -1), logits.shape[-1])
    return jnp.where(banned, NEG_INF, logits)


@struct.dataclass
class NoRepeatNGram(LogitsProcessor):
    """Forbid any n-gram of the caller's ids + generated tokens from occurring twice.

    The last ``ngram_size - 1`` tokens are compared with every window of the buffer
    (slots ``start .. cur - 1``; bucket padding never forms n-grams, the caller's pad
    tokens do, as in transformers) and each match bans the token that followed it.
    """

    ngram_size: int = struct.field(pytree_node=False)

    def __post_init__(self):
        n = self.ngram_size
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ValueError(f"NoRepeatNGram.ngram_size must be an int > 0, got {n!r}")

    def __call__(self, logits, state, ctx):
        n = self.ngram_size
        if ctx.sequences.shape[1] < n:
            return logits, state
        windows = _windows(ctx.sequences, n)                    # [batch, W, n]
        s = jnp.arange(windows.shape[1])
        hit = (s >= ctx.start) & (s <= ctx.cur - n)             # whole window in start..cur-1
        if n > 1:
            prefix = _tail(ctx, n - 1)                          # [batch, n - 1]
            hit = hit & (windows[..., :-1] == prefix[:, None, :]).all(-1)
        return _ban(logits, jnp.broadcast_to(hit, windows.shape[:2]), windows), state


@struct.dataclass
class EncoderNoRepeatNGram(LogitsProcessor):
    """Forbid n-grams of ``encoder_input_ids`` ``[batch, n]`` (ids < 0 are padding)."""

    encoder_ngram_size: int = struct.field(pytree_node=False)
    encoder_input_ids: Any

    def __post_init__(self):
        n = self.encoder_ngram_size
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise ValueError(f"EncoderNoRepeatNGram.encoder_ngram_size must be an int > 0, "
                             f"got {n!r}")
        object.__setattr__(self, "encoder_input_ids", _ids_2d(
            self.encoder_input_ids, "EncoderNoRepeatNGram.encoder_input_ids"))

    def __call__(self, logits, state, ctx):
        n = self.encoder_ngram_size
        ids = _rows(jnp.asarray(self.encoder_input_ids), logits.shape[0])
        if ids.shape[1] < n:
            return logits, state
        windows = _windows(ids, n)                              # [batch, W, n]
        hit = (windows >= 0).all(-1)
        if n > 1:
            prefix = _tail(ctx, n - 1)
            hit = hit & (windows[..., :-1] == prefix[:, None, :]).all(-1) & (
                ctx.cur_len >= n - 1)
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
        s1 = _pow2(len(singles), 4)
        single_bias = np.zeros((s1,), np.float32)
        single_bias[: len(singles)] = [v for _, v in singles]
        p = _pow2(max((len(k) - 1 for k, _ in multis), default=0), 4) if multis else 0
        s2 = _pow2(len(multis), 4) if multis else 0
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
        s2, p = self.prefixes.shape
        slots = ctx.cur - p + jnp.arange(p)                             # [P]
        tail = jnp.take(ctx.sequences, jnp.clip(slots, 0, ctx.sequences.shape[1] - 1),
                        axis=1)                                         # [batch, P]
        pre = self.prefixes[None]                                       # [1, S2, P]
        ok = (pre < 0) | ((tail[:, None, :] == pre) & (slots >= ctx.start))
        return ok.all(-1)

    def single_bias_row(self, vocab: int) -> Float[Array, " vocab"]:
        ids = jnp.where((self.single_ids < 0) | (self.single_ids >= vocab), vocab,
                        self.single_ids)
        return jnp.zeros((vocab,), jnp.float32).at[ids].add(self.single_bias, mode="drop")


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


@struct.dataclass
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


@struct.dataclass
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
        eos = _eos_ids(self.eos_token_id, "NoBadWords.eos_token_id")
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


@struct.dataclass
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
        vocab = logits.shape[-1]
        ids = jnp.where((ids < 0) | (ids >= vocab), vocab, ids)
        row = jnp.zeros((vocab,), jnp.float32).at[ids].add(bias, mode="drop")
        return logits + row.astype(logits.dtype)[None, :], state


# --- length ------------------------------------------------------------------------------

@struct.dataclass
class ExponentialDecayLengthPenalty(LogitsProcessor):
    """After ``start_index`` new tokens, raise the eos logits exponentially:
    ``eos += |eos| * (decay_factor ** (cur_len - start) - 1)`` with
    ``start = start_index + input_ids_seq_length`` and
    ``exponential_decay_length_penalty = (start_index, decay_factor)``."""

    exponential_decay_length_penalty: Any
    eos_token_id: Any
    input_ids_seq_length: Any

    def __post_init__(self):
        pen = self.exponential_decay_length_penalty
        if isinstance(pen, (tuple, list)) and len(pen) == 2 and _is_host_array(pen) and all(
                isinstance(v, (int, float, np.number)) for v in pen):
            object.__setattr__(self, "exponential_decay_length_penalty",
                               (as_leaf(pen[0], jnp.int32), as_leaf(pen[1], jnp.float32)))
        elif not isinstance(pen, tuple) or len(pen) != 2:
            raise ValueError("ExponentialDecayLengthPenalty.exponential_decay_length_penalty "
                             f"must be (start_index, decay_factor), got {pen!r}")
        eos = self.eos_token_id
        if eos is None or _is_host_array(eos) or isinstance(eos, int):
            ids = _eos_ids(eos, "ExponentialDecayLengthPenalty.eos_token_id")
            if not ids:
                raise ValueError("ExponentialDecayLengthPenalty.eos_token_id is required")
            object.__setattr__(self, "eos_token_id", pad_ids(ids))
        n = self.input_ids_seq_length
        if isinstance(n, int) and n < 0:
            raise ValueError("ExponentialDecayLengthPenalty.input_ids_seq_length must be "
                             f">= 0, got {n!r}")
        object.__setattr__(self, "input_ids_seq_length", as_leaf(n, jnp.int32))

    def __call__(self, logits, state, ctx):
        start_index, factor = self.exponential_decay_length_penalty
        idx = ctx.cur_len - (start_index + self.input_ids_seq_length)
        scale = jnp.power(factor, idx.astype(jnp.float32)) - 1.0
        eos = token_mask(jnp.asarray(self.eos_token_id)[None, :], logits.shape[-1])
        hit = eos & (idx > 0) & jnp.isfinite(logits)
        return jnp.where(hit, logits + jnp.abs(logits) * scale, logits), state
