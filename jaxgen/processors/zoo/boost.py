"""Zoo processors that boost or restrict tokens: GenLength, CiteFromPrompt,
MultipleChoice, MaxTime (see ``jaxgen.processors.zoo`` for the shared differences)."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxgen.ops import id_mask, member, one_hot, pad_ids, set_leaves, token_mask
from jaxgen.processors.base import Context, pytree_dataclass
from jaxgen.processors.zoo.common import (
    PromptProcessor,
    PromptState,
    boost_seen,
    enforce,
    eos_of,
    ids_ending_with,
    in_prompt,
    read_tokenizer,
    set_boost_target,
    text_to_token,
)

__all__ = ["CiteFromPrompt", "GenLength", "MaxTime", "MultipleChoice"]


@pytree_dataclass
class GenLength(PromptProcessor):
    """Boost eos (or ``boost_token_str``'s token) by ``boost_factor * n**p / 10**p`` after
    ``n`` generated tokens, until the row has generated it; with ``complete_sentences``
    only when the last token ends a sentence. Negative ``boost_factor`` delays the end.

    Differences from the zoo: ``complete_sentences`` also accepts every token whose text
    ends with ``.``, ``!``, ``?`` or a newline (the zoo: only its ``.`` and newline
    tokens); "already generated" never looks at the prompt (the zoo's first step looks at
    the whole prompt, where the boost is 0 anyway for ``p > 0``); ``p`` may be any real.
    """

    tokenizer: dataclasses.InitVar[Any] = None
    boost_factor: Any = None        # float32 leaf
    p: Any = 2                      # float32 leaf
    complete_sentences: Any = False  # bool leaf
    boost_token_str: dataclasses.InitVar[str | None] = None
    boost_token: Any = None         # int32 leaf: the boosted token id
    sentence_end: Any = None        # int32 [n] pad_ids: sentence-end token ids

    def __post_init__(self, tokenizer: Any, boost_token_str: str | None) -> None:
        set_boost_target(self, "GenLength", "boost_factor", tokenizer, boost_token_str)
        set_leaves(self, jnp.float32, "boost_factor", "p")
        set_leaves(self, bool, "complete_sentences")

    def __call__(self, logits: Float[Array, "batch vocab"], state: PromptState,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], PromptState]:
        vocab = logits.shape[-1]
        n = (ctx.cur - state.prompt_end).astype(jnp.float32)                # [batch]
        p = jnp.asarray(self.p, jnp.float32)
        boost = self.boost_factor * n ** p / jnp.float32(10.0) ** p
        enabled = ~boost_seen(ctx, state.prompt_end, self.boost_token)
        at_end = member(ctx.last_tokens, id_mask(self.sentence_end, vocab))
        enabled = enabled & (at_end | ~jnp.asarray(self.complete_sentences))
        hit = one_hot(jnp.broadcast_to(self.boost_token, n.shape), vocab) & enabled[:, None]
        return jnp.where(hit, logits + boost[:, None], logits), state


@pytree_dataclass
class CiteFromPrompt(PromptProcessor):
    """Add ``boost_factor`` to every token of the row's own prompt (and to eos when
    ``boost_eos``); after the first step also add ``conditional_boost_factor`` to every
    token that follows the row's last token somewhere in its prompt (prompt bigrams).
    Negative factors push away from the prompt.

    Differences from the zoo: left padding is not part of the prompt (the zoo boosts the
    pad token, and bigrams through it, on padded rows); a tokenizer without an eos id
    boosts no eos (the zoo fails).
    """

    tokenizer: dataclasses.InitVar[Any] = None
    boost_factor: Any = 1.0               # float32 leaf
    boost_eos: Any = True                 # bool leaf
    conditional_boost_factor: Any = 0.0   # float32 leaf
    eos_token_id: Any = None              # int32 leaf (-1: none)

    def __post_init__(self, tokenizer: Any) -> None:
        if read_tokenizer("CiteFromPrompt", self, tokenizer, ("eos_token_id",)):
            object.__setattr__(self, "eos_token_id", np.asarray(
                eos_of("CiteFromPrompt", tokenizer, required=False), np.int32))
        set_leaves(self, jnp.float32, "boost_factor")
        set_leaves(self, bool, "boost_eos")
        set_leaves(self, jnp.float32, "conditional_boost_factor")

    def __call__(self, logits: Float[Array, "batch vocab"], state: PromptState,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], PromptState]:
        vocab = logits.shape[-1]
        seq = ctx.sequences
        prompt = in_prompt(ctx, state.prompt_end)                          # [batch, buffer]
        cited = token_mask(jnp.where(prompt, seq, -1), vocab)            # [batch, vocab]
        eos = jnp.arange(vocab) == self.eos_token_id
        cited = cited | (eos & jnp.asarray(self.boost_eos))[None, :]
        logits = jnp.where(cited, logits + self.boost_factor, logits)
        # bigrams (slot j, j + 1) of the prompt whose first token is the row's last token
        pair = prompt[:, :-1] & prompt[:, 1:] & (seq[:, :-1] == ctx.last_tokens[:, None])
        follow = token_mask(jnp.where(pair, seq[:, 1:], -1), vocab)
        follow = follow & (ctx.cur > state.prompt_end)[:, None]
        return jnp.where(follow, logits + self.conditional_boost_factor, logits), state


@pytree_dataclass
class MultipleChoice(PromptProcessor):
    """Allow only the ``choices`` tokens (scores shifted by the zoo's ``enforce_tokens``).

    With ``boost_first_words``, each choice also gets ``boost_first_words`` times the
    score of the first token after it in the prompt: choice ``c`` is found as the first
    "new-line token, choice token, ``delimiter`` token, word" pattern after choice
    ``c - 1``'s (the zoo's sequential scan; it stops at the first missing choice).

    Differences from the zoo: only the real prompt is scanned (not the left padding);
    repeated choice tokens add their boosts (the zoo: one of them wins).
    """

    tokenizer: dataclasses.InitVar[Any] = None
    choices: dataclasses.InitVar[Any] = None
    delimiter: dataclasses.InitVar[str] = "."
    boost_first_words: Any = 0.0      # float32 leaf
    choice_tokens: Any = None         # int32 [n] pad_ids, in choice order
    delimiter_token: Any = None       # int32 leaf
    new_line_tokens: Any = None       # int32 [m] pad_ids: tokens whose text ends with \n

    def __post_init__(self, tokenizer: Any, choices: Any, delimiter: str) -> None:
        if read_tokenizer("MultipleChoice", self, tokenizer,
                          ("choice_tokens", "delimiter_token", "new_line_tokens"),
                          choices=choices):
            if choices is None:
                choices = ["1", "2", "3", "4"]
            if isinstance(choices, str) or not list(choices):
                raise ValueError(f"MultipleChoice: choices must be a non-empty list of "
                                 f"strings, got {choices!r}")
            ids = [text_to_token(tokenizer, c, last=False) for c in choices]
            object.__setattr__(self, "choice_tokens", pad_ids(ids))
            object.__setattr__(self, "delimiter_token", np.asarray(
                text_to_token(tokenizer, delimiter, last=False), np.int32))
            object.__setattr__(self, "new_line_tokens",
                               pad_ids(ids_ending_with(tokenizer, ("\n",))))
        set_leaves(self, jnp.float32, "boost_first_words")

    def __call__(self, logits: Float[Array, "batch vocab"], state: PromptState,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], PromptState]:
        vocab = logits.shape[-1]
        seq = ctx.sequences
        b, length = seq.shape
        slots = jnp.arange(length, dtype=jnp.int32)[None, :]
        prompt = in_prompt(ctx, state.prompt_end)                          # [batch, buffer]

        def ahead(x: Array, k: int, fill: Any) -> Array:   # x[:, i + k] at column i
            return jnp.concatenate([x[:, k:], jnp.full((b, k), fill, x.dtype)], axis=1)

        newline = member(seq, id_mask(self.new_line_tokens, vocab))
        pattern = (prompt & newline & (ahead(seq, 2, -1) == self.delimiter_token)
                   & ahead(prompt, 3, False))                            # [batch, buffer]
        choice_at, first_word = ahead(seq, 1, -1), ahead(seq, 3, 0)
        factor = jnp.asarray(self.boost_first_words, jnp.float32)

        def find(carry, choice):
            prev, found = carry                                             # [batch] each
            hit = pattern & (choice_at == choice) & (slots > prev[:, None])
            pos = jnp.min(jnp.where(hit, slots, length), axis=1)
            found = found & (pos < length)
            word = jnp.take_along_axis(first_word, jnp.minimum(pos, length - 1)[:, None],
                                       axis=1)[:, 0]
            score = jnp.take_along_axis(logits, jnp.clip(word, 0, vocab - 1)[:, None],
                                        axis=1)[:, 0]
            add = jnp.where(found & (factor != 0) & (word < vocab), factor * score, 0.0)
            return (jnp.where(found, pos, length), found), add

        choices = jnp.asarray(self.choice_tokens, jnp.int32)
        init = (jnp.full((b,), -1, jnp.int32), jnp.ones((b,), bool))
        _, adds = jax.lax.scan(find, init, choices)                         # [choices, batch]
        cols = jnp.where(choices < 0, vocab, choices)
        boost = jnp.zeros_like(logits).at[:, cols].add(adds.T.astype(logits.dtype),
                                                       mode="drop")
        allowed = jnp.broadcast_to(id_mask(choices, vocab)[None, :], logits.shape)
        return enforce(logits + boost, allowed, jnp.ones((b,), bool)), state


@pytree_dataclass
class MaxTime(PromptProcessor):
    """Once ``max_time`` seconds have passed (``ctx.elapsed >= max_time``), force eos (or
    ``boost_token_str``'s token) on every row that has not generated it yet; with
    ``complete_sentences`` only when the row's last token ends a sentence.

    Differences from the zoo: time comes from the host driver between chunks (so the
    limit is met to within one chunk; ``generate`` drives in chunks because of
    ``uses_clock``) and counts from the start of generation; ``complete_sentences`` also
    accepts tokens ending with ``.``, ``!``, ``?`` or a newline; "already generated"
    never looks at the prompt (the zoo's first step looks at the whole prompt).
    """

    uses_clock: ClassVar[bool] = True

    tokenizer: dataclasses.InitVar[Any] = None
    max_time: Any = None             # float32 leaf (seconds)
    complete_sentences: Any = False  # bool leaf
    boost_token_str: dataclasses.InitVar[str | None] = None
    boost_token: Any = None          # int32 leaf
    sentence_end: Any = None         # int32 [n] pad_ids

    def __post_init__(self, tokenizer: Any, boost_token_str: str | None) -> None:
        set_boost_target(self, "MaxTime", "max_time", tokenizer, boost_token_str)
        set_leaves(self, jnp.float32, "max_time")
        set_leaves(self, bool, "complete_sentences")

    def __call__(self, logits: Float[Array, "batch vocab"], state: PromptState,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], PromptState]:
        vocab = logits.shape[-1]
        enabled = ~boost_seen(ctx, state.prompt_end, self.boost_token)
        at_end = member(ctx.last_tokens, id_mask(self.sentence_end, vocab))
        enabled = enabled & (at_end | ~jnp.asarray(self.complete_sentences))
        when = enabled & (ctx.elapsed >= self.max_time)
        token = jnp.broadcast_to(jnp.asarray(self.boost_token, jnp.int32), enabled.shape)
        return enforce(logits, one_hot(token, vocab), when), state
