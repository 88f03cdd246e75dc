"""DoLa: decoding by contrasting layers (Chuang et al. 2024), transformers 4.55
``_dola_decoding`` semantics.

Each step the final layer's next-token logits are contrasted with those of a premature
layer (the output head applied to that layer's hidden state, no final norm, as
transformers' ``lm_head(hidden_states[layer])``)::

    premature  = the candidate layer whose distribution is furthest (Jensen-Shannon,
                 averaged over the batch) from the final one; the only one if one is given
    logits     = log_softmax(final) - log_softmax(premature), where the final token
                 probability is within 10x of the best (else -inf)

then the usual processors and greedy / sampling pick (``repetition_penalty >= 1.2`` is
what transformers recommends with DoLa). The raw logits recorded (``output_logits``)
are the final layer's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import xlogy
from jaxtyping import Array, Float

from jaxgen.decoding.kernel import advance, feed
from jaxgen.decoding.protocol import Strategy
from jaxgen.decoding.record import FLAGS
from jaxgen.decoding.state import DecodeState, LoopState


def candidate_layers(dola_layers: Any, n_layers: int, tied: bool) -> tuple[int, ...]:
    """transformers' choice of candidate premature layers (indices into hidden_states:
    0 is the embeddings). ValueError naming ``dola_layers`` when none is left."""
    start = 0 if not tied else 2 if n_layers > 2 else 1 if n_layers == 2 else 0
    if dola_layers == "low":
        layers = [start] if start == n_layers // 2 else (
            range(start, n_layers // 2, 2) if n_layers <= 40 else range(start, 20, 2))
    elif dola_layers == "high":
        layers = (range(n_layers // 2, n_layers, 2) if n_layers <= 40
                  else range(n_layers - 20, n_layers, 2))
    else:
        layers = [i for i in dola_layers if i < n_layers]
    layers = tuple(int(i) for i in layers)
    if not layers:
        raise ValueError(f"GenerationConfig.dola_layers={dola_layers!r} leaves no candidate "
                         f"layer on a model of {n_layers} layers; allowed: 'low', 'high' or "
                         f"layer indices < {n_layers}")
    return layers


def relative_top(final: Float[Array, "B V"], base: Float[Array, "B V"], keep: float = 0.1
                 ) -> Float[Array, "B V"]:
    """``log_softmax(final) - log_softmax(base)`` where the final probability is at least
    ``keep`` times the best one, -inf elsewhere (transformers' ``_relative_top_filter``)."""
    s, b = jax.nn.log_softmax(final, axis=-1), jax.nn.log_softmax(base, axis=-1)
    low = s < (s.max(axis=-1, keepdims=True) + np.log(keep))
    return jnp.where(low, -jnp.inf, s) - jnp.where(low, -1e-3, b)


def contrast(final: Float[Array, "B V"], premature: Float[Array, "n B V"]
             ) -> Float[Array, "B V"]:
    """The DoLa logits (see the module docstring)."""
    if premature.shape[0] == 1:
        return relative_top(final, premature[0])
    avg = 0.5 * (jax.nn.softmax(final, axis=-1)[None] + jax.nn.softmax(premature, axis=-1))
    # torch's kl_div(input, target) = target * (log target - input), 0 where target == 0
    kl1 = (xlogy(avg, avg) - avg * jax.nn.log_softmax(final, axis=-1)[None]).mean(-1)
    kl2 = (xlogy(avg, avg) - avg * jax.nn.log_softmax(premature, axis=-1)).mean(-1)
    js = (0.5 * (kl1 + kl2)).mean(-1)                      # [n]: averaged over the batch
    return relative_top(final, premature[jnp.argmax(js)])


@dataclasses.dataclass(frozen=True, kw_only=True)
class DoLa(Strategy):
    """DoLa over the candidate ``layers`` (indices into hidden_states), greedy or sampling."""

    layers: tuple[int, ...]
    do_sample: bool = False
    needs: ClassVar[tuple[str, ...]] = ("hidden_states",)
    outputs: ClassVar[frozenset[str]] = frozenset(FLAGS)

    def _logits(self, model: Any, params: Any, final: Array, extras: dict[str, Any]) -> Array:
        hs = extras["hidden_states"]
        early = jnp.stack([model.head(params, hs[i][:, -1:], norm=False)[:, 0]
                           for i in self.layers])                 # [n, B, V]
        return contrast(final.astype(jnp.float32), early.astype(jnp.float32))

    def init(self, model: Any, params: Any, first_logits: Any, loop: LoopState, aux: Any,
             extras: dict[str, Any] | None = None) -> DecodeState:
        logits = self._logits(model, params, first_logits, extras)
        return DecodeState(loop=advance(loop, logits, self.do_sample))

    def step(self, model: Any, params: Any, state: DecodeState) -> DecodeState:
        final, loop, extras = feed(params, state.loop, self.needs)
        logits = self._logits(model, params, final, extras)
        return DecodeState(loop=advance(loop, logits, self.do_sample))
