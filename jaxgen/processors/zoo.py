"""JAX versions of the logits-processor-zoo processors (NVIDIA, transformers flavour).

Same class names without the ``LogitsProcessor`` suffix and the same constructor
arguments, minus ``batch_size``: batch support comes from per-row state arrays (every
state leaf has the rows as leading axis, so beam search can reorder it)::

    from jaxgen import processors as P
    P.zoo.GenLength(tok, boost_factor=1.0, p=2, complete_sentences=False)
    P.zoo.ForceLastPhrase("Thanks for asking.", tok)
    P.zoo.MultipleChoice(tok, choices=["1", "2", "3", "4"])

The tokenizer (a ``jaxgen.Tokenizer`` or a transformers tokenizer) is only read at
construction: phrases, choices and string-derived token sets (new-line tokens,
sentence ends) become ``-1``-padded int32 arrays of power-of-two length, and numbers
become fixed-dtype array leaves, so changing a boost, a count or a time never
recompiles. Nothing loops over rows or positions and nothing talks to the host.

Differences shared by every processor (each class lists its own):

- No ``batch_size`` and no "new generation" detection: ``init`` builds the state at
  prefill, so one object serves any number of ``generate`` calls (the original must be
  re-created before every call).
- The prompt is the row's real prompt (attention mask 1); the original also sees the
  left padding of ``input_ids``.
- Wall-clock time is ``ctx.elapsed``: seconds since generation began, set by the host
  driver between chunks of steps (resolution = one chunk; these processors set
  ``uses_clock`` so ``generate`` drives the loop in chunks). "Time is up" is
  ``elapsed >= limit`` (the original: ``time.time() - start > limit``, with ``start``
  at the first processor call).
- Forcing tokens keeps the zoo's ``enforce_tokens`` arithmetic (forced scores shifted so
  their minimum becomes the row maximum, all others set to the row minimum): a shift,
  not a mask, so under sampling a forced token is as likely as the row's score range
  makes it, as in the original. Two fixes: a forced token whose score is ``-inf``
  (banned by an earlier processor) gets the row maximum instead of NaN, and in a flat
  row (maximum == minimum) the other tokens become ``-inf`` so the forced token wins
  (the original leaves a tie there).
- ``text_to_token`` errors are ``ValueError`` (the original raises ``Exception``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxgen.processors.base import Context, LogitsProcessor, as_leaf, pad_ids
from jaxgen.processors.penalties import token_mask

_SENTENCE_ENDS = (".", "!", "?", "\n")


# --- construction helpers (host side, plain Python) -------------------------------------

def _need(name: str, tokenizer: Any) -> None:
    if tokenizer is None:
        raise TypeError(f"{name}: tokenizer is required (a jaxgen.Tokenizer or a "
                        f"transformers tokenizer)")


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens."""
    if not isinstance(text, str):
        raise TypeError(f"expected a string, got {type(text).__name__}")
    out = tokenizer.encode(text, add_special_tokens=False)
    return [int(i) for i in getattr(out, "ids", out)]


def _text_to_token(tokenizer: Any, text: str, last: bool) -> int:
    """logits-processor-zoo's ``text_to_token``: the last token of ``text``, which must be
    a single token (two allowed when a bos or a prefix-space token may be added)."""
    tokens = _encode(tokenizer, text)
    if not tokens:
        raise ValueError(f"{text!r} encodes to no token")
    bos = getattr(tokenizer, "bos_token_id", None)
    bos_added = bos is not None and bos in tokens
    prefix_added = getattr(tokenizer, "add_prefix_space", None) is not False
    max_count = 2 if (bos_added or prefix_added) else 1
    if not last and len(tokens) > max_count:
        raise ValueError(f"Can't convert {text!r} to token. It has {len(tokens)} tokens.")
    return tokens[-1]


def _eos(name: str, tokenizer: Any, required: bool = True) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, (list, tuple)):
        eos = eos[0] if eos else None
    if eos is None:
        if required:
            raise ValueError(f"{name}: the tokenizer has no eos_token_id")
        return -1
    return int(eos)


def _token_texts(tokenizer: Any) -> list[str]:
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


def _ids_ending_with(tokenizer: Any, suffixes: tuple[str, ...]) -> list[int]:
    return [i for i, text in enumerate(_token_texts(tokenizer)) if text.endswith(suffixes)]


def _sentence_end_ids(tokenizer: Any) -> np.ndarray:
    """The zoo's two sentence-end tokens plus every token ending with . ! ? or a newline."""
    ids = set(_ids_ending_with(tokenizer, _SENTENCE_ENDS))
    ids.add(_text_to_token(tokenizer, "It is a sentence.", last=True))
    ids.add(_text_to_token(tokenizer, "It is a new line\n", last=True))
    return pad_ids(sorted(ids))


