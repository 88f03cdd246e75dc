"""Zoo processors that force a phrase: ForceLastPhrase, TriggerPhrase,
PreventHallucination (see ``jaxgen.processors.zoo`` for the shared differences)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from jaxgen.ops import fast_argmax, one_hot, set_leaves
from jaxgen.processors.base import Context, pytree_dataclass
from jaxgen.processors.zoo.common import (
    PhraseProcessor,
    PhraseState,
    enforce,
    eos_of,
    phrase_ids,
    phrase_state,
    read_tokenizer,
    text_to_token,
)

__all__ = ["ForceLastPhrase", "PreventHallucination", "TriggerPhrase"]


@pytree_dataclass
class ForceLastPhrase(PhraseProcessor):
    """When a row's best token is eos for the first time, force ``phrase`` token by token
    instead (once per row); the model then ends when it chooses to.

    Same semantics as the zoo (per-row iterators in the state); an empty phrase raises.
    """

    phrase: dataclasses.InitVar[str | None] = None
    tokenizer: dataclasses.InitVar[Any] = None
    phrase_tokens: Any = None   # int32 [n] pad_ids
    phrase_len: Any = None      # int32 leaf
    eos_token_id: Any = None    # int32 leaf

    def __post_init__(self, phrase: str | None, tokenizer: Any) -> None:
        if read_tokenizer("ForceLastPhrase", self, tokenizer,
                          ("phrase_tokens", "phrase_len", "eos_token_id"), phrase=phrase):
            table, n = phrase_ids("ForceLastPhrase", tokenizer, phrase)
            object.__setattr__(self, "phrase_tokens", table)
            object.__setattr__(self, "phrase_len", n)
            object.__setattr__(self, "eos_token_id",
                               np.asarray(eos_of("ForceLastPhrase", tokenizer), np.int32))

    def __call__(self, logits: Float[Array, "batch vocab"], state: PhraseState,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], PhraseState]:
        it = state.it
        begin = (fast_argmax(logits) == self.eos_token_id) & (it == 0)
        force = begin | ((it > 0) & (it < self.phrase_len))
        table = jnp.asarray(self.phrase_tokens)
        token = table[jnp.clip(it, 0, table.shape[0] - 1)]
        logits = enforce(logits, one_hot(token, logits.shape[-1]), force)
        return logits, state.replace(it=it + force.astype(jnp.int32))


@pytree_dataclass
class TriggerPhrase(PhraseProcessor):
    """When a row's best token is the trigger token (``trigger_token_phrase``), or its
    timer passes ``trigger_time`` seconds, force ``phrase`` instead of that token (or,
    with ``trigger_after``, right after it), at most ``trigger_count`` times per row.

    Differences from the zoo: the timer is per row (the zoo has one timer for the batch,
    restarted whenever any row completes its phrase); it starts when generation starts
    and ticks with the host driver's chunks (``ctx.elapsed``; ``generate`` drives in
    chunks when ``trigger_time`` is set). ``trigger_time=None`` is ``inf``.
    """

    tokenizer: dataclasses.InitVar[Any] = None
    phrase: dataclasses.InitVar[str | None] = None
    trigger_token_phrase: dataclasses.InitVar[str | None] = None
    trigger_time: Any = None     # float32 leaf (inf: never)
    trigger_count: Any = 1       # int32 leaf
    trigger_after: Any = False   # bool leaf
    phrase_tokens: Any = None    # int32 [n] pad_ids
    phrase_len: Any = None       # int32 leaf
    trigger_token: Any = None    # int32 leaf (-1: none)

    def __post_init__(self, tokenizer: Any, phrase: str | None,
                      trigger_token_phrase: str | None) -> None:
        if read_tokenizer("TriggerPhrase", self, tokenizer,
                          ("phrase_tokens", "phrase_len", "trigger_token"), phrase=phrase,
                          trigger_token_phrase=trigger_token_phrase):
            if trigger_token_phrase is None and self.trigger_time is None:
                raise ValueError("TriggerPhrase: either trigger_token_phrase or trigger_time "
                                 "must be provided")
            count = self.trigger_count
            if count is None or isinstance(count, (bool, float, str)):
                raise TypeError(f"TriggerPhrase: trigger_count must be an int, got {count!r}")
            table, n = phrase_ids("TriggerPhrase", tokenizer, phrase)
            object.__setattr__(self, "phrase_tokens", table)
            object.__setattr__(self, "phrase_len", n)
            token = (-1 if trigger_token_phrase is None
                     else text_to_token(tokenizer, trigger_token_phrase, last=False))
            object.__setattr__(self, "trigger_token", np.asarray(token, np.int32))
            if self.trigger_time is None:
                object.__setattr__(self, "trigger_time", np.float32(np.inf))
        set_leaves(self, jnp.float32, "trigger_time")
        set_leaves(self, jnp.int32, "trigger_count")
        set_leaves(self, bool, "trigger_after")

    @property
    def uses_clock(self) -> bool:
        """True unless ``trigger_time`` is known to be ``inf`` (``generate`` then drives the
        loop in chunks so ``ctx.elapsed`` advances)."""
        try:
            return bool(np.isfinite(np.asarray(self.trigger_time)))
        except Exception:  # a tracer
            return True

    def init(self, ctx: Context) -> PhraseState:
        return phrase_state(ctx, -1, self.trigger_count)

    def __call__(self, logits: Float[Array, "batch vocab"], state: PhraseState,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], PhraseState]:
        it, left = state.it, state.count
        active = left > 0
        after = jnp.asarray(self.trigger_after)
        time_up = ctx.elapsed - state.since >= self.trigger_time
        trigger = active & (it == -1) & ((fast_argmax(logits) == self.trigger_token) | time_up)
        cont = active & ~trigger & (it >= 0) & (it < self.phrase_len)
        force = (trigger & ~after) | cont
        table = jnp.asarray(self.phrase_tokens)
        token = table[jnp.clip(jnp.where(trigger, 0, it), 0, table.shape[0] - 1)]
        logits = enforce(logits, one_hot(token, logits.shape[-1]), force)
        it = jnp.where(trigger, jnp.where(after, 0, 1), jnp.where(cont, it + 1, it))
        done = active & (it == self.phrase_len)           # phrase completed: re-arm
        return logits, PhraseState(
            it=jnp.where(done, -1, it).astype(jnp.int32),
            count=left - done.astype(jnp.int32),
            since=jnp.where(done, ctx.elapsed, state.since).astype(jnp.float32))


@pytree_dataclass
class PreventHallucination(PhraseProcessor):
    """Count a row's low-confidence steps (top probability below ``minp``); once the count
    exceeds ``tolerate``, force ``phrase`` token by token, then reset the count.

    Same semantics as the zoo (the count is cumulative, not of consecutive steps, and
    keeps counting while the phrase is written; the step after the phrase resets it).
    """

    tokenizer: dataclasses.InitVar[Any] = None
    minp: Any = 0.4              # float32 leaf
    tolerate: Any = 1            # int32 leaf
    phrase: dataclasses.InitVar[str] = "...I don't know actually.\n"
    phrase_tokens: Any = None    # int32 [n] pad_ids
    phrase_len: Any = None       # int32 leaf

    def __post_init__(self, tokenizer: Any, phrase: str) -> None:
        if read_tokenizer("PreventHallucination", self, tokenizer,
                          ("phrase_tokens", "phrase_len"), phrase=phrase):
            if isinstance(self.minp, (int, float)) and not 0.0 <= self.minp <= 1.0:
                raise ValueError(f"PreventHallucination: minp must be a probability in "
                                 f"[0, 1], got {self.minp!r} (jaxgen's processors take no "
                                 f"batch_size argument)")
            table, n = phrase_ids("PreventHallucination", tokenizer, phrase)
            object.__setattr__(self, "phrase_tokens", table)
            object.__setattr__(self, "phrase_len", n)
        set_leaves(self, jnp.float32, "minp")
        set_leaves(self, jnp.int32, "tolerate")

    def __call__(self, logits: Float[Array, "batch vocab"], state: PhraseState,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], PhraseState]:
        it = state.it
        top_prob = jnp.max(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=-1)
        low = state.count + (top_prob < self.minp).astype(jnp.int32)
        begin = (low > self.tolerate) & (it == 0)
        cont = ~begin & (it > 0) & (it < self.phrase_len)
        reset = ~begin & ~cont & (it == self.phrase_len)
        force = begin | cont
        table = jnp.asarray(self.phrase_tokens)
        token = table[jnp.clip(it, 0, table.shape[0] - 1)]
        logits = enforce(logits, one_hot(token, logits.shape[-1]), force)
        return logits, state.replace(
            it=jnp.where(force, it + 1, jnp.where(reset, 0, it)).astype(jnp.int32),
            count=jnp.where(reset, 0, low).astype(jnp.int32))
