"""What ``output_logits`` / ``output_hidden_states`` / ``output_attentions`` record.

The buffers are fixed-shape and allocated only when asked: ``LoopState.trace`` is None
otherwise (a static choice, so the default paths compile exactly as before). Entries
are indexed by the buffer slot of the token that was *fed*, so each forward pass is one
write, whatever the strategy::

    hidden      [L + 1, rows, T, d]        slot s: every layer's output for the token at s
    attentions  [L, rows, heads, T, T]     query slot s over the key slots
    logits      [rows, new, vocab]         new-token index i: the raw logits that chose it

`outputs` turns them into transformers' tuples on the host: step 0 is the prefill (the
fed prompt slots), step ``i`` the one position fed before new token ``i``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxgen.decoding.output import host

#: The GenerationConfig flag of each recordable output.
FLAGS = {"logits": "output_logits", "hidden_states": "output_hidden_states",
         "attentions": "output_attentions"}
MODEL_OUTPUTS = ("hidden_states", "attentions")   # what ``model.apply(outputs=...)`` gives


@struct.dataclass
class Trace:
    """The recorded outputs (see the module docstring); a field is None when not asked."""

    logits: Float[Array, "rows new vocab"] | None
    hidden: Float[Array, "layers1 rows T d"] | None
    attentions: Float[Array, "layers rows heads T T"] | None


def wanted(config: Any) -> tuple[str, ...]:
    """The outputs a config asks for (none without ``return_dict_in_generate``)."""
    if not config.return_dict_in_generate:
        return ()
    return tuple(name for name, flag in FLAGS.items() if getattr(config, flag))


def model_wants(trace: Trace | None) -> tuple[str, ...]:
    """What the model must return for ``trace`` (``apply(outputs=...)`` names)."""
    if trace is None:
        return ()
    return tuple(n for n, x in (("hidden_states", trace.hidden),
                                ("attentions", trace.attentions)) if x is not None)


def model_apply(model: Any, params: Any, tokens: Int[Array, "rows t"],
                positions: Int[Array, "rows t"], cache: Any, mask: Int[Array, "rows T"],
                want: tuple[str, ...] = ()) -> tuple[Float[Array, "rows t vocab"], Any, dict]:
    """``model.apply`` asking for the ``want`` outputs: ``(logits, cache, extras)``."""
    outs = tuple(o for o in MODEL_OUTPUTS if o in want)
    if not outs:
        logits, cache = model.apply(params, tokens, positions, cache, mask)
        return logits, cache, {}
    return model.apply(params, tokens, positions, cache, mask, outputs=outs)


def empty(record: tuple[str, ...], extras: dict[str, Any], rows: int, length: int,
          new: int, vocab: int) -> Trace | None:
    """Zero buffers for ``record``, shaped after the prefill's ``extras`` (None when
    nothing is recorded)."""
    if not record:
        return None
    hidden = attentions = None
    if "hidden_states" in record:
        hs = extras["hidden_states"]                               # L + 1 x [rows, t, d]
        hidden = jnp.zeros((len(hs), rows, length, hs[0].shape[-1]), hs[0].dtype)
    if "attentions" in record:
        at = extras["attentions"]                                  # L x [rows, heads, t, T]
        attentions = jnp.zeros((len(at), rows, at[0].shape[1], length, length), at[0].dtype)
    logits = jnp.zeros((rows, new, vocab), jnp.float32) if "logits" in record else None
    return Trace(logits=logits, hidden=hidden, attentions=attentions)


def _put(buf: Array, x: Array, slot: Int[Array, "*rows"], keep: Bool[Array, "rows t"] | None,
         axis: int) -> Array:
    """``buf`` with ``x`` written along ``axis`` (rows on axis 1) from ``slot`` on: one slice
    for a scalar slot, else per row (entries where ``keep`` is False dropped)."""
    x = x.astype(buf.dtype)
    if jnp.ndim(slot) == 0 and keep is None:
        start = [0] * buf.ndim
        start[axis] = slot
        return jax.lax.dynamic_update_slice(buf, x, tuple(start))
    rows, t = x.shape[1], x.shape[axis]
    slots = jnp.broadcast_to(jnp.asarray(slot)[..., None] + jnp.arange(t), (rows, t))
    if keep is not None:
        slots = jnp.where(keep, slots, buf.shape[axis])           # out of range: dropped
    x = jnp.moveaxis(x, axis, 2)                                 # [L, rows, t, ...]
    buf = jnp.moveaxis(buf, axis, 2)
    buf = buf.at[:, jnp.arange(rows)[:, None], slots].set(x, mode="drop")
    return jnp.moveaxis(buf, 2, axis)


def record(trace: Trace | None, logits: Float[Array, "rows *t vocab"], extras: dict[str, Any],
           slot: Int[Array, "*rows"], at: Int[Array, "*rows"],
           keep: Bool[Array, "rows t"] | None = None) -> Trace | None:
    """``trace`` after one forward pass: ``extras`` of the tokens fed from ``slot`` on, and
    the raw ``logits`` ([rows, vocab], or [rows, t, vocab] per position) of new-token
    index ``at`` on; ``keep`` ([rows, t]) marks the positions that count."""
    if trace is None:
        return None
    new = {}
    if trace.logits is not None:
        lg = logits[:, None] if logits.ndim == 2 else logits
        new["logits"] = _put(trace.logits[None], lg[None], at, keep, 2)[0]
    if trace.hidden is not None:
        hs = jnp.stack(extras["hidden_states"])                    # [L + 1, rows, t, d]
        new["hidden"] = _put(trace.hidden, hs, slot, keep, 2)
    if trace.attentions is not None:
        at_ = jnp.stack(extras["attentions"])                      # [L, rows, heads, t, T]
        new["attentions"] = _put(trace.attentions, at_, slot, keep, 3)
    return trace.replace(**new)


def select(extras: dict[str, Any], rows: Int[Array, " n"]) -> dict[str, Any]:
    """``extras`` of the rows ``rows`` (e.g. the chosen contrastive-search candidates)."""
    return {k: tuple(x[rows] for x in v) for k, v in extras.items()}


def outputs(trace: Trace | None, *, steps: int, start: int, fed: int, prompt_end: int
            ) -> dict[str, Any]:
    """transformers' ``logits`` / ``hidden_states`` / ``attentions`` tuples (host numpy).

    steps: generation steps taken; start: first slot of the caller's ids; fed: first slot
    the prefill fed (``start``, or later when continuing from a cache); prompt_end: P.
    """
    if trace is None:
        return {}
    out: dict[str, Any] = {}
    p = prompt_end
    spans = [(fed, p)] + [(p + i - 1, p + i) for i in range(1, steps)]
    if trace.logits is not None:
        lg = host(trace.logits)
        out["logits"] = tuple(lg[:, i] for i in range(steps))
    if trace.hidden is not None:
        hs = host(trace.hidden)
        out["hidden_states"] = tuple(tuple(h[:, a:b] for h in hs) for a, b in spans)
    if trace.attentions is not None:
        at = host(trace.attentions)
        out["attentions"] = tuple(tuple(x[:, :, a:b, start:b] for x in at) for a, b in spans)
    return out
