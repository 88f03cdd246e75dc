"""Per-request numbers as per-slot arrays, and the one processor chain built from them.

Every slot runs the same chain (its *structure* keys the decode compile); what differs
between requests are the numbers, one row per slot::

    logit_bias > repetition_penalty > presence/frequency penalty > min_new_tokens
                                                             (processors, `jaxgen.chains` order)
    temperature > top_k > top_p > min_p                      (warpers, transformers' order)
    stop strings                                             (an in-loop criterion)

A request that does not set a knob gets its neutral value (penalty 1.0, top_p 1.0,
min_p 0.0, ...), which leaves the logits exactly as they were, so a request's tokens
equal `jaxgen.generate` on that request alone (whose chain simply lacks the processor).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxgen import processors as P
from jaxgen.decoding.state import Knobs
from jaxgen.ops import NEG_INF, bias_row
from jaxgen.processors.base import Context, LogitsProcessor, pytree_dataclass
from jaxgen.stopping import StopStringMatcher


@dataclasses.dataclass(frozen=True, kw_only=True)
class Limits:
    """The static sizes of an engine's per-request settings (they key the compiles).

    k_max: sampling draws among at most this many candidates (``top_k`` in 1..k_max).
    max_eos: eos ids per request. max_stop_strings / max_stop_bytes: stop strings per
    request and their longest UTF-8 length (0 strings: no stop-string criterion).
    penalties: include the repetition / presence / frequency processors.
    max_logit_bias: ``logit_bias`` entries per request (0: no bias processor; OpenAI's
    own limit is 300).
    """

    k_max: int = 64
    max_eos: int = 4
    max_stop_strings: int = 4
    max_stop_bytes: int = 32
    penalties: bool = True
    max_logit_bias: int = 300

    def __post_init__(self) -> None:
        for name in ("k_max", "max_eos", "max_stop_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("max_stop_strings", "max_logit_bias"):
            n = getattr(self, name)
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"{name} must be an int >= 0, got {n!r}")


@struct.dataclass
class RowSettings:
    """One request's numbers per slot; every leaf has the slots as its leading axis."""

    greedy: Bool[Array, " slots"]                 # argmax instead of a draw
    temperature: Float[Array, " slots"]
    top_k: Int[Array, " slots"]
    top_p: Float[Array, " slots"]
    min_p: Float[Array, " slots"]
    repetition_penalty: Float[Array, " slots"]
    presence_penalty: Float[Array, " slots"]
    frequency_penalty: Float[Array, " slots"]
    eos: Int[Array, "slots n_eos"]                # eos ids, -1 padded
    stop: Int[Array, "slots n_stop stop_bytes"]   # reversed stop strings (stop_targets)
    stop_lengths: Int[Array, "slots n_stop"]      # 0: no string
    prompt_len: Int[Array, " slots"]              # slot of the request's first new token
    bias_ids: Int[Array, "slots n_bias"]          # logit_bias token ids, -1 padded
    bias_values: Float[Array, "slots n_bias"]     # their biases (0 on padding)
    min_new: Int[Array, " slots"]                 # min_new_tokens: eos banned before


@pytree_dataclass
class RowLogitBias(LogitsProcessor):
    """OpenAI's ``logit_bias`` with one table per row: ``values[r]`` added at ``ids[r]``
    (ids -1 padded, so a row without bias is left exactly as it was)."""

    ids: Int[Array, "rows n"]
    values: Float[Array, "rows n"]

    def __call__(self, logits: Float[Array, "rows vocab"], state: Any, ctx: Context
                 ) -> tuple[Float[Array, "rows vocab"], Any]:
        rows = jax.vmap(bias_row, in_axes=(0, 0, None))(self.ids, self.values,
                                                        logits.shape[-1])  # [rows, vocab]
        return logits + rows.astype(logits.dtype), state


