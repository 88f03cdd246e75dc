"""Small array and argument helpers shared by processors, stopping criteria, the config
and the decoding code. Nothing here imports the rest of jaxgen.

Four groups:

- host-side argument handling, run once at construction: ``bucket``, ``pad_ids``,
  ``eos_ids``, ``as_leaf``, ``set_leaves``, ``is_int``, ``check_int``, ``check_number``,
  ``ids_table``;
- token-set masks inside jit: ``id_mask`` (``[n] -> [vocab]``), ``token_mask``
  (``[rows, n] -> [rows, vocab]``), ``member``, ``one_hot``, ``bias_row``;
- per-row helpers, where a value is either a scalar (one for the whole batch) or a
  ``[rows]`` vector: ``as_column``, ``row_index``, ``row_slice``, ``row_take``,
  ``repeat_rows``; plus ``fast_argmax`` and ``top_k_threshold``;
- moving 16-bit floats as bits (``as_bits``, ``take_bits``, ``set_bits``,
  ``update_bits``): XLA:CPU float-normalises a gather, scatter or dynamic update of a
  bfloat16/float16 buffer, converting the *whole* buffer to float32 and back (an
  embedding table, a paged KV pool, each step); moved as ``uint16`` the same bits copy
  with no convert.

A scalar stays on the scalar code path (no broadcast, no gather), so per-row support
costs nothing when it is not used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

NEG_INF = -float("inf")


# --- host side: construction-time argument handling -------------------------------------

def bucket(n: int, minimum: int) -> int:
    """The next power of two >= n (at least ``minimum``): a compile-cache bucket."""
    return max(minimum, 1 << max(0, int(n) - 1).bit_length())


def pad_ids(ids: Any, size: int | None = None) -> np.ndarray:
    """Token ids as an int32 vector padded with -1 to a power-of-two length (min 4).

    A fixed length keeps e.g. a changed eos set from recompiling.
    """
    arr = np.asarray([] if ids is None else ids, np.int32).reshape(-1)
    out = np.full((size or bucket(len(arr), 4),), -1, np.int32)
    out[: len(arr)] = arr
    return out


def is_int(x: Any) -> bool:
    """A Python or numpy integer (not a bool)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def is_host_value(x: Any) -> bool:
    """A value a user passes at construction (Python, numpy or torch), as opposed to a
    jax array or a tracer."""
    return isinstance(x, (bool, int, float, list, tuple, np.ndarray, np.generic)) or \
        type(x).__module__.split(".")[0] == "torch"


def eos_ids(value: Any, name: str = "eos_token_id") -> tuple[int, ...]:
    """Eos ids as a tuple: ``None -> ()``, ``2 -> (2,)``, ``[2, 7] -> (2, 7)``.

    Accepts ints, lists, tuples, numpy arrays (-1 entries are ``pad_ids`` padding) and
    torch tensors; raises ``ValueError`` naming ``name`` on anything that is not a
    non-negative int.
    """
    if value is None:
        return ()
    if isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.integer):
        value = value[value >= 0]
    items = value if isinstance(value, (list, tuple)) else \
        np.asarray(value).reshape(-1).tolist()
    if any(not is_int(i) or i < 0 for i in items):
        raise ValueError(f"{name} must be non-negative ints, got {value!r}")
    return tuple(int(i) for i in items)


def as_leaf(x: Any, dtype: Any) -> Any:
    """Normalise a Python/numpy number (or list of them) to a fixed-dtype array leaf;
    leave jax arrays and tracers alone.

    Python floats, numpy scalars and weak-typed arrays are different jit cache keys, so
    processors normalise their numbers here (see PERF_NOTES: recompiles from types).
    """
    return np.asarray(x, dtype) if is_host_value(x) else x


def set_leaves(obj: Any, dtype: Any, *names: str) -> None:
    """``as_leaf`` the fields ``names`` of a frozen dataclass in place (for
    ``__post_init__``)."""
    for name in names:
        object.__setattr__(obj, name, as_leaf(getattr(obj, name), dtype))


