"""Prefill + ``lax.while_loop`` driver.

``prefill`` runs the padded prompt through the model, builds the state and picks the
first token; ``run_steps(spec, params, state, n)`` advances the state by at most ``n``
tokens inside one jitted ``while_loop`` (state donated). ``generate`` runs it to the
end in one call; streaming and host-side criteria run it in chunks.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from jaxgen.decoding.beam import BeamState, beam_choose, init_beam_state
from jaxgen.decoding.diverse import GroupBeamState, group_beam_choose, init_group_state
from jaxgen.decoding.sample import choose
from jaxgen.decoding.state import DecodeState, Knobs
from jaxgen.models.base import positions_from_mask


@dataclasses.dataclass(frozen=True)
class DecodeSpec:
    """Static structure of a decode: keys the compile cache together with shapes."""

    model: Any
    do_sample: bool = False
    output_scores: bool = False
    new_bucket: int = 32      # generated slots preallocated after the prompt bucket
    num_beams: int = 1        # > 1: beam search (rows are batch * num_beams)
    early_stopping: Any = False  # True / False / "never" (beam search)
    n_keep: int = 0           # beam candidates kept per step: max(2, 1 + n_eos) * num_beams
    num_beam_groups: int = 1  # > 1: diverse (group) beam search
    n_eos: int = 0            # number of eos ids (group beam search candidate count)


State = DecodeState | BeamState | GroupBeamState


def _choose(spec: DecodeSpec, state: State, logits: jax.Array) -> State:
    if spec.num_beam_groups > 1:
        return group_beam_choose(state, logits, model=spec.model, num_beams=spec.num_beams,
                                 num_groups=spec.num_beam_groups, n_eos=spec.n_eos,
                                 early_stopping=spec.early_stopping,
                                 diversity_penalty=state.knobs.diversity_penalty,
                                 output_scores=spec.output_scores)
    if spec.num_beams > 1:
        return beam_choose(state, logits, model=spec.model, num_beams=spec.num_beams,
                           n_keep=spec.n_keep, do_sample=spec.do_sample,
                           early_stopping=spec.early_stopping,
                           output_scores=spec.output_scores)
    return choose(state, logits, spec.do_sample, spec.output_scores)


@partial(jax.jit, static_argnums=0)
def prefill(spec: DecodeSpec, params: Any, input_ids: jax.Array, attention_mask: jax.Array,
            knobs: Knobs, rng: Any, start: jax.Array, max_len: jax.Array) -> State:
    """Run the prompt ``[batch, P]`` (left-padded) and choose the first new token.

    ``start``: first slot of the caller's ids (bucket padding before it);
    ``max_len``: the slot generation stops at (``start`` + transformers' max_length);
    ``rng``: one typed key, split into one stream per row with ``fold_in(rng, row)``.
    """
    b, p = input_ids.shape
    rng = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(rng, jnp.arange(b))  # row streams
    length = p + spec.new_bucket
    mask = jnp.concatenate([attention_mask, jnp.zeros((b, spec.new_bucket), jnp.int32)], 1)
    positions = positions_from_mask(attention_mask)
    out, cache = spec.model.apply(params, input_ids, positions,
                                  spec.model.init_cache(b, length), mask)
    sequences = jnp.concatenate(
        [input_ids, jnp.broadcast_to(knobs.pad, (b, spec.new_bucket)).astype(jnp.int32)], 1)
    vocab = out.shape[-1]
    common = dict(sequences=sequences, attention_mask=mask, position=positions[:, -1],
                  cache=cache, cur=jnp.asarray(p, jnp.int32), start=start.astype(jnp.int32),
                  max_len=max_len.astype(jnp.int32), elapsed=jnp.zeros((), jnp.float32),
                  rng=rng, knobs=knobs, prompt_end=p)
    if spec.num_beam_groups > 1:
        state = init_group_state(common, spec.num_beams, spec.num_beam_groups, vocab,
                                 spec.output_scores)
    elif spec.num_beams > 1:
        state = init_beam_state(common, spec.num_beams, vocab, spec.output_scores)
    else:
        state = DecodeState(
            **common, done=jnp.zeros((b,), bool), proc_state=None,
            scores=(jnp.zeros((b, spec.new_bucket, vocab), jnp.float32)
                    if spec.output_scores else None))
    ctx = state.context()
    state = state.replace(proc_state=(knobs.processors.init(ctx), knobs.warpers.init(ctx)))
    return _choose(spec, state, out[:, -1])


def _step(spec: DecodeSpec, params: Any, state: State) -> State:
    """Feed the token of slot ``cur - 1`` to the model and choose the token of slot ``cur``."""
    tokens = jax.lax.dynamic_slice_in_dim(state.sequences, state.cur - 1, 1, axis=1)
    out, cache = spec.model.apply(params, tokens, state.position[:, None], state.cache,
                                  state.attention_mask)
    return _choose(spec, state.replace(cache=cache), out[:, 0])


def is_running(state: State) -> jax.Array:
    """True while the loop should go on (a slot is left and the strategy is not done)."""
    return state.running()


@partial(jax.jit, static_argnums=0, donate_argnums=2)
def run_steps(spec: DecodeSpec, params: Any, state: State, n: jax.Array) -> State:
    """Advance ``state`` by at most ``n`` tokens (stops early when all rows are done)."""

    def cond(carry):
        i, s = carry
        return (i < n) & is_running(s)

    def body(carry):
        i, s = carry
        return i + 1, _step(spec, params, s)

    _, state = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), state))
    return state