def _phrase(name: str, tokenizer: Any, phrase: Any) -> tuple[np.ndarray, np.ndarray]:
    """A phrase as (``pad_ids`` token table, int32 length)."""
    if phrase is None:
        raise TypeError(f"{name}: phrase is required")
    if isinstance(phrase, (int, np.integer)):
        raise TypeError(f"{name}: phrase must be a string, got {phrase!r} (jaxgen's "
                        f"processors take no batch_size argument)")
    ids = _encode(tokenizer, phrase)
    if not ids:
        raise ValueError(f"{name}: phrase {phrase!r} encodes to no token")
    return pad_ids(ids), np.asarray(len(ids), np.int32)


def _check_tokenizer_only(name: str, tokenizer: Any, **strings: Any) -> None:
    """Without a tokenizer (pytree unflatten), string arguments must be absent."""
    if tokenizer is None and any(v is not None for v in strings.values()):
        _need(name, tokenizer)


def _built(name: str, *leaves: Any) -> None:
    if any(x is None for x in leaves):
        raise TypeError(f"{name} was built without its tokenizer; construct it as "
                        f"{name}(tokenizer=..., ...)")


# --- array helpers (inside jit) ---------------------------------------------------------

def _vocab_mask(ids: Int[Array, " n"], vocab: int) -> Bool[Array, " vocab"]:
    """[vocab] mask of ``ids`` (entries < 0 or >= vocab ignored), by scatter."""
    ids = jnp.asarray(ids, jnp.int32)
    return jnp.zeros((vocab,), bool).at[jnp.where(ids < 0, vocab, ids)].set(True, mode="drop")


def _member(tokens: Int[Array, "*dims"], mask: Bool[Array, " vocab"]) -> Bool[Array, "*dims"]:
    """``mask[tokens]``, False for tokens outside the vocabulary."""
    return jnp.take(mask, tokens, mode="fill", fill_value=False)


def _argmax(x: Float[Array, "batch vocab"]) -> Int[Array, " batch"]:
    """First index of the row maximum (``max`` + ``where`` + ``min``; fast on XLA:CPU)."""
    n = x.shape[-1]
    best = jnp.max(x, axis=-1, keepdims=True)
    idx = jnp.where(x == best, jnp.arange(n, dtype=jnp.int32), n)
    return jnp.minimum(jnp.min(idx, axis=-1), n - 1).astype(jnp.int32)


def _one_hot(tokens: Int[Array, " batch"], vocab: int) -> Bool[Array, "batch vocab"]:
    return jnp.arange(vocab, dtype=jnp.int32)[None, :] == tokens[:, None]


def _enforce(logits: Float[Array, "batch vocab"], allowed: Bool[Array, "batch vocab"],
             when: Bool[Array, " batch"]) -> Float[Array, "batch vocab"]:
    """The zoo's ``enforce_tokens`` on the rows where ``when`` (see the module docstring).

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


def _rows(ctx: Context) -> int:
    return ctx.sequences.shape[0]


def _generated(ctx: Context, prompt_end: Int[Array, " batch"]) -> Bool[Array, "batch buffer"]:
    """Slots holding generated tokens: ``prompt_end .. cur - 1``."""
    slots = jnp.arange(ctx.sequences.shape[1], dtype=jnp.int32)[None, :]
    return (slots >= prompt_end[:, None]) & (slots < ctx.cur)


def _in_prompt(ctx: Context, prompt_end: Int[Array, " batch"]) -> Bool[Array, "batch buffer"]:
    """Slots of the row's real prompt: ``start .. prompt_end - 1`` with attention mask 1."""
    slots = jnp.arange(ctx.sequences.shape[1], dtype=jnp.int32)[None, :]
    return (slots >= ctx.start) & (slots < prompt_end[:, None]) & (ctx.attention_mask != 0)


def _boost_seen(ctx: Context, prompt_end: Int[Array, " batch"], token: Any
                ) -> Bool[Array, " batch"]:
    """Whether ``token`` is among the row's generated tokens."""
    return jnp.any(_generated(ctx, prompt_end) & (ctx.sequences == token), axis=1)


# --- states -----------------------------------------------------------------------------

@struct.dataclass
class PromptState:
    """prompt_end: [batch] int32, the first generated slot (``ctx.cur`` at ``init``); kept
    per row (not a scalar) so the state follows the leading-axis convention."""

    prompt_end: Int[Array, " batch"]


