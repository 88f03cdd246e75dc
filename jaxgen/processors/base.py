"""The logits-processor protocol (optax-style), ``chain``, ``stateless`` and ``apply``.

A processor is a pytree (``flax.struct.dataclass``) with two methods::

    state = proc.init(ctx)                         # before the first step
    logits, state = proc(logits, state, ctx)       # every step, inside the jitted loop

Numbers a user tunes are array leaves (changing them never recompiles); settings that
change shapes are static fields (``struct.field(pytree_node=False)``).

Example, a stateless processor from a plain function::

    boost_space = P.stateless(lambda logits, ctx: logits.at[:, 220].add(2.0))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Float, Int


@struct.dataclass
class Context:
    """What a processor sees: the fixed-shape token buffer and where we are in it.

    sequences: [batch, buffer] int32. Slots ``start .. cur - 1`` hold the caller's
        (left-padded) prompt followed by the tokens generated so far; slots before
        ``start`` are bucket padding, slots from ``cur`` on are not written yet.
    attention_mask: [batch, buffer] int32, 1 on real tokens.
    cur: int32 scalar, the slot whose token is being chosen now.
    start: int32 scalar, the slot where the caller's ``input_ids`` begin.
    elapsed: float32 scalar, wall-clock seconds since generation started, as measured by
        the host driver before the current chunk of steps (0 within ``generate`` unless a
        time limit or a chunked driver is in use).
    """

    sequences: Int[Array, "batch buffer"]
    attention_mask: Int[Array, "batch buffer"]
    cur: Int[Array, ""]
    start: Int[Array, ""]
    elapsed: Float[Array, ""] = np.float32(0.0)

    @property
    def cur_len(self) -> Int[Array, ""]:
        """transformers' ``input_ids.shape[-1]`` at this step."""
        return self.cur - self.start

    @property
    def last_tokens(self) -> Int[Array, " batch"]:
        """The most recent token of every row (slot ``cur - 1``)."""
        return jax.lax.dynamic_index_in_dim(self.sequences, self.cur - 1, axis=1,
                                            keepdims=False)

    @classmethod
    def from_input_ids(cls, input_ids: Any, attention_mask: Any = None) -> Context:
        """Context for a one-shot call, as transformers' ``proc(input_ids, scores)``."""
        ids = jnp.asarray(input_ids, jnp.int32)
        mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask,
                                                                              jnp.int32)
        return cls(sequences=ids, attention_mask=mask,
                   cur=jnp.asarray(ids.shape[1], jnp.int32), start=jnp.zeros((), jnp.int32))


class LogitsProcessor:
    """Base class. Subclasses are ``flax.struct.dataclass`` pytrees.

    ``is_warper``: a sampling warper (temperature, top-k, top-p, ...) that only looks at
    the multiset of values in a row, never at token ids, so the sampler may run it on
    the top-k candidates instead of the whole vocabulary.
    """

    is_warper: ClassVar[bool] = False

    def init(self, ctx: Context) -> Any:
        """Initial state. Convention: every leaf has the rows (batch) as its leading axis,
        so ``reorder_state`` can follow beam search; override both if that does not hold."""
        return ()

    def reorder_state(self, state: Any, rows: Int[Array, " batch"]) -> Any:
        """The state after beam search picks, for row ``i``, the history of row ``rows[i]``."""
        return jax.tree.map(lambda x: jnp.take(x, rows, axis=0), state)

    def __call__(self, logits: Float[Array, "batch vocab"], state: Any,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], Any]:
        raise NotImplementedError


@struct.dataclass
class Chain(LogitsProcessor):
    """Processors applied in order; the state is the tuple of their states."""

    processors: tuple[Any, ...] = ()

    def init(self, ctx: Context) -> tuple[Any, ...]:
        return tuple(p.init(ctx) for p in self.processors)

    def __call__(self, logits, state, ctx):
        new_state = []
        for p, s in zip(self.processors, state, strict=True):
            logits, s = p(logits, s, ctx)
            new_state.append(s)
        return logits, tuple(new_state)

    def reorder_state(self, state, rows):
        return tuple(p.reorder_state(s, rows) for p, s in zip(self.processors, state,
                                                               strict=True))