def check_number(name: str, value: Any, ok: Callable[[np.ndarray], Any], allowed: str,
                 *, integer: bool = False, per_row: bool = True) -> None:
    """Raise ``ValueError("{name} must be {allowed}, got ...")`` unless every entry of a
    host number satisfies ``ok``: a scalar, or (``per_row``) a ``[rows]`` list / array of
    them; ``integer``: the entries must be ints. ``None``, strings and bools are refused;
    jax arrays pass unchecked (they may be traced)."""
    if value is None or isinstance(value, (str, bool)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    if not is_host_value(value):
        return
    arr = np.asarray(value)
    kinds = "iu" if integer else "iuf"
    if arr.dtype.kind not in kinds or arr.ndim > int(per_row) or not np.all(ok(arr)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_int(name: str, value: Any, minimum: int = 0, *, per_row: bool = True,
              static: bool = False) -> None:
    """``check_number`` for ints ``>= minimum``; ``static``: a shape-like setting, which
    must be one Python/numpy int."""
    if static and not is_int(value):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    check_number(name, value, lambda v: v >= minimum, f"an int >= {minimum}", integer=True,
                 per_row=per_row)


def ids_table(x: Any, name: str) -> Any:
    """User token ids ``[batch, n]`` (or ``[n]``) as int32, columns padded with -1 to a
    power of two; jax arrays pass through."""
    if not is_host_value(x):
        return x
    arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name} must be integer token ids [batch, n], got shape {arr.shape}")
    out = np.full((arr.shape[0], bucket(arr.shape[1], 4)), -1, np.int32)
    out[:, : arr.shape[1]] = arr
    return out


# --- token sets inside jit --------------------------------------------------------------

def id_mask(ids: Int[Array, " n"], vocab: int) -> Bool[Array, " vocab"]:
    """Boolean [vocab] mask of the ids in ``ids`` (ids < 0 or >= vocab are ignored).

    Compares for short id lists (eos sets), scatters for long ones (token classes).
    """
    ids = jnp.asarray(ids, jnp.int32)
    if ids.shape[0] <= 32:
        return (jnp.arange(vocab, dtype=jnp.int32)[None, :] == ids[:, None]).any(axis=0)
    return token_mask(ids[None, :], vocab)[0]


def token_mask(ids: Int[Array, "batch n"], vocab: int) -> Bool[Array, "batch vocab"]:
    """Per-row boolean mask of the ids in ``ids`` (ids < 0 or >= vocab are ignored)."""
    ids = jnp.where((ids < 0) | (ids >= vocab), vocab, ids)
    rows = jnp.arange(ids.shape[0])[:, None]
    return jnp.zeros((ids.shape[0], vocab), bool).at[rows, ids].set(True, mode="drop")


def member(tokens: Int[Array, "*dims"], mask: Bool[Array, " vocab"]) -> Bool[Array, "*dims"]:
    """``mask[tokens]``, False for tokens outside the vocabulary."""
    return jnp.take(mask, tokens, mode="fill", fill_value=False)


def one_hot(tokens: Int[Array, " batch"], vocab: int) -> Bool[Array, "batch vocab"]:
    """``out[b, t] = tokens[b] == t``."""
    return jnp.arange(vocab, dtype=jnp.int32)[None, :] == tokens[:, None]


def bias_row(ids: Int[Array, " n"], values: Float[Array, " n"],
             vocab: int) -> Float[Array, " vocab"]:
    """``[vocab]`` float32 row: the sum of ``values`` at ``ids`` (ids < 0 or >= vocab
    are ignored), 0 elsewhere."""
    ids = jnp.where((ids < 0) | (ids >= vocab), vocab, ids)
    return jnp.zeros((vocab,), jnp.float32).at[ids].add(values, mode="drop")


def fast_argmax(x: Float[Array, "batch n"]) -> Int[Array, " batch"]:
    """First index of the row maximum; ``max`` + ``where`` + ``min`` is much faster than
    ``jnp.argmax``'s variadic reduce on XLA:CPU."""
    n = x.shape[-1]
    best = jnp.max(x, axis=-1, keepdims=True)
    idx = jnp.where(x == best, jnp.arange(n, dtype=jnp.int32), n)
    return jnp.minimum(jnp.min(idx, axis=-1), n - 1).astype(jnp.int32)


def kth_value(vals: Float[Array, "batch n"], k: Any) -> Float[Array, "batch 1"]:
    """``vals[:, k - 1]`` as a column (``k``: a scalar or one per row, clipped to 1..n)."""
    k = jnp.clip(k, 1, vals.shape[-1])
    if jnp.ndim(k) == 0:
        return jax.lax.dynamic_slice_in_dim(vals, k - 1, 1, axis=-1)
    return jnp.take_along_axis(vals, (k - 1)[:, None], axis=-1)


def top_k_threshold(logits: Float[Array, "batch n"], k: Any, k_max: int) -> Array:
    """The k-th largest value per row, ``[batch, 1]`` (k traced, scalar or ``[batch]``;
    k <= k_max static)."""
    return kth_value(jax.lax.top_k(logits, min(k_max, logits.shape[-1]))[0], k)


# --- per-row values: a scalar for the whole batch, or one per row -----------------------

def as_column(x: Any) -> Any:
    """A scalar stays a scalar; a ``[rows]`` vector becomes ``[rows, 1]``, so either
    broadcasts against ``[rows, n]``."""
    return x if jnp.ndim(x) == 0 else x[:, None]


def row_index(x: Int[Array, "rows length"], i: Any) -> Int[Array, " rows"]:
    """``x[:, i]`` for a scalar ``i`` or ``x[r, i[r]]`` for a ``[rows]`` vector."""
    if jnp.ndim(i) == 0:
        return jax.lax.dynamic_index_in_dim(x, i, axis=1, keepdims=False)
    return jnp.take_along_axis(x, jnp.asarray(i)[:, None], axis=1)[:, 0]


def row_slice(x: Int[Array, "rows length"], begin: Any, n: int) -> Int[Array, "rows n"]:
    """``x[:, begin : begin + n]`` with ``begin`` a scalar or one per row, clamped into
    the buffer like ``lax.dynamic_slice`` (``0 <= begin <= length - n``)."""
    if jnp.ndim(begin) == 0:
        return jax.lax.dynamic_slice_in_dim(x, begin, n, axis=1)
    first = jnp.clip(begin, 0, x.shape[1] - n)
    return jnp.take_along_axis(x, first[:, None] + jnp.arange(n), axis=1)


def row_take(x: Int[Array, "rows length"], slots: Int[Array, "*rows n"]) -> Int[Array, "rows n"]:
    """``x[:, slots]`` for ``slots`` ``[n]``, or ``x[r, slots[r]]`` for ``[rows, n]``;
    slots are clipped into the buffer."""
    slots = jnp.clip(slots, 0, x.shape[1] - 1)
    if slots.ndim == 1:
        return jnp.take(x, slots, axis=1)
    return jnp.take_along_axis(x, slots, axis=1)


def repeat_rows(x: Array, batch: int) -> Array:
    """Per-row values ``[n, ...]`` for ``batch`` rows: repeated when ``batch`` is a multiple
    of ``n`` (beams / return sequences, like transformers' ``repeat_interleave``)."""
    if x.ndim == 0 or x.shape[0] == batch:
        return x
    if batch % x.shape[0]:
        raise ValueError(f"per-row values for {x.shape[0]} rows cannot serve {batch} rows")
    return jnp.repeat(x, batch // x.shape[0], axis=0)


# --- 16-bit floats moved as bits (XLA:CPU converts whole bf16/f16 operands otherwise) ---

def _half(x: Array) -> bool:
    return jnp.issubdtype(x.dtype, jnp.floating) and x.dtype.itemsize == 2


def as_bits(x: Array) -> Array:
    """A bfloat16/float16 array as ``uint16`` (a free bitcast); any other array as is."""
    return jax.lax.bitcast_convert_type(x, jnp.uint16) if _half(x) else x


def _via_bits(op: Callable[..., Array], x: Array, *values: Array) -> Array:
    """``op(x, *values)`` (``values`` already in ``x.dtype``), run on the bits of a
    16-bit float ``x``."""
    if not _half(x):
        return op(x, *values)
    return jax.lax.bitcast_convert_type(op(as_bits(x), *map(as_bits, values)), x.dtype)


def take_bits(x: Array, indices: Array, axis: int = 0, **kw: Any) -> Array:
    """``jnp.take(x, indices, axis, **kw)``, gathering 16-bit floats as bits."""
    return _via_bits(lambda a: jnp.take(a, indices, axis=axis, **kw), x)


def set_bits(x: Array, index: Any, values: Array, **kw: Any) -> Array:
    """``x.at[index].set(values.astype(x.dtype), **kw)``, scattering 16-bit floats as
    bits."""
    return _via_bits(lambda a, v: a.at[index].set(v, **kw), x,
                     jnp.asarray(values).astype(x.dtype))


def update_bits(x: Array, update: Array, start: tuple[Any, ...]) -> Array:
    """``lax.dynamic_update_slice(x, update, start)``, writing 16-bit floats as bits."""
    return _via_bits(lambda a, u: jax.lax.dynamic_update_slice(a, u, start), x,
                     update.astype(x.dtype))