def _prompt_state(ctx: Context) -> PromptState:
    return PromptState(prompt_end=jnp.broadcast_to(jnp.asarray(ctx.cur, jnp.int32),
                                                   (_rows(ctx),)))


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


def _phrase_state(ctx: Context, it: int, count: Any = 0) -> PhraseState:
    b = _rows(ctx)
    return PhraseState(it=jnp.full((b,), it, jnp.int32),
                       count=jnp.broadcast_to(jnp.asarray(count, jnp.int32), (b,)),
                       since=jnp.broadcast_to(jnp.asarray(ctx.elapsed, jnp.float32), (b,)))


# --- processors -------------------------------------------------------------------------

def _set_boost_target(proc: Any, name: str, required: str, tokenizer: Any,
                      boost_token_str: str | None) -> None:
    """GenLength / MaxTime set-up: the boosted token (eos unless ``boost_token_str``) and
    the sentence-end token ids, read from the tokenizer at construction."""
    _check_tokenizer_only(name, tokenizer, boost_token_str=boost_token_str)
    if tokenizer is None:
        return
    if getattr(proc, required) is None:
        raise TypeError(f"{name}: {required} is required")
    tok = (_eos(name, tokenizer) if boost_token_str is None
           else _text_to_token(tokenizer, boost_token_str, last=False))
    object.__setattr__(proc, "boost_token", np.asarray(tok, np.int32))
    object.__setattr__(proc, "sentence_end", _sentence_end_ids(tokenizer))

@struct.dataclass
class GenLength(LogitsProcessor):
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
        _set_boost_target(self, "GenLength", "boost_factor", tokenizer, boost_token_str)
        object.__setattr__(self, "boost_factor", as_leaf(self.boost_factor, jnp.float32))
        object.__setattr__(self, "p", as_leaf(self.p, jnp.float32))
        object.__setattr__(self, "complete_sentences", as_leaf(self.complete_sentences, bool))

    def init(self, ctx: Context) -> PromptState:
        _built("GenLength", self.boost_token, self.sentence_end)
        return _prompt_state(ctx)

    def __call__(self, logits: Float[Array, "batch vocab"], state: PromptState,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], PromptState]:
        vocab = logits.shape[-1]
        n = (ctx.cur - state.prompt_end).astype(jnp.float32)                # [batch]
        p = jnp.asarray(self.p, jnp.float32)
        boost = self.boost_factor * n ** p / jnp.float32(10.0) ** p
        enabled = ~_boost_seen(ctx, state.prompt_end, self.boost_token)
        at_end = _member(ctx.last_tokens, _vocab_mask(self.sentence_end, vocab))
        enabled = enabled & (at_end | ~jnp.asarray(self.complete_sentences))
        hit = _one_hot(jnp.broadcast_to(self.boost_token, n.shape), vocab) & enabled[:, None]
        return jnp.where(hit, logits + boost[:, None], logits), state


@struct.dataclass
class CiteFromPrompt(LogitsProcessor):
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
        if tokenizer is not None:
            object.__setattr__(self, "eos_token_id", np.asarray(
                _eos("CiteFromPrompt", tokenizer, required=False), np.int32))
        object.__setattr__(self, "boost_factor", as_leaf(self.boost_factor, jnp.float32))
        object.__setattr__(self, "boost_eos", as_leaf(self.boost_eos, bool))
        object.__setattr__(self, "conditional_boost_factor",
                           as_leaf(self.conditional_boost_factor, jnp.float32))

    def init(self, ctx: Context) -> PromptState:
        _built("CiteFromPrompt", self.eos_token_id)
        return _prompt_state(ctx)

    def __call__(self, logits: Float[Array, "batch vocab"], state: PromptState,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], PromptState]:
        vocab = logits.shape[-1]
        seq = ctx.sequences
        in_prompt = _in_prompt(ctx, state.prompt_end)                       # [batch, buffer]
        cited = token_mask(jnp.where(in_prompt, seq, -1), vocab)            # [batch, vocab]
        eos = jnp.arange(vocab) == self.eos_token_id
        cited = cited | (eos & jnp.asarray(self.boost_eos))[None, :]
        logits = jnp.where(cited, logits + self.boost_factor, logits)
        # bigrams (slot j, j + 1) of the prompt whose first token is the row's last token
        pair = in_prompt[:, :-1] & in_prompt[:, 1:] & (seq[:, :-1] == ctx.last_tokens[:, None])
        follow = token_mask(jnp.where(pair, seq[:, 1:], -1), vocab)
        follow = follow & (ctx.cur > state.prompt_end)[:, None]
        return jnp.where(follow, logits + self.conditional_boost_factor, logits), state


