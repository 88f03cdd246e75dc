"""Stopping criteria: pytrees that return a per-row "done" mask, inside the jitted loop.

A criterion is called after a token is written, with the step ``Context`` (``ctx.cur`` is
the slot after the new token)::

    done = criterion(ctx)          # bool [rows]

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

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool

from jaxgen.processors.base import Context, as_leaf, pad_ids


class StoppingCriterion:
    """Base class: ``__call__(ctx) -> bool [rows]`` (True = the row is done)."""

    def __call__(self, ctx: Context) -> Bool[Array, " rows"]:
        raise NotImplementedError


@struct.dataclass
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


@struct.dataclass
class MaxLength(StoppingCriterion):
    """Done once the sequence (prompt included) has ``max_length`` tokens."""

    max_length: Any

    def __post_init__(self):
        _check_positive("MaxLength.max_length", self.max_length)
        object.__setattr__(self, "max_length", as_leaf(self.max_length, jnp.int32))

    def __call__(self, ctx):
        return jnp.broadcast_to(ctx.cur_len >= self.max_length, ctx.sequences.shape[:1])


@struct.dataclass
class MaxNewTokens(StoppingCriterion):
    """Done after ``max_new_tokens`` generated tokens (``generate`` turns it into its
    length limit; used directly it needs ``start_length``, the prompt width)."""

    max_new_tokens: Any
    start_length: Any = None

    def __post_init__(self):
        _check_positive("MaxNewTokens.max_new_tokens", self.max_new_tokens)
        object.__setattr__(self, "max_new_tokens", as_leaf(self.max_new_tokens, jnp.int32))
        if self.start_length is not None:
            object.__setattr__(self, "start_length", as_leaf(self.start_length, jnp.int32))

    def __call__(self, ctx):
        if self.start_length is None:
            raise ValueError("MaxNewTokens.start_length is needed outside generate()")
        done = ctx.cur_len >= self.start_length + self.max_new_tokens
        return jnp.broadcast_to(done, ctx.sequences.shape[:1])


@struct.dataclass
class EosToken(StoppingCriterion):
    """Done when the newest token is one of ``eos_token_id`` (an int or a list)."""

    eos_token_id: Any

    def __post_init__(self):
        ids = self.eos_token_id
        if isinstance(ids, (int, list, tuple)):
            ids = [ids] if isinstance(ids, int) else list(ids)
            if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 0
                              for i in ids):
                raise ValueError(f"EosToken.eos_token_id must be token ids >= 0, got {ids!r}")
            object.__setattr__(self, "eos_token_id", pad_ids(ids))

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


def _check_positive(name: str, v: Any) -> None:
    if isinstance(v, bool) or (isinstance(v, (int, np.integer)) and v < 1):
        raise ValueError(f"{name} must be an int >= 1, got {v!r}")


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


@struct.dataclass
class StopStringMatcher(StoppingCriterion):
    """Done when a stop string appears in the text and overlaps the newest token.

    transformers' ``StopStringCriteria`` semantics: a stop string may start or end inside a
    token; it triggers only when its last character lies within the newest token's text.
    Matching runs on the bytes each token yields (precomputed per token), over the last
    ``window`` tokens of the buffer; padding (attention mask 0) yields no text.

    Build with ``StopStrings(stop_strings, tokenizer=tok)``; ``window`` = the longest stop
    string in bytes + 1 tokens, enough since every token yields at least one byte.
    """

    table: Any                      # [vocab, max_token_bytes] uint8 bytes, right-padded
    lengths: Any                    # [vocab] int32 byte length of each token
    targets: Any                    # [n_strings, max_string_bytes] reversed stop strings
    target_lengths: Any             # [n_strings]
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
        enc = [s.encode("utf-8") for s in strings]
        longest = max(len(e) for e in enc)
        targets = np.zeros((len(enc), longest), np.int32)
        for i, e in enumerate(enc):
            targets[i, :len(e)] = np.frombuffer(e[::-1], np.uint8)
        # a match covers at most len(string) tokens plus the newest one
        return cls(table=table, lengths=np.asarray([len(t) for t in toks], np.int32),
                   targets=targets, target_lengths=np.asarray([len(e) for e in enc], np.int32),
                   window=longest + 1, stop_strings=tuple(strings))

    def __call__(self, ctx):
        w, width = self.window, self.table.shape[1]
        rows = ctx.sequences.shape[0]
        seqs, mask, cur = ctx.sequences, ctx.attention_mask, ctx.cur
        if seqs.shape[1] < w:      # short buffer: pad on the left with empty slots
            extra = w - seqs.shape[1]
            seqs = jnp.pad(seqs, ((0, 0), (extra, 0)))
            mask = jnp.pad(mask, ((0, 0), (extra, 0)))
            cur = cur + extra
        first = jnp.maximum(cur - w, 0)
        ids = jax.lax.dynamic_slice_in_dim(seqs, first, w, axis=1)             # [rows, w]
        live = jax.lax.dynamic_slice_in_dim(mask, first, w, axis=1) > 0
        live &= (first + jnp.arange(w)) < cur                                   # real slots
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
        tgt = jnp.asarray(self.targets)
        n, longest = tgt.shape
        e = jnp.arange(width)
        idx = jnp.clip(e[:, None] + jnp.arange(longest)[None, :], 0, size)        # [width, L]
        windows = rev[:, idx]                                                   # [rows, width, L]
        in_string = jnp.arange(longest)[None, :] < jnp.asarray(self.target_lengths)[:, None]
        eq = (windows[:, None] == tgt[None, :, None, :]) | ~in_string[None, :, None, :]
        fits = (e[None, None, :] + jnp.asarray(self.target_lengths)[None, :, None]
                <= total[:, None, None])
        starts = e[None, None, :] < lens[:, :1, None]
        return (eq.all(-1) & fits & starts).any(axis=(1, 2))


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
           "merge", "token_bytes"]
