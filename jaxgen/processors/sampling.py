"""Sampling warpers: temperature, top-k, top-p, min-p (transformers semantics).

All of them are ``is_warper``: they only compare values within a row, so the sampler
can run them on the top-k candidates (``[batch, k_max]``) instead of the whole
vocabulary. Used on full rows (``apply``, ``output_scores``) they match transformers.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from jaxgen.processors.base import LogitsProcessor, as_leaf, top_k_threshold

NEG_INF = -float("inf")
# Rows up to this width are sorted exactly (transformers' algorithm); wider rows use a
# threshold search, since a full-vocabulary sort is very slow on XLA:CPU.
_SORT_MAX = 1024


def _check(name: str, value: Any, ok: bool, allowed: str) -> None:
    if isinstance(value, (int, float)) and not ok:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def bucket_k(k: int) -> int:
    """Static top-k width for a traced k: the next power of two, at least 64."""
    return max(64, 1 << max(0, int(k) - 1).bit_length())


@struct.dataclass
class Temperature(LogitsProcessor):
    """``logits / temperature``."""

    temperature: Any = 1.0
    is_warper: ClassVar[bool] = True

    def __post_init__(self):
        t = self.temperature
        _check("Temperature.temperature", t,
               isinstance(t, (int, float)) and t > 0, "a float > 0")
        object.__setattr__(self, "temperature", as_leaf(t, jnp.float32))

    def __call__(self, logits, state, ctx):
        return logits / self.temperature, state


@struct.dataclass
class TopK(LogitsProcessor):
    """Keep the ``top_k`` largest logits per row (ties at the k-th value kept).

    ``top_k`` is traced; ``k_max`` (static, default the next power of two >= top_k,
    at least 64) bounds it, so changing top_k within that bound does not recompile.
    """

    top_k: Any = 50
    filter_value: float = struct.field(pytree_node=False, default=NEG_INF)
    min_tokens_to_keep: int = struct.field(pytree_node=False, default=1)
    k_max: int | None = struct.field(pytree_node=False, default=None)
    is_warper: ClassVar[bool] = True

    def __post_init__(self):
        k = self.top_k
        _check("TopK.top_k", k, isinstance(k, int) and k > 0, "a positive int")
        _check("TopK.min_tokens_to_keep", self.min_tokens_to_keep,
               self.min_tokens_to_keep >= 1, "an int >= 1")
        if self.k_max is None and isinstance(k, int):
            object.__setattr__(self, "k_max", bucket_k(max(k, self.min_tokens_to_keep)))
        elif self.k_max is None:
            raise ValueError("TopK.k_max must be given when top_k is an array")
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
        k = jnp.clip(self.effective_k(), 1, vals.shape[-1])
        thr = vals[:, k - 1][:, None]
        return jnp.where(vals < thr, self.filter_value, vals), ids.astype(jnp.int32)


@struct.dataclass
class TopP(LogitsProcessor):
    """Nucleus filtering: keep the smallest set of best tokens whose mass reaches top_p."""

    top_p: Any = 1.0
    filter_value: float = struct.field(pytree_node=False, default=NEG_INF)
    min_tokens_to_keep: int = struct.field(pytree_node=False, default=1)
    is_warper: ClassVar[bool] = True

    def __post_init__(self):
        p = self.top_p
        _check("TopP.top_p", p, isinstance(p, (int, float)) and 0.0 <= p <= 1.0,
               "a float in [0, 1]")
        _check("TopP.min_tokens_to_keep", self.min_tokens_to_keep,
               self.min_tokens_to_keep >= 1, "an int >= 1")
        object.__setattr__(self, "top_p", as_leaf(p, jnp.float32))

    def __call__(self, logits, state, ctx):
        if logits.shape[-1] <= _SORT_MAX:
            keep = _top_p_keep_sorted(logits, self.top_p, self.min_tokens_to_keep)
        else:
            keep = _top_p_keep_search(logits, self.top_p, self.min_tokens_to_keep)
        return jnp.where(keep, logits, self.filter_value), state


def _top_p_keep_sorted(logits, top_p, min_keep):
    """transformers' rule on an ascending sort: drop where cumsum(probs) <= 1 - top_p."""
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


@struct.dataclass
class MinP(LogitsProcessor):
    """Drop tokens with probability below ``min_p`` times the best token's probability."""

    min_p: Any = 0.0
    filter_value: float = struct.field(pytree_node=False, default=NEG_INF)
    min_tokens_to_keep: int = struct.field(pytree_node=False, default=1)
    is_warper: ClassVar[bool] = True

    def __post_init__(self):
        p = self.min_p
        _check("MinP.min_p", p, isinstance(p, (int, float)) and 0.0 <= p <= 1.0,
               "a float in [0, 1]")
        object.__setattr__(self, "min_p", as_leaf(p, jnp.float32))

    def __call__(self, logits, state, ctx):
        probs = jax.nn.softmax(logits, axis=-1)
        remove = probs < self.min_p * jnp.max(probs, axis=-1, keepdims=True)
        if self.min_tokens_to_keep > 1:
            k = self.min_tokens_to_keep
            remove = remove & (logits < top_k_threshold(logits, k, k))
        return jnp.where(remove, self.filter_value, logits), state
