"""Shared pieces of the zoo processors: tokenizer reading (host side, at construction),
the zoo's ``enforce_tokens``, slot masks and the per-row states."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxgen.ops import eos_ids, pad_ids
from jaxgen.processors.base import Context, LogitsProcessor

_SENTENCE_ENDS = (".", "!", "?", "\n")


# --- construction helpers (host side, plain Python) -------------------------------------

def encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    if not isinstance(text, str):
        raise TypeError(f"expected a string, got {type(text).__name__}")
    out = tokenizer.encode(text, add_special_tokens=False)
    return [int(i) for i in getattr(out, "ids", out)]


def text_to_token(tokenizer: Any, text: str, last: bool) -> int:
    """logits-processor-zoo's ``text_to_token``: the last token of ``text``, which must be
    a single token (two allowed when a bos or a prefix-space token may be added)."""
    tokens = encode(tokenizer, text)
    if not tokens:
        raise ValueError(f"{text!r} encodes to no token")
    bos = getattr(tokenizer, "bos_token_id", None)
    bos_added = bos is not None and bos in tokens
    prefix_added = getattr(tokenizer, "add_prefix_space", None) is not False
    max_count = 2 if (bos_added or prefix_added) else 1
    if not last and len(tokens) > max_count:
        raise ValueError(f"Can't convert {text!r} to token. It has {len(tokens)} tokens.")
    return tokens[-1]


def eos_of(name: str, tokenizer: Any, required: bool = True) -> int:
    """The tokenizer's (first) eos id; -1 when it has none and it is not ``required``."""
    ids = eos_ids(getattr(tokenizer, "eos_token_id", None),
                  f"{name}: the tokenizer's eos_token_id")
    if not ids and required:
        raise ValueError(f"{name}: the tokenizer has no eos_token_id")
    return ids[0] if ids else -1


def token_texts(tokenizer: Any) -> list[str]:
    """The decoded text of every single token id ``0 .. n - 1``."""
    import tokenizers

    backend = getattr(tokenizer, "backend", None) or getattr(tokenizer, "backend_tokenizer",
                                                             None)
    if backend is None and isinstance(tokenizer, tokenizers.Tokenizer):
        backend = tokenizer
    if isinstance(backend, tokenizers.Tokenizer):
        n = backend.get_vocab_size(with_added_tokens=True)
        return backend.decode_batch([[i] for i in range(n)], skip_special_tokens=False)
    n = max(tokenizer.get_vocab().values()) + 1
    return [tokenizer.decode([i]) for i in range(n)]


def ids_ending_with(tokenizer: Any, suffixes: tuple[str, ...]) -> list[int]:
    return [i for i, text in enumerate(token_texts(tokenizer)) if text.endswith(suffixes)]


def sentence_end_ids(tokenizer: Any) -> np.ndarray:
    """The zoo's two sentence-end tokens plus every token ending with . ! ? or a newline."""
    ids = set(ids_ending_with(tokenizer, _SENTENCE_ENDS))
    ids.add(text_to_token(tokenizer, "It is a sentence.", last=True))
    ids.add(text_to_token(tokenizer, "It is a new line\n", last=True))
    return pad_ids(sorted(ids))


def phrase_ids(name: str, tokenizer: Any, phrase: Any) -> tuple[np.ndarray, np.ndarray]:
    """A phrase as (``pad_ids`` token table, int32 length)."""
    if phrase is None:
        raise TypeError(f"{name}: phrase is required")
    if isinstance(phrase, (int, np.integer)):
        raise TypeError(f"{name}: phrase must be a string, got {phrase!r} (jaxgen's "
                        f"processors take no batch_size argument)")
    ids = encode(tokenizer, phrase)
    if not ids:
        raise ValueError(f"{name}: phrase {phrase!r} encodes to no token")
    return pad_ids(ids), np.asarray(len(ids), np.int32)


def read_tokenizer(name: str, proc: Any, tokenizer: Any, built: tuple[str, ...],
                   **strings: Any) -> bool:
    """Whether ``__post_init__`` should read ``tokenizer`` now (True), or ``proc`` already
    holds its tokenizer-derived fields ``built`` (False: a copy made by ``replace``).

    Raises ``TypeError`` when neither holds: strings given without a tokenizer, or no
    tokenizer at all.
    """
    if tokenizer is not None:
        return True
    if all(getattr(proc, f) is not None for f in built):
        return False
    if any(v is not None for v in strings.values()):
        raise TypeError(f"{name}: tokenizer is required (a jaxgen.Tokenizer or a "
                        f"transformers tokenizer)")
    raise TypeError(f"{name} was built without its tokenizer; construct it as "
                    f"{name}(tokenizer=..., ...)")


# --- array helpers (inside jit) ---------------------------------------------------------