@struct.dataclass
class ForceLastPhrase(LogitsProcessor):
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
        _check_tokenizer_only("ForceLastPhrase", tokenizer, phrase=phrase)
        if tokenizer is not None:
            table, n = _phrase("ForceLastPhrase", tokenizer, phrase)
            object.__setattr__(self, "phrase_tokens", table)
            object.__setattr__(self, "phrase_len", n)
            object.__setattr__(self, "eos_token_id",
                               np.asarray(_eos("ForceLastPhrase", tokenizer), np.int32))

    def init(self, ctx: Context) -> PhraseState:
        _built("ForceLastPhrase", self.phrase_tokens, self.phrase_len, self.eos_token_id)
        return _phrase_state(ctx, 0)

    def __call__(self, logits: Float[Array, "batch vocab"], state: PhraseState,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], PhraseState]:
        it = state.it
        begin = (_argmax(logits) == self.eos_token_id) & (it == 0)
        force = begin | ((it > 0) & (it < self.phrase_len))
        table = jnp.asarray(self.phrase_tokens)
        token = table[jnp.clip(it, 0, table.shape[0] - 1)]
        logits = _enforce(logits, _one_hot(token, logits.shape[-1]), force)
        return logits, state.replace(it=it + force.astype(jnp.int32))


@struct.dataclass
class MultipleChoice(LogitsProcessor):
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
        _check_tokenizer_only("MultipleChoice", tokenizer, choices=choices)
        if tokenizer is not None:
            if choices is None:
                choices = ["1", "2", "3", "4"]
            if isinstance(choices, str) or not list(choices):
                raise ValueError(f"MultipleChoice: choices must be a non-empty list of "
                                 f"strings, got {choices!r}")
            ids = [_text_to_token(tokenizer, c, last=False) for c in choices]
            object.__setattr__(self, "choice_tokens", pad_ids(ids))
            object.__setattr__(self, "delimiter_token", np.asarray(
                _text_to_token(tokenizer, delimiter, last=False), np.int32))
            object.__setattr__(self, "new_line_tokens",
                               pad_ids(_ids_ending_with(tokenizer, ("\n",))))
        object.__setattr__(self, "boost_first_words",
                           as_leaf(self.boost_first_words, jnp.float32))

    def init(self, ctx: Context) -> PromptState:
        _built("MultipleChoice", self.choice_tokens, self.delimiter_token,
               self.new_line_tokens)
        return _prompt_state(ctx)

    def __call__(self, logits: Float[Array, "batch vocab"], state: PromptState,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], PromptState]:
        vocab = logits.shape[-1]
        seq = ctx.sequences
        b, length = seq.shape
        slots = jnp.arange(length, dtype=jnp.int32)[None, :]
        in_prompt = _in_prompt(ctx, state.prompt_end)

        def ahead(x: Array, k: int, fill: Any) -> Array:   # x[:, i + k] at column i
            return jnp.concatenate([x[:, k:], jnp.full((b, k), fill, x.dtype)], axis=1)

        newline = _member(seq, _vocab_mask(self.new_line_tokens, vocab))
        pattern = (in_prompt & newline & (ahead(seq, 2, -1) == self.delimiter_token)
                   & ahead(in_prompt, 3, False))                            # [batch, buffer]
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
        allowed = jnp.broadcast_to(_vocab_mask(choices, vocab)[None, :], logits.shape)
        return _enforce(logits + boost, allowed, jnp.ones((b,), bool)), state