@pytree_dataclass
class RowMinNewTokens(LogitsProcessor):
    """transformers' ``MinNewTokensLength`` with per-row eos ids: ban row ``r``'s eos ids
    while it has fewer than ``min_new[r]`` new tokens (``ctx.cur - prompt_len``)."""

    min_new: Int[Array, " rows"]
    prompt_len: Int[Array, " rows"]
    eos: Int[Array, "rows n_eos"]

    def __call__(self, logits: Float[Array, "rows vocab"], state: Any, ctx: Context
                 ) -> tuple[Float[Array, "rows vocab"], Any]:
        vocab = jnp.arange(logits.shape[-1], dtype=jnp.int32)
        is_eos = (vocab[None, None, :] == self.eos[:, :, None]).any(1)   # [rows, vocab]
        early = (ctx.cur_rows - self.prompt_len) < self.min_new          # [rows]
        return jnp.where(early[:, None] & is_eos, NEG_INF, logits), state


def neutral_rows(rows: int, limits: Limits) -> RowSettings:
    """``rows`` rows of neutral settings (greedy, no penalty, no eos, no stop string)."""
    def full(value: Any, dtype: Any, *shape: int) -> np.ndarray:
        return np.full((rows, *shape), value, dtype)

    f32 = np.float32
    return RowSettings(
        greedy=full(True, bool), temperature=full(1.0, f32), top_k=full(limits.k_max, np.int32),
        top_p=full(1.0, f32), min_p=full(0.0, f32), repetition_penalty=full(1.0, f32),
        presence_penalty=full(0.0, f32), frequency_penalty=full(0.0, f32),
        eos=full(-1, np.int32, limits.max_eos),
        stop=full(0, np.int32, max(limits.max_stop_strings, 1), limits.max_stop_bytes),
        stop_lengths=full(0, np.int32, max(limits.max_stop_strings, 1)),
        prompt_len=full(0, np.int32), bias_ids=full(-1, np.int32, max(limits.max_logit_bias, 1)),
        bias_values=full(0.0, f32, max(limits.max_logit_bias, 1)), min_new=full(0, np.int32))


def knobs_for(s: RowSettings, stop_table: tuple[Any, Any] | None, *, vocab: int,
              limits: Limits, pad: Any) -> Knobs:
    """The chain of every slot with the numbers of ``s`` (host arrays or traced).

    stop_table: ``(table [vocab, bytes], lengths [vocab])`` of the tokenizer (see
    `jaxgen.stopping.StopStringMatcher`), or None for no stop strings.
    """
    processors: list[Any] = []
    if limits.max_logit_bias:
        processors.append(RowLogitBias(ids=s.bias_ids, values=s.bias_values))
    if limits.penalties:
        zeros = jnp.zeros_like(jnp.asarray(s.prompt_len))
        processors += [P.RepetitionPenalty(s.repetition_penalty, prompt_ignore_length=zeros,
                                           vocab_size=vocab),
                       P.PresenceFrequencyPenalty(s.presence_penalty, s.frequency_penalty,
                                                  vocab_size=vocab)]
    processors.append(RowMinNewTokens(min_new=s.min_new, prompt_len=s.prompt_len, eos=s.eos))
    warpers = (P.Temperature(s.temperature), P.TopK(s.top_k, k_max=limits.k_max),
               P.TopP(s.top_p), P.MinP(s.min_p))
    stopping: tuple[Any, ...] = ()
    if stop_table is not None and limits.max_stop_strings:
        table, lengths = stop_table
        stopping = (StopStringMatcher(table=table, lengths=lengths, targets=s.stop,
                                      target_lengths=s.stop_lengths,
                                      window=limits.max_stop_bytes + 1),)
    return Knobs(processors=P.Chain(tuple(processors)), warpers=P.Chain(warpers), eos=s.eos,
                 pad=jnp.asarray(pad, jnp.int32), length_penalty=jnp.ones((), jnp.float32),
                 diversity_penalty=jnp.zeros((), jnp.float32), stopping=stopping)


def stop_table_of(knobs: Knobs) -> tuple[Any, Any] | None:
    """The tokenizer tables of the stop-string criterion in ``knobs`` (None if absent)."""
    if not knobs.stopping:
        return None
    matcher = knobs.stopping[0]
    return matcher.table, matcher.lengths