def chain(*processors: Any) -> Chain:
    """Compose processors left to right (nested chains are flattened)."""
    flat: list[Any] = []
    for p in processors:
        if isinstance(p, Chain):
            flat.extend(p.processors)
        else:
            _check_processor(p)
            flat.append(p)
    return Chain(tuple(flat))


@struct.dataclass
class Stateless(LogitsProcessor):
    """A processor from a jittable ``fn(logits, ctx) -> logits`` (see ``stateless``)."""

    fn: Callable[[Any, Context], Any] = struct.field(pytree_node=False)

    def __call__(self, logits, state, ctx):
        return self.fn(logits, ctx), state


def stateless(fn: Callable[[Any, Context], Any]) -> Stateless:
    """Lift ``fn(logits[batch, vocab], ctx) -> logits`` into a processor."""
    if not callable(fn):
        raise TypeError(f"stateless(fn): fn must be callable, got {type(fn).__name__}")
    return Stateless(fn)


def apply(proc: Any, input_ids: Any, logits: Any, attention_mask: Any = None) -> jax.Array:
    """One-shot use like transformers' ``proc(input_ids, scores)``: returns new logits."""
    ctx = Context.from_input_ids(input_ids, attention_mask)
    out, _ = proc(jnp.asarray(logits, jnp.float32), proc.init(ctx), ctx)
    return out


def _check_processor(p: Any) -> None:
    if not (hasattr(p, "init") and callable(p)):
        raise TypeError(
            f"logits_processor entries must be jaxgen processors (with init() and "
            f"__call__(logits, state, ctx)), got {type(p).__name__}; wrap a plain function "
            f"with jaxgen.processors.stateless(fn)")


# --- helpers shared by processors -------------------------------------------------------

def as_leaf(x: Any, dtype: Any) -> Any:
    """Normalise a Python/numpy number to a fixed-dtype array leaf; leave others alone.

    Python floats, numpy scalars and weak-typed arrays are different jit cache keys, so
    processors normalise their numbers here (see PERF_NOTES: recompiles from types).
    """
    if isinstance(x, (bool, int, float, np.number, np.ndarray, list, tuple)):
        return np.asarray(x, dtype)
    return x


def pad_ids(ids: Any, size: int | None = None) -> np.ndarray:
    """Token ids as an int32 vector padded with -1 to a power-of-two length (min 4).

    A fixed length keeps e.g. a changed eos set from recompiling.
    """
    if ids is None:
        ids = []
    arr = np.asarray(ids, np.int32).reshape(-1)
    n = size or max(4, 1 << max(0, int(len(arr)) - 1).bit_length())
    out = np.full((n,), -1, np.int32)
    out[: len(arr)] = arr
    return out


def id_mask(ids: Int[Array, " n"], vocab: int) -> Array:
    """Boolean [vocab] mask of the ids in ``ids`` (entries < 0 are padding)."""
    return (jnp.arange(vocab, dtype=jnp.int32)[None, :] == ids[:, None]).any(axis=0)


def top_k_threshold(logits: Float[Array, "batch n"], k: Any, k_max: int) -> Array:
    """The k-th largest value per row, ``[batch, 1]`` (k traced, k <= k_max static)."""
    vals = jax.lax.top_k(logits, min(k_max, logits.shape[-1]))[0]
    k = jnp.clip(k, 1, vals.shape[-1])
    return jnp.take_along_axis(vals, jnp.broadcast_to(k - 1, vals.shape[:-1])[..., None],
                               axis=-1)


def processors_of(procs: Sequence[Any] | None) -> list[Any]:
    """Validate a user ``logits_processor=[...]`` list."""
    out = list(procs or [])
    for p in out:
        _check_processor(p)
    return out