@struct.dataclass
class TriggerPhrase(LogitsProcessor):
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
        _check_tokenizer_only("TriggerPhrase", tokenizer, phrase=phrase,
                              trigger_token_phrase=trigger_token_phrase)
        if tokenizer is not None:
            if trigger_token_phrase is None and self.trigger_time is None:
                raise ValueError("TriggerPhrase: either trigger_token_phrase or trigger_time "
                                 "must be provided")
            count = self.trigger_count
            if count is None or isinstance(count, (bool, float, str)):
                raise TypeError(f"TriggerPhrase: trigger_count must be an int, got {count!r}")
            table, n = _phrase("TriggerPhrase", tokenizer, phrase)
            object.__setattr__(self, "phrase_tokens", table)
            object.__setattr__(self, "phrase_len", n)
            token = (-1 if trigger_token_phrase is None
                     else _text_to_token(tokenizer, trigger_token_phrase, last=False))
            object.__setattr__(self, "trigger_token", np.asarray(token, np.int32))
            if self.trigger_time is None:
                object.__setattr__(self, "trigger_time", np.float32(np.inf))
        object.__setattr__(self, "trigger_time", as_leaf(self.trigger_time, jnp.float32))
        object.__setattr__(self, "trigger_count", as_leaf(self.trigger_count, jnp.int32))
        object.__setattr__(self, "trigger_after", as_leaf(self.trigger_after, bool))

    @property
    def uses_clock(self) -> bool:
        """True unless ``trigger_time`` is known to be ``inf`` (``generate`` then drives the
        loop in chunks so ``ctx.elapsed`` advances)."""
        try:
            return bool(np.isfinite(np.asarray(self.trigger_time)))
        except Exception:  # a tracer
            return True

    def init(self, ctx: Context) -> PhraseState:
        _built("TriggerPhrase", self.phrase_tokens, self.phrase_len, self.trigger_token)
        return _phrase_state(ctx, -1, self.trigger_count)

    def __call__(self, logits: Float[Array, "batch vocab"], state: PhraseState,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], PhraseState]:
        it, left = state.it, state.count
        active = left > 0
        after = jnp.asarray(self.trigger_after)
        time_up = ctx.elapsed - state.since >= self.trigger_time
        trigger = active & (it == -1) & ((_argmax(logits) == self.trigger_token) | time_up)
        cont = active & ~trigger & (it >= 0) & (it < self.phrase_len)
        force = (trigger & ~after) | cont
        table = jnp.asarray(self.phrase_tokens)
        token = table[jnp.clip(jnp.where(trigger, 0, it), 0, table.shape[0] - 1)]
        logits = _enforce(logits, _one_hot(token, logits.shape[-1]), force)
        it = jnp.where(trigger, jnp.where(after, 0, 1), jnp.where(cont, it + 1, it))
        done = active & (it == self.phrase_len)           # phrase completed: re-arm
        return logits, PhraseState(
            it=jnp.where(done, -1, it).astype(jnp.int32),
            count=left - done.astype(jnp.int32),
            since=jnp.where(done, ctx.elapsed, state.since).astype(jnp.float32))


@struct.dataclass
class PreventHallucination(LogitsProcessor):
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
        if tokenizer is not None:
            if isinstance(self.minp, (int, float)) and not 0.0 <= self.minp <= 1.0:
                raise ValueError(f"PreventHallucination: minp must be a probability in "
                                 f"[0, 1], got {self.minp!r} (jaxgen's processors take no "
                                 f"batch_size argument)")
            table, n = _phrase("PreventHallucination", tokenizer, phrase)
            object.__setattr__(self, "phrase_tokens", table)
            object.__setattr__(self, "phrase_len", n)
        object.__setattr__(self, "minp", as_leaf(self.minp, jnp.float32))
        object.__setattr__(self, "tolerate", as_leaf(self.tolerate, jnp.int32))

    def init(self, ctx: Context) -> PhraseState:
        _built("PreventHallucination", self.phrase_tokens, self.phrase_len)
        return _phrase_state(ctx, 0)

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
        logits = _enforce(logits, _one_hot(token, logits.shape[-1]), force)
        return logits, state.replace(
            it=jnp.where(force, it + 1, jnp.where(reset, 0, it)).astype(jnp.int32),
            count=jnp.where(reset, 0, low).astype(jnp.int32))


@struct.dataclass
class MaxTime(LogitsProcessor):
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
        _set_boost_target(self, "MaxTime", "max_time", tokenizer, boost_token_str)
        object.__setattr__(self, "max_time", as_leaf(self.max_time, jnp.float32))
        object.__setattr__(self, "complete_sentences", as_leaf(self.complete_sentences, bool))

    def init(self, ctx: Context) -> PromptState:
        _built("MaxTime", self.boost_token, self.sentence_end, self.max_time)
        return _prompt_state(ctx)

    def __call__(self, logits: Float[Array, "batch vocab"], state: PromptState,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], PromptState]:
        vocab = logits.shape[-1]
        enabled = ~_boost_seen(ctx, state.prompt_end, self.boost_token)
        at_end = _member(ctx.last_tokens, _vocab_mask(self.sentence_end, vocab))
        enabled = enabled & (at_end | ~jnp.asarray(self.complete_sentences))
        when = enabled & (ctx.elapsed >= self.max_time)
        token = jnp.broadcast_to(jnp.asarray(self.boost_token, jnp.int32), enabled.shape)
        return _enforce(logits, _one_hot(token, vocab), when), state


__all__ = ["CiteFromPrompt", "ForceLastPhrase", "GenLength", "MaxTime", "MultipleChoice",
           "PhraseState", "PreventHallucination", "PromptState", "TriggerPhrase"]