def enforce(logits: Float[Array, "batch vocab"], allowed: Bool[Array, "batch vocab"],
            when: Bool[Array, " batch"]) -> Float[Array, "batch vocab"]:
    """The zoo's ``enforce_tokens`` on the rows where ``when`` (see ``jaxgen.processors.zoo``).

    Forced scores are shifted by ``max(row) - min(forced)``; the others become ``min(row)``.
    """
    hi = jnp.max(logits, axis=-1, keepdims=True)
    lo_row = jnp.min(logits, axis=-1, keepdims=True)
    finite = jnp.isfinite(logits)
    lo = jnp.min(jnp.where(allowed & finite, logits, jnp.inf), axis=-1, keepdims=True)
    lo = jnp.where(jnp.isfinite(lo), lo, hi)
    forced = jnp.where(finite, logits + (hi - lo), hi)
    rest = jnp.where(lo_row == hi, -jnp.inf, lo_row)
    out = jnp.where(allowed, forced, rest).astype(logits.dtype)
    return jnp.where(when[:, None], out, logits)


def generated(ctx: Context, prompt_end: Int[Array, " batch"]) -> Bool[Array, "batch buffer"]:
    """Slots holding generated tokens: ``prompt_end .. cur - 1``."""
    slots = jnp.arange(ctx.sequences.shape[1], dtype=jnp.int32)[None, :]
    return (slots >= prompt_end[:, None]) & (slots < ctx.cur_col)


def in_prompt(ctx: Context, prompt_end: Int[Array, " batch"]) -> Bool[Array, "batch buffer"]:
    """Slots of the row's real prompt: ``start .. prompt_end - 1`` with attention mask 1."""
    slots = jnp.arange(ctx.sequences.shape[1], dtype=jnp.int32)[None, :]
    return (slots >= ctx.start_col) & (slots < prompt_end[:, None]) & (
        ctx.attention_mask != 0)


def boost_seen(ctx: Context, prompt_end: Int[Array, " batch"], token: Any
               ) -> Bool[Array, " batch"]:
    """Whether ``token`` is among the row's generated tokens."""
    return jnp.any(generated(ctx, prompt_end) & (ctx.sequences == token), axis=1)


# --- states -----------------------------------------------------------------------------

@struct.dataclass
class PromptState:
    """prompt_end: [batch] int32, the first generated slot (``ctx.cur`` at ``init``); kept
    per row (not a scalar) so the state follows the leading-axis convention."""

    prompt_end: Int[Array, " batch"]


def prompt_state(ctx: Context) -> PromptState:
    return PromptState(prompt_end=ctx.cur_rows)


class PromptProcessor(LogitsProcessor):
    """A zoo processor whose state is where each row's generation began."""

    def init(self, ctx: Context) -> PromptState:
        return prompt_state(ctx)


@struct.dataclass
class PhraseState:
    """Where each row is in a phrase being forced.

    it: [batch] int32, the phrase position forced next (meaning of 0 / -1 per processor).
    count: [batch] int32, low-confidence steps (PreventHallucination) or triggers left
        (TriggerPhrase); unused (zeros) for ForceLastPhrase.
    since: [batch] float32, ``ctx.elapsed`` when the row's trigger timer (re)started
        (TriggerPhrase); zeros otherwise.
    """

    it: Int[Array, " batch"]
    count: Int[Array, " batch"]
    since: Float[Array, " batch"]


def phrase_state(ctx: Context, it: int, count: Any = 0) -> PhraseState:
    b = ctx.rows
    return PhraseState(it=jnp.full((b,), it, jnp.int32),
                       count=jnp.broadcast_to(jnp.asarray(count, jnp.int32), (b,)),
                       since=jnp.broadcast_to(jnp.asarray(ctx.elapsed, jnp.float32), (b,)))


class PhraseProcessor(LogitsProcessor):
    """A zoo processor that forces a phrase: the state says where each row is in it."""

    def init(self, ctx: Context) -> PhraseState:
        return phrase_state(ctx, 0)


def set_boost_target(proc: Any, name: str, required: str, tokenizer: Any,
                     boost_token_str: str | None) -> None:
    """GenLength / MaxTime set-up: the boosted token (eos unless ``boost_token_str``) and
    the sentence-end token ids, read from the tokenizer at construction."""
    if not read_tokenizer(name, proc, tokenizer, ("boost_token", "sentence_end"),
                          boost_token_str=boost_token_str):
        return
    if getattr(proc, required) is None:
        raise TypeError(f"{name}: {required} is required")
    tok = (eos_of(name, tokenizer) if boost_token_str is None
           else text_to_token(tokenizer, boost_token_str, last=False))
    object.__setattr__(proc, "boost_token", np.asarray(tok, np.int32))
    object.__setattr__(proc, "sentence_end", sentence_end_ids(tokenizer))
