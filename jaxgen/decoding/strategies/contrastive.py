"""Contrastive search (Su et al. 2022), transformers 4.55 ``_contrastive_search`` semantics.

Each step, per row ``b`` (``K = top_k`` candidates)::

    p          = softmax(processors(logits))                    [B, V]
    top_p, ids = top_k(p, K)                                    [B, K]
    h_cand     = last hidden state of each candidate            [B*K, d]   ONE forward of
                                                                           B*K rows, 1 token
    penalty    = max over earlier slots of cos(h_context, h_cand)          [B, K]
    choose     argmax((1 - alpha) * top_p - alpha * penalty)

The chosen candidate's cache row, logits (the next step's) and hidden state (the context
from then on) are kept, so the model runs once per token. The cache holds ``B*K`` rows
throughout (every group of ``K`` equal after a step), like transformers' expanded cache.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float, Int

from jaxgen.decoding.kernel import commit, process, put
from jaxgen.decoding.output import GenerateOutput
from jaxgen.decoding.protocol import Request, Strategy, finalize_rows
from jaxgen.decoding.record import FLAGS, model_apply, model_wants, record, select
from jaxgen.decoding.state import DecodeState, LoopState
from jaxgen.ops import update_bits


@struct.dataclass
class ContrastiveSub:
    """Contrastive search's own state (``B`` rows, ``T`` buffer slots)."""

    logits: Float[Array, "B V"]        # raw logits of the next token (the chosen candidate's)
    context: Float[Array, "B T d"]     # last-layer hidden state of every slot before cur


def degeneration(context: Float[Array, "B T d"], visible: Array, cand: Float[Array, "B K d"]
                 ) -> Float[Array, "B K"]:
    """Per candidate, the largest cosine similarity to a visible context slot
    (transformers' ``_ranking_fast``)."""
    def unit(x: Array) -> Array:
        norm = jnp.linalg.norm(x, axis=-1, keepdims=True)
        return x / jnp.where(norm == 0, 1, norm)

    cos = jnp.einsum("btd,bkd->bkt", unit(context), unit(cand))
    cos = jnp.where(visible[:, None, :], cos, jnp.finfo(cos.dtype).min)
    return cos.max(axis=-1)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContrastiveSearch(Strategy):
    """``top_k`` candidates per step, re-ranked with the degeneration penalty (the
    ``penalty_alpha`` knob travels in ``Knobs``)."""

    top_k: int
    needs: ClassVar[tuple[str, ...]] = ("hidden_states",)
    outputs: ClassVar[frozenset[str]] = frozenset(FLAGS)
    continues: ClassVar[bool] = False   # it needs the hidden state of every cached token

    def init(self, model: Any, params: Any, first_logits: Any, loop: LoopState, aux: Any,
             extras: dict[str, Any] | None = None) -> DecodeState:
        b, length = loop.sequences.shape
        last = extras["hidden_states"][-1]                           # [B, P, d]
        context = jnp.zeros((b, length, last.shape[-1]), last.dtype)
        context = update_bits(context, last, (0, loop.prompt_end - last.shape[1], 0))
        cache = model.reorder_cache(loop.cache, jnp.repeat(jnp.arange(b), self.top_k))
        sub = ContrastiveSub(logits=first_logits.astype(jnp.float32), context=context)
        return self.step(model, params, DecodeState(loop=loop.replace(cache=cache), sub=sub))

    def step(self, model: Any, params: Any, state: DecodeState) -> DecodeState:
        """Score the top-k candidates in one forward pass, keep the best of each row."""
        loop, sub, k = state.loop, state.sub, self.top_k
        b = loop.rows
        pstate, wstate = loop.proc_state
        processed, pstate = process(loop.knobs, sub.logits, pstate, loop.context())
        top_p, top_ids = jax.lax.top_k(jax.nn.softmax(processed, axis=-1), k)   # [B, K]
        mask = put(loop.attention_mask, jnp.ones((b,), jnp.int32), loop.cur)
        logits, cache, extras = model_apply(
            model, params, top_ids.reshape(b * k, 1), jnp.repeat(loop.position + 1, k)[:, None],
            loop.cache, jnp.repeat(mask, k, axis=0),
            ("hidden_states", *model_wants(loop.trace)))
        hidden = extras["hidden_states"][-1][:, 0]                   # [B*K, d]
        slots = jnp.arange(loop.sequences.shape[1])
        visible = (loop.attention_mask != 0) & (slots[None, :] < loop.cur)
        penalty = degeneration(sub.context, visible, hidden.reshape(b, k, -1))
        alpha = loop.knobs.penalty_alpha
        choice = jnp.argmax((1.0 - alpha) * top_p - alpha * penalty, axis=-1)   # [B]
        chosen = (jnp.arange(b) * k + choice).astype(jnp.int32)
        trace = record(loop.trace, sub.logits, select(extras, chosen), loop.cur,
                       loop.new_tokens)
        tokens = jnp.take_along_axis(top_ids, choice[:, None], axis=1)[:, 0].astype(jnp.int32)
        context = _put_rows(sub.context, hidden[chosen], loop.cur)
        loop = commit(loop.replace(trace=trace), tokens, processed, (pstate, wstate))
        loop = loop.replace(cache=model.reorder_cache(cache, jnp.repeat(chosen, k)))
        return DecodeState(loop=loop, sub=ContrastiveSub(logits=logits[chosen, 0],
                                                         context=context))

    def finalize(self, state: DecodeState, request: Request) -> GenerateOutput:
        loop = state.loop
        rows = jnp.arange(loop.rows, dtype=jnp.int32) * self.top_k   # one cache row per row
        return finalize_rows(state, request, cache=loop.model.reorder_cache(loop.cache, rows))


def _put_rows(buf: Float[Array, "B T d"], x: Float[Array, "B d"], slot: Int[Array, ""]
              ) -> Float[Array, "B T d"]:
    """``buf`` with ``x`` at ``slot`` of every row."""
    return update_bits(buf, x[:, None, :], (0, slot, 0))
