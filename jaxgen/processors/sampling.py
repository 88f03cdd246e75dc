"""Sampling warpers: temperature, top-k, top-p, min-p, typical, epsilon, eta, top-h.

All of them are ``is_warper``: they only look at the multiset of values within a row
(masked entries are -inf), never at token ids or the row width, so the sampler can run
them on the top-k candidates (``[batch, k_max]``) instead of the whole vocabulary.
Used on full rows (``apply``, ``output_scores``) they match transformers. Where
transformers breaks ties by sort position, these keep every token tied at the cut.

Every number (``temperature``, ``top_k``, ``top_p``, ...) is a scalar for the whole
batch or a ``[rows]`` array, one value per row (the continuous-batching engine gives
every request its own); a scalar takes the same code path as before.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool, Float

from jaxgen.ops import (
    NEG_INF,
    as_column,
    as_leaf,
    bucket,
    check_int,
    check_number,
    is_host_value,
    kth_value,
    set_leaves,
    top_k_threshold,
)
from jaxgen.processors.base import LogitsProcessor, pytree_dataclass

__all__ = ["NEG_INF", "Epsilon", "Eta", "MinP", "Temperature", "TopH", "TopK", "TopP",
           "Typical", "bucket_k"]

# Rows up to this width are sorted exactly (transformers' algorithm); wider rows use a
# threshold search, since a full-vocabulary sort is very slow on XLA:CPU.
_SORT_MAX = 1024


def bucket_k(k: int) -> int:
    """Static top-k width for a traced k: the next power of two, at least 64."""
    return bucket(k, 64)


def _check_min_keep(name: str, value: Any) -> None:
    check_int(f"{name}.min_tokens_to_keep", value, 1, static=True)


def _setup(proc: Any, field: str, lo_open: bool, hi_open: bool) -> None:
    """``__post_init__`` of a probability-cut warper: check ``proc.<field>`` (in [0, 1],
    ends as given; a scalar or one per row) and ``min_tokens_to_keep`` when the warper
    has one, then store the number as a float32 leaf."""
    name, value = type(proc).__name__, getattr(proc, field)
    lo, hi = "(" if lo_open else "[", ")" if hi_open else "]"
    check_number(f"{name}.{field}", value,
                 lambda v: ((v > 0) if lo_open else (v >= 0)) & ((v < 1) if hi_open else (v <= 1)),
                 f"a float in {lo}0, 1{hi}")
    if hasattr(proc, "min_tokens_to_keep"):
        _check_min_keep(name, proc.min_tokens_to_keep)
    object.__setattr__(proc, field, as_leaf(value, jnp.float32))


def _cut(logits: Float[Array, "batch n"], number: Any, min_keep: int, sort: Any,
         search: Any, filter_value: float) -> Float[Array, "batch n"]:
    """Keep what ``sort(logits, number, min_keep)`` keeps on rows up to 1024 wide (an
    exact sort) or ``search(...)`` on wider ones (no sort); ``filter_value`` elsewhere."""
    fn = sort if logits.shape[-1] <= _SORT_MAX else search
    return jnp.where(fn(logits, as_column(number), min_keep), logits, filter_value)


@pytree_dataclass
class Temperature(LogitsProcessor):
    """``logits / temperature``."""

    temperature: Any = 1.0
    is_warper: ClassVar[bool] = True

    def __post_init__(self):
        check_number("Temperature.temperature", self.temperature, lambda v: v > 0,
                     "a float > 0")
        set_leaves(self, jnp.float32, "temperature")

    def __call__(self, logits, state, ctx):
        return logits / as_column(self.temperature), state


@pytree_dataclass
class TopK(LogitsProcessor):
    """Keep the ``top_k`` largest logits per row (ties at the k-th value kept).

    ``top_k`` is traced (a scalar or one per row); ``k_max`` (static, default the next
    power of two >= the largest top_k, at least 64) bounds it, so changing top_k within
    that bound does not recompile.
    """

    top_k: Any = 50
    filter_value: float = struct.field(pytree_node=False, default=NEG_INF)
    min_tokens_to_keep: int = struct.field(pytree_node=False, default=1)
    k_max: int | None = struct.field(pytree_node=False, default=None)
    is_warper: ClassVar[bool] = True

    def __post_init__(self):
        k = self.top_k
        check_number("TopK.top_k", k, lambda v: v > 0, "a positive int", integer=True)
        _check_min_keep("TopK", self.min_tokens_to_keep)
        if self.k_max is None and is_host_value(k):
            largest = int(np.max(k)) if np.size(k) else 1
            object.__setattr__(self, "k_max", bucket_k(max(largest, self.min_tokens_to_keep)))
        elif self.k_max is None:
            raise ValueError("TopK.k_max must be given when top_k is a jax array")
        object.__setattr__(self, "top_k", as_leaf(k, jnp.int32))

    def effective_k(self) -> Any:
        return jnp.maximum(self.top_k, self.min_tokens_to_keep)

    def __call__(self, logits, state, ctx):
        thr = top_k_threshold(logits, self.effective_k(), self.k_max)
        return jnp.where(logits < thr, self.filter_value, logits), state

    def candidates(self, logits):
        """``(values, ids)`` of the ``k_max`` best tokens, values beyond rank k filtered.

        values: [batch, k_max] sorted descending; ids: [batch, k_max] int32.
        """
        vals, ids = jax.lax.top_k(logits, min(self.k_max, logits.shape[-1]))
        thr = kth_value(vals, self.effective_k())
        return jnp.where(vals < thr, self.filter_value, vals), ids.astype(jnp.int32)


@pytree_dataclass
class TopP(LogitsProcessor):
    """Nucleus filtering: keep the smallest set of best tokens whose mass reaches top_p."""

    top_p: Any = 1.0
    filter_value: float = struct.field(pytree_node=False, default=NEG_INF)
    min_tokens_to_keep: int = struct.field(pytree_node=False, default=1)
    is_warper: ClassVar[bool] = True

    def __post_init__(self):
        _setup(self, "top_p", lo_open=False, hi_open=False)

    def __call__(self, logits, state, ctx):
        return _cut(logits, self.top_p, self.min_tokens_to_keep, _top_p_keep_sorted,
                    _top_p_keep_search, self.filter_value), state


def _top_p_keep_sorted(logits, top_p, min_keep):
    """transformers' rule on an ascending sort: drop where cumsum(probs) <= 1 - top_p
    (``top_p``: a scalar or ``[batch, 1]``, as for the other ``_keep`` functions)."""
    order = jnp.argsort(logits, axis=-1)                        # ascending, stable
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    remove = cum <= (1.0 - top_p)
    n = logits.shape[-1]
    remove = remove & (jnp.arange(n) < n - min_keep)            # keep the best min_keep
    # scatter back: keep[b, order[b, j]] = ~remove[b, j]
    keep = jnp.zeros_like(remove).at[jnp.arange(logits.shape[0])[:, None], order].set(~remove)
    return keep


def _top_p_keep_search(logits, top_p, min_keep, iters: int = 40):
    """Same set as the sort, found by bisection on the probability threshold.

    A token is kept iff the mass of strictly more probable tokens is < top_p; that set
    is ``{p >= t*}``; bisection keeps ``mass(p > lo) >= top_p`` and ``mass(p > hi) < top_p``.
    """
    probs = jax.nn.softmax(logits, axis=-1)
    hi = jnp.max(probs, axis=-1, keepdims=True)
    lo = jnp.zeros_like(hi)

    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        above = jnp.sum(jnp.where(probs > mid, probs, 0.0), axis=-1, keepdims=True)
        ok = above < top_p
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    lo, hi = jax.lax.fori_loop(0, iters, body, (lo, hi))
    keep = probs > lo
    if min_keep > 1:
        keep = keep | (logits >= top_k_threshold(logits, min_keep, min_keep))
    return keep | (probs >= jnp.max(probs, axis=-1, keepdims=True))


@pytree_dataclass
class MinP(LogitsProcessor):
    """Drop tokens with probability below ``min_p`` times the best token's probability."""

    min_p: Any = 0.0
    filter_value: float = struct.field(pytree_node=False, default=NEG_INF)
    min_tokens_to_keep: int = struct.field(pytree_node=False, default=1)
    is_warper: ClassVar[bool] = True

    def __post_init__(self):
        _setup(self, "min_p", lo_open=False, hi_open=False)

    def __call__(self, logits, state, ctx):
        probs = jax.nn.softmax(logits, axis=-1)
        remove = probs < as_column(self.min_p) * jnp.max(probs, axis=-1, keepdims=True)
        if self.min_tokens_to_keep > 1:
            k = self.min_tokens_to_keep
            remove = remove & (logits < top_k_threshold(logits, k, k))
        return jnp.where(remove, self.filter_value, logits), state


