"""The logits-processor protocol (optax-style), ``chain``, ``stateless`` and ``apply``.

A processor is a pytree (``pytree_dataclass``) with two methods::

    state = proc.init(ctx)                         # before the first step
    logits, state = proc(logits, state, ctx)       # every step, inside the jitted loop

Numbers a user tunes are array leaves (changing them never recompiles); settings that
change shapes are static fields (``struct.field(pytree_node=False)``). Arguments are
checked and normalised once, in ``__post_init__`` at construction; rebuilding the
pytree (jit, ``jax.tree.map``) never runs it again.

Example, a stateless processor from a plain function::

    boost_space = P.stateless(lambda logits, ctx: logits.at[:, 220].add(2.0))
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Float, Int

from jaxgen.ops import (  # noqa: F401  (re-exported: the decoding code imports them here)
    as_column,
    as_leaf,
    id_mask,
    pad_ids,
    row_index,
    row_slice,
    top_k_threshold,
)

T = TypeVar("T", bound=type)


def pytree_dataclass(cls: T) -> T:
    """``flax.struct.dataclass`` whose pytree unflatten bypasses ``__init__``.

    Construction runs ``__post_init__`` (argument checks, ``as_leaf`` conversions) once;
    rebuilding from leaves (jit, ``jax.tree.map``, vmap) sets the fields directly, as
    equinox does, so checks never run again and never see a tracer. Fields marked
    ``struct.field(pytree_node=False)`` are static (part of the tree structure).
    ``replace`` is ``dataclasses.replace``: a new construction, checked again.
    """
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cls)
    data = tuple(f.name for f in fields if f.metadata.get("pytree_node", True))
    meta = tuple(f.name for f in fields if not f.metadata.get("pytree_node", True))
    keys = tuple(jax.tree_util.GetAttrKey(n) for n in data)

    def flatten_with_keys(x):
        return ([(k, getattr(x, n)) for k, n in zip(keys, data, strict=True)],
                tuple(getattr(x, n) for n in meta))

    def flatten(x):
        return [getattr(x, n) for n in data], tuple(getattr(x, n) for n in meta)

    def unflatten(aux, children):
        obj = object.__new__(cls)
        for n, v in zip(data, children, strict=True):
            object.__setattr__(obj, n, v)
        for n, v in zip(meta, aux, strict=True):
            object.__setattr__(obj, n, v)
        return obj

    def replace(self, **changes):
        """A copy with ``changes`` (constructed, so checked, again)."""
        return dataclasses.replace(self, **changes)

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    cls.replace = replace
    return cls


@struct.dataclass
class Context:
    """What a processor sees: the fixed-shape token buffer and where we are in it.

    sequences: [rows, buffer] int32. Slots ``start .. cur - 1`` hold the caller's
        (left-padded) prompt followed by the tokens generated so far; slots before
        ``start`` are bucket padding, slots from ``cur`` on are not written yet.
    attention_mask: [rows, buffer] int32, 1 on real tokens.
    cur: int32, the slot whose token is being chosen now: a scalar (one cursor for the
        batch) or a ``[rows]`` vector (a cursor per row: speculative decoding, where rows
        accept different numbers of tokens, and the continuous-batching engine).
    start: int32 scalar or ``[rows]``, the slot where the caller's ``input_ids`` begin.
    elapsed: float32 scalar, wall-clock seconds since generation started, as measured by
        the host driver before the current chunk of steps (0 within ``generate`` unless a
        time limit or a chunked driver is in use).

    Per-row views, for code that must work with either kind of cursor (a scalar stays a
    scalar, so the one-cursor path does no extra work): ``cur_rows`` / ``start_rows``
    (always ``[rows]``), ``cur_col`` / ``start_col`` / ``cur_len_col`` (scalar or
    ``[rows, 1]``, to compare with slot indices ``[buffer]`` or broadcast against
    ``[rows, vocab]``), ``last_tokens`` and ``tail(n)`` (per-row gathers when ``cur`` is
    a vector).
    """

    sequences: Int[Array, "rows buffer"]
    attention_mask: Int[Array, "rows buffer"]
    cur: Int[Array, "*rows"]
    start: Int[Array, "*rows"]
    elapsed: Float[Array, ""] = np.float32(0.0)

    @property
    def rows(self) -> int:
        return self.sequences.shape[0]

    @property
    def cur_len(self) -> Int[Array, "*rows"]:
        """transformers' ``input_ids.shape[-1]`` at this step (scalar or ``[rows]``)."""
        return self.cur - self.start

    @property
    def cur_rows(self) -> Int[Array, " rows"]:
        """``cur`` as a ``[rows]`` vector."""
        return jnp.broadcast_to(jnp.asarray(self.cur, jnp.int32), (self.rows,))

    @property
    def start_rows(self) -> Int[Array, " rows"]:
        """``start`` as a ``[rows]`` vector."""
        return jnp.broadcast_to(jnp.asarray(self.start, jnp.int32), (self.rows,))

    @property
    def cur_col(self) -> Int[Array, "*rows 1"]:
        """``cur`` as a scalar or ``[rows, 1]`` (``slots < ctx.cur_col`` is per row)."""
        return as_column(self.cur)

    @property
    def start_col(self) -> Int[Array, "*rows 1"]:
        """``start`` as a scalar or ``[rows, 1]``."""
        return as_column(self.start)

    @property
    def cur_len_col(self) -> Int[Array, "*rows 1"]:
        """``cur_len`` as a scalar or ``[rows, 1]`` (broadcasts against ``[rows, vocab]``)."""
        return as_column(self.cur_len)

    @property
    def last_tokens(self) -> Int[Array, " rows"]:
        """The most recent token of every row (slot ``cur - 1``)."""
        return row_index(self.sequences, self.cur - 1)

    def tail(self, n: int, of: Any = None, fill: int = -1) -> Int[Array, "rows n"]:
        """Slots ``cur - n .. cur - 1`` of ``of`` (default ``sequences``) per row.

        Like ``lax.dynamic_slice`` the window is clamped into the buffer (it starts at
        slot 0 while ``cur < n``); a buffer shorter than ``n`` is padded on the left
        with ``fill``.
        """
        x = self.sequences if of is None else of
        cur = self.cur
        if x.shape[1] < n:
            extra = n - x.shape[1]
            x, cur = jnp.pad(x, ((0, 0), (extra, 0)), constant_values=fill), cur + extra
        return row_slice(x, cur - n, n)

    @classmethod
    def from_input_ids(cls, input_ids: Any, attention_mask: Any = None) -> Context:
        """Context for a one-shot call, as transformers' ``proc(input_ids, scores)``."""
        ids = jnp.asarray(input_ids, jnp.int32)
        mask = jnp.ones_like(ids) if attention_mask is None else jnp.asarray(attention_mask,
                                                                              jnp.int32)
        return cls(sequences=ids, attention_mask=mask,
                   cur=jnp.asarray(ids.shape[1], jnp.int32), start=jnp.zeros((), jnp.int32))


class LogitsProcessor:
    """Base class. Subclasses are ``pytree_dataclass`` (or ``flax.struct.dataclass``)
    pytrees.

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


@pytree_dataclass
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


@pytree_dataclass
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


def processors_of(procs: Sequence[Any] | None) -> list[Any]:
    """Validate a user ``logits_processor=[...]`` list."""
    out = list(procs or [])
    for p in out:
        _check_processor(p)
    return out
