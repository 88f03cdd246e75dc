"""Stopping criteria: pytrees that return a per-row "done" mask, inside the jitted loop.

A criterion is called after a token is written, with the step ``Context`` (``ctx.cur`` is
the slot after the new token; a scalar, or one per row)::

    done = criterion(ctx)          # bool [rows]

Criteria are ``pytree_dataclass`` pytrees: arguments are checked once, at construction.

``MaxTime`` is the exception: it is checked by the host driver between chunks of steps
(``generate`` then runs the loop in chunks), never inside the loop.

Merged with the defaults like transformers: a criterion of a built-in type replaces the
default one (``MaxLength`` sets the length limit, ``EosToken`` the eos set, ``MaxTime``
the time limit, ``StopStrings`` the stop strings); any other criterion is added.

    from jaxgen import stopping as S
    S.MaxNewTokens(50); S.EosToken([2, 7]); S.StopStrings(["\\n\\n"], tokenizer=tok)
    S.MaxTime(2.0); S.criterion(lambda ctx: ctx.last_tokens == 13)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool

from jaxgen.ops import check_int, eos_ids, pad_ids, row_take, set_leaves
from jaxgen.processors.base import Context, pytree_dataclass


class StoppingCriterion:
    """Base class: ``__call__(ctx) -> bool [rows]`` (True = the row is done)."""

    def __call__(self, ctx: Context) -> Bool[Array, " rows"]:
        raise NotImplementedError


@pytree_dataclass
class Lambda(StoppingCriterion):
    """A criterion from a jittable ``fn(ctx) -> bool [rows]`` (see ``criterion``)."""

    fn: Callable[[Context], Any] = struct.field(pytree_node=False)

    def __call__(self, ctx):
        return jnp.broadcast_to(jnp.asarray(self.fn(ctx), bool), ctx.sequences.shape[:1])


def criterion(fn: Callable[[Context], Any]) -> Lambda:
    """Lift a jittable ``fn(ctx) -> bool [rows]`` into a stopping criterion."""
    if not callable(fn):
        raise TypeError(f"criterion(fn): fn must be callable, got {type(fn).__name__}")
    return Lambda(fn)


@pytree_dataclass
class MaxLength(StoppingCriterion):
    """Done once the sequence (prompt included) has ``max_length`` tokens."""

    max_length: Any

    def __post_init__(self):
        check_int("MaxLength.max_length", self.max_length, 1)
        set_leaves(self, jnp.int32, "max_length")

    def __call__(self, ctx):
        return jnp.broadcast_to(ctx.cur_len >= self.max_length, ctx.sequences.shape[:1])


@pytree_dataclass
class MaxNewTokens(StoppingCriterion):
    """Done after ``max_new_tokens`` generated tokens (``generate`` turns it into its
    length limit; used directly it needs ``start_length``, the prompt width)."""

    max_new_tokens: Any
    start_length: Any = None

    def __post_init__(self):
        check_int("MaxNewTokens.max_new_tokens", self.max_new_tokens, 1)
        set_leaves(self, jnp.int32, "max_new_tokens")
        if self.start_length is not None:
            check_int("MaxNewTokens.start_length", self.start_length)
            set_leaves(self, jnp.int32, "start_length")

    def __call__(self, ctx):
        if self.start_length is None:
            raise ValueError("MaxNewTokens.start_length is needed outside generate()")
        done = ctx.cur_len >= self.start_length + self.max_new_tokens
        return jnp.broadcast_to(done, ctx.sequences.shape[:1])


@pytree_dataclass
class EosToken(StoppingCriterion):
    """Done when the newest token is one of ``eos_token_id`` (an int or a list)."""

    eos_token_id: Any

    def __post_init__(self):
        ids = self.eos_token_id
        if isinstance(ids, (int, np.integer, list, tuple, np.ndarray)):
            parsed = eos_ids(ids, "EosToken.eos_token_id")
            if not parsed:
                raise ValueError(f"EosToken.eos_token_id must be token ids >= 0, got {ids!r}")
            object.__setattr__(self, "eos_token_id", pad_ids(parsed))

    def __call__(self, ctx):
        last = ctx.last_tokens
        return (last[:, None] == jnp.asarray(self.eos_token_id)[None, :]).any(-1)


@dataclasses.dataclass(frozen=True)
class MaxTime:
    """Stop every row once ``max_time`` seconds have passed since generation started.

    Host side: ``generate`` runs the loop in chunks and checks the clock between them, so
    the limit is honoured to within one chunk of steps (``chunk`` tokens, default 8).
    """

    max_time: float
    chunk: int = 8

    def __post_init__(self):
        t = self.max_time
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ValueError(f"MaxTime.max_time must be a number of seconds > 0, got {t!r}")
        if isinstance(self.chunk, bool) or not isinstance(self.chunk, int) or self.chunk < 1:
            raise ValueError(f"MaxTime.chunk must be an int >= 1, got {self.chunk!r}")


# --- stop strings -------------------------------------------------------------------------

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte <-> printable character table of byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def token_bytes(tokenizer: Any) -> list[bytes]:
    """The text each token id yields, as UTF-8 bytes (a byte-level token may hold part of a
    character). Works with a jaxgen ``Tokenizer`` or a ``tokenizers.Tokenizer``."""
    backend = getattr(tokenizer, "backend", tokenizer)
    vocab = backend.get_vocab(with_added_tokens=True)
    out = [b""] * (max(vocab.values()) + 1)
    decoder = backend.decoder
    byte_level = decoder is not None and "ByteLevel" in repr(decoder)
    byte_of = {c: b for b, c in _bytes_to_unicode().items()}
    prefix = "abcdef"
    base = backend.encode(prefix, add_special_tokens=False).ids
    for token, idx in vocab.items():
        if byte_level and all(ch in byte_of for ch in token):
            out[idx] = bytes(byte_of[ch] for ch in token)
            continue
        text = backend.decode(base + [idx], skip_special_tokens=False)
        out[idx] = text[text.index(prefix) + len(prefix):].encode("utf-8") if prefix in text \
            else backend.decode([idx], skip_special_tokens=False).encode("utf-8")
    return out


def StopStrings(stop_strings: str | Sequence[str], tokenizer: Any) -> StopStringMatcher:  # noqa: N802
    """A stop-string criterion (transformers' ``StopStringCriteria``); see
    ``StopStringMatcher``. ``tokenizer``: a jaxgen ``Tokenizer`` or ``tokenizers.Tokenizer``."""
    return StopStringMatcher.create(stop_strings, tokenizer)


@pytree_dataclass
class StopStringMatcher(StoppingCriterion):
    """Done when a stop string appears in the text and overlaps the newest token.

    transformers' ``StopStringCriteria`` semantics: a stop string may start or end inside a
    token; it triggers only when its last character lies within the newest token's text.
    Matching runs on the bytes each token yields (precomputed per token), over the last
    ``window`` tokens of the buffer; padding (attention mask 0) yields no text.

    Build with ``StopStrings(stop_strings, tokenizer=tok)``; ``window`` = the longest stop
    string in bytes + 1 tokens, enough since every token yields at least one byte.
    ``targets`` may also hold one set of strings per row (``[rows, n, L]``, lengths
    ``[rows, n]``, length 0 = no string), as the continuous-batching engine does.
    """

    table: Any                      # [vocab, max_token_bytes] uint8 bytes, right-padded
    lengths: Any                    # [vocab] int32 byte length of each token
    targets: Any                    # [(rows,) n_strings, max_string_bytes] reversed strings
    target_lengths: Any             # [(rows,) n_strings]
    window: int = struct.field(pytree_node=False, default=1)
    stop_strings: tuple[str, ...] = struct.field(pytree_node=False, default=())

    @classmethod
    def create(cls, stop_strings: str | Sequence[str], tokenizer: Any) -> StopStringMatcher:
        strings = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings)
        if not strings or any(not isinstance(s, str) or not s for s in strings):
            raise ValueError(f"stop_strings must be non-empty strings, got {stop_strings!r}")
        if tokenizer is None:
            raise ValueError("stop_strings needs the model's tokenizer: pass tokenizer=...")
        toks = token_bytes(tokenizer)
        width = max(1, max(len(t) for t in toks))
        table = np.zeros((len(toks), width), np.uint8)
        for i, t in enumerate(toks):
            table[i, :len(t)] = np.frombuffer(t, np.uint8)
        targets, target_lengths = stop_targets(strings)
        # a match covers at most len(string) tokens plus the newest one
        return cls(table=table, lengths=np.asarray([len(t) for t in toks], np.int32),
                   targets=targets, target_lengths=target_lengths,
                   window=targets.shape[1] + 1, stop_strings=tuple(strings))

    def __call__(self, ctx):
        w, width = self.window, self.table.shape[1]
        rows = ctx.rows
        # slots cur - w .. cur - 1 exactly (not clamped: the newest token stays last);
        # slots before 0 (cur < w) and padding hold no text
        slots = jnp.broadcast_to(ctx.cur_col - w + jnp.arange(w), (rows, w))
        ids = row_take(ctx.sequences, slots)                                    # [rows, w]
        live = (slots >= 0) & (row_take(ctx.attention_mask, slots) > 0)
        ids = jnp.clip(ids, 0, self.table.shape[0] - 1)
        lens = jnp.where(live, jnp.asarray(self.lengths)[ids], 0)[:, ::-1]      # newest first
        data = jnp.asarray(self.table)[ids][:, ::-1]                            # [rows, w, width]
        # reversed text of the window: token j (0 = newest) reversed at [off_j, off_j + len_j)
        off = jnp.cumsum(lens, axis=1) - lens
        size = w * width
        pos = off[:, :, None] + (lens[:, :, None] - 1 - jnp.arange(width)[None, None, :])
        valid = jnp.arange(width)[None, None, :] < lens[:, :, None]
        pos = jnp.where(valid, pos, size)                                       # dropped
        rev = jnp.full((rows, size + 1), -1, jnp.int32)
        rev = rev.at[jnp.arange(rows)[:, None, None], pos].set(data.astype(jnp.int32))
        total = lens.sum(axis=1)
        # a stop string ends inside the newest token: its reversed text starts at e < len_0
        tgt, tlen = jnp.asarray(self.targets), jnp.asarray(self.target_lengths)
        if tgt.ndim == 2:                       # one set of strings for every row
            tgt, tlen = tgt[None], tlen[None]   # [1, n, L], [1, n]
        longest = tgt.shape[2]
        e = jnp.arange(width)
        idx = jnp.clip(e[:, None] + jnp.arange(longest)[None, :], 0, size)        # [width, L]
        windows = rev[:, idx]                                                   # [rows, width, L]
        in_string = jnp.arange(longest) < tlen[..., None]                     # [1|rows, n, L]
        eq = (windows[:, None] == tgt[:, :, None, :]) | ~in_string[:, :, None, :]
        fits = (e + tlen[..., None] <= total[:, None, None]) & (tlen[..., None] > 0)
        starts = e[None, None, :] < lens[:, :1, None]
        return (eq.all(-1) & fits & starts).any(axis=(1, 2))


def stop_targets(strings: Sequence[str], n: int | None = None, longest: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Stop strings as the matcher's ``targets`` (``[n, longest]`` int32, each string's
    UTF-8 bytes reversed, zero-padded) and ``target_lengths`` (``[n]``, 0 for the padding
    rows); ``n`` / ``longest`` default to the strings' count and longest byte length."""
    enc = [s.encode("utf-8") for s in strings]
    n = len(enc) if n is None else n
    longest = max(len(e) for e in enc) if longest is None else longest
    if len(enc) > n or any(len(e) > longest for e in enc):
        raise ValueError(f"stop_strings: at most {n} strings of at most {longest} bytes, "
                         f"got {len(enc)} of up to {max(map(len, enc))} bytes")
    targets = np.zeros((n, longest), np.int32)
    for i, e in enumerate(enc):
        targets[i, :len(e)] = np.frombuffer(e[::-1], np.uint8)
    lengths = np.zeros((n,), np.int32)
    lengths[:len(enc)] = [len(e) for e in enc]
    return targets, lengths


# --- merging with the config ----------------------------------------------------------------

@dataclasses.dataclass
class Merged:
    """Criteria after merging with a config: what the loop and the host driver need."""

    in_loop: tuple[Any, ...]         # jitted criteria (stop strings, user criteria)
    max_length: int | None = None    # from a MaxLength / MaxNewTokens criterion
    max_new_tokens: int | None = None
    eos_token_id: list[int] | None = None
    max_time: float | None = None
    chunk: int = 8


def merge(criteria: Sequence[Any] | None, *, stop_strings: Any = None, tokenizer: Any = None,
          max_time: float | None = None) -> Merged:
    """transformers' merge: a criterion of a built-in type replaces the default one."""
    out = Merged(in_loop=(), max_time=max_time)
    in_loop: list[Any] = []
    user_strings = False
    for c in criteria or ():
        if isinstance(c, MaxLength):
            out.max_length = int(np.asarray(c.max_length))
        elif isinstance(c, MaxNewTokens):
            out.max_new_tokens = int(np.asarray(c.max_new_tokens))
        elif isinstance(c, EosToken):
            ids = np.asarray(c.eos_token_id)
            out.eos_token_id = [int(i) for i in ids if i >= 0]
        elif isinstance(c, MaxTime):
            out.max_time, out.chunk = float(c.max_time), c.chunk
        elif isinstance(c, StopStringMatcher):
            user_strings = True
            in_loop.append(c)
        elif isinstance(c, StoppingCriterion):
            in_loop.append(c)
        else:
            raise TypeError(
                f"stopping_criteria entries must be jaxgen stopping criteria, got "
                f"{type(c).__name__}; wrap a jittable fn(ctx) -> bool[rows] with "
                f"jaxgen.stopping.criterion(fn)")
    if stop_strings is not None and not user_strings:
        strings = stop_strings if isinstance(stop_strings, str) else list(stop_strings)
        in_loop.insert(0, StopStringMatcher.create(strings, tokenizer))
    out.in_loop = tuple(in_loop)
    return out


def any_done(criteria: Sequence[Any], ctx: Context) -> Bool[Array, " rows"]:
    """OR of the criteria on the step context (all False if there are none)."""
    done = jnp.zeros(ctx.sequences.shape[:1], bool)
    for c in criteria:
        done = done | c(ctx)
    return done


__all__ = ["EosToken", "Lambda", "MaxLength", "MaxNewTokens", "MaxTime", "Merged",
           "StopStringMatcher", "StopStrings", "StoppingCriterion", "any_done", "criterion",
           "merge", "stop_targets", "token_bytes"]