def _entropy(logp: Float[Array, "batch n"]) -> Float[Array, "batch 1"]:
    """``-sum(p * log p)`` per row; masked (-inf) entries contribute 0."""
    terms = jnp.where(jnp.isfinite(logp), jnp.exp(logp) * logp, 0.0)
    return -jnp.sum(terms, axis=-1, keepdims=True)


def _keep_best(logits: Float[Array, "batch n"], min_keep: int) -> Bool[Array, "batch n"]:
    """The ``min_keep`` largest logits per row (ties at the cut kept), as transformers'
    ``scores >= topk(scores, min_keep)[-1]``; a row maximum for ``min_keep == 1``."""
    if min_keep == 1:
        return logits >= jnp.max(logits, axis=-1, keepdims=True)
    return logits >= top_k_threshold(logits, min_keep, min_keep)


@pytree_dataclass
class Typical(LogitsProcessor):
    """Locally typical filtering (transformers' ``TypicalLogitsWarper``).

    Tokens are ranked by their surprisal distance ``|-log p - H|`` to the row entropy
    ``H``; the closest ones are kept until their mass reaches ``mass``. Rows up to 1024
    wide are sorted like transformers; wider rows find the same distance cut by an
    exact bisection on its float32 bit pattern (no full-vocabulary sort).
    """

    mass: Any = 0.9
    filter_value: float = struct.field(pytree_node=False, default=NEG_INF)
    min_tokens_to_keep: int = struct.field(pytree_node=False, default=1)
    is_warper: ClassVar[bool] = True

    def __post_init__(self):
        _setup(self, "mass", lo_open=True, hi_open=True)

    def __call__(self, logits, state, ctx):
        return _cut(logits, self.mass, self.min_tokens_to_keep, _typical_keep_sorted,
                    _typical_keep_search, self.filter_value), state


def _typical_distance(logits: Float[Array, "batch n"]
                      ) -> tuple[Float[Array, "batch n"], Float[Array, "batch n"]]:
    """``(probs, |-log p - H|)``; masked entries get distance +inf."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.exp(logp), jnp.abs(-logp - _entropy(logp))


def _typical_keep_sorted(logits, mass, min_keep):
    """transformers' rule: sort by distance, cut where the running mass reaches ``mass``."""
    probs, dist = _typical_distance(logits)
    n = logits.shape[-1]
    order = jnp.argsort(dist, axis=-1)                          # ascending, stable
    sorted_dist = jnp.take_along_axis(dist, order, axis=-1)
    cum = jnp.cumsum(jnp.take_along_axis(probs, order, axis=-1), axis=-1)
    last = jnp.minimum(jnp.sum(cum < mass, axis=-1, keepdims=True), n - 1)   # [batch, 1]
    cut = jnp.take_along_axis(sorted_dist, last, axis=-1)
    cut = jnp.maximum(cut, sorted_dist[:, min(min_keep, n) - 1][:, None])
    return dist <= cut


def _typical_keep_search(logits, mass, min_keep):
    """The sorted rule's cut without a sort: the smallest distance ``d`` whose mass
    ``M(d) = sum(p[dist <= d])`` reaches ``mass``, found by bisection on the int32 bit
    pattern of ``d`` (monotone for non-negative floats), so the cut is exact.

    Invariant: ``M(bits lo) < mass <= M(bits hi)``; ``hi`` starts at +inf, which keeps
    every token when rounding leaves ``M(inf)`` below ``mass`` (transformers' clamp).
    """
    probs, dist = _typical_distance(logits)
    lo = jnp.full(logits.shape[:-1] + (1,), -1, jnp.int32)
    hi = jnp.full_like(lo, 0x7F800000)                           # bits of +inf

    def body(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        d = jax.lax.bitcast_convert_type(mid, jnp.float32)      # NaN for -1: mass 0
        ok = jnp.sum(jnp.where(dist <= d, probs, 0.0), axis=-1, keepdims=True) >= mass
        return jnp.where(ok, lo, mid), jnp.where(ok, mid, hi)

    lo, hi = jax.lax.fori_loop(0, 32, body, (lo, hi))
    keep = dist <= jax.lax.bitcast_convert_type(hi, jnp.float32)
    if min_keep > 1:
        keep = keep | (-dist >= top_k_threshold(-dist, min_keep, min_keep))
    return keep


@pytree_dataclass
class Epsilon(LogitsProcessor):
    """Epsilon sampling: drop tokens with probability below ``epsilon`` (transformers'
    ``EpsilonLogitsWarper``); the ``min_tokens_to_keep`` best tokens always stay."""

    epsilon: Any = 0.0
    filter_value: float = struct.field(pytree_node=False, default=NEG_INF)
    min_tokens_to_keep: int = struct.field(pytree_node=False, default=1)
    is_warper: ClassVar[bool] = True

    def __post_init__(self):
        _setup(self, "epsilon", lo_open=True, hi_open=True)

    def __call__(self, logits, state, ctx):
        probs = jax.nn.softmax(logits, axis=-1)
        remove = (probs < as_column(self.epsilon)) & ~_keep_best(logits,
                                                                 self.min_tokens_to_keep)
        return jnp.where(remove, self.filter_value, logits), state


@pytree_dataclass
class Eta(LogitsProcessor):
    """Eta sampling (transformers' ``EtaLogitsWarper``): drop tokens with probability
    below ``eta = min(epsilon, sqrt(epsilon) * exp(-H))``, ``H`` the row entropy.

    ``device`` is accepted for transformers compatibility and ignored (arrays live
    where the logits are).
    """

    epsilon: Any = 0.0
    filter_value: float = struct.field(pytree_node=False, default=NEG_INF)
    min_tokens_to_keep: int = struct.field(pytree_node=False, default=1)
    device: Any = struct.field(pytree_node=False, default=None)
    is_warper: ClassVar[bool] = True

    def __post_init__(self):
        _setup(self, "epsilon", lo_open=True, hi_open=True)
        object.__setattr__(self, "device", None)     # ignored; keeps the cache key stable

    def __call__(self, logits, state, ctx):
        logp = jax.nn.log_softmax(logits, axis=-1)
        eps = as_column(self.epsilon)
        eta = jnp.minimum(eps, jnp.sqrt(eps) * jnp.exp(-_entropy(logp)))
        remove = (jnp.exp(logp) < eta) & ~_keep_best(logits, self.min_tokens_to_keep)
        return jnp.where(remove, self.filter_value, logits), state


@pytree_dataclass
class TopH(LogitsProcessor):
    """Top-H sampling (transformers' ``TopHLogitsWarper``, arXiv 2509.02510).

    Among the ``top_n = 100`` best tokens (renormalised), keep the most probable ones
    while their cumulative entropy ``sum(-p log p)`` stays within ``top_h * H`` (``H``
    the entropy of those ``top_n``); the best token is always kept, every token outside
    the ``top_n`` is dropped. Like transformers, tokens whose renormalised probability
    underflows to 0 are dropped. transformers' constructor has no ``min_tokens_to_keep``.
    """

    top_h: Any = 1.0
    filter_value: float = struct.field(pytree_node=False, default=NEG_INF)
    top_n: ClassVar[int] = 100
    is_warper: ClassVar[bool] = True

    def __post_init__(self):
        _setup(self, "top_h", lo_open=True, hi_open=False)

    def __call__(self, logits, state, ctx):
        vals = jax.lax.top_k(logits, min(self.top_n, logits.shape[-1]))[0]  # [batch, n] desc
        logp = jax.nn.log_softmax(vals, axis=-1)
        probs = jnp.exp(logp)
        tau = _entropy(logp) * as_column(self.top_h)
        cum = jnp.cumsum(jnp.where(probs > 0, -probs * logp, 0.0), axis=-1)
        chosen = (cum <= tau) & (probs > 0)                    # a prefix of the sorted row
        n_keep = jnp.maximum(jnp.sum(chosen, axis=-1, keepdims=True), 1)     # [batch, 1]
        cut = jnp.take_along_axis(vals, n_keep - 1, axis=-1)
        return jnp.where(logits >= cut, logits, self.filter_value), state
