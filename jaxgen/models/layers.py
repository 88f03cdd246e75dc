"""The layer stack: one Python loop over per-layer weights, or a ``lax.scan`` over stacked
weights, one scan per run of equal layer specs.

Two parameter layouts hold the same layers::

    per layer:  {"layers_0": {...}, "layers_1": {...}, ...}       (Hugging Face's, IO)
    stacked:    {"layers": ({"0": {... [n, ...]}, "1": ...},        one dict per group,
                            ...)}                                   one key per unit position

A *group* is ``repeats`` copies of a *unit* of layers (`layer_groups`): Llama has one
unit of one layer repeated ``num_hidden_layers`` times; Gemma 3 (5 sliding + 1 global)
has a unit of 6 layers and a tail group for the layers after the last whole unit. A
group's leaf ``[repeats, ...]`` holds unit position ``j`` of every repeat, so the scan
over repeats compiles one unit, whatever the depth. ``layer_fn(params_i, spec, x, stack,
visible, with_probs)`` is the same in both layouts; a scanned layer's ``spec.slot`` (its
index in its cache stack) is traced.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jaxtyping import Array, Float, Int

from jaxgen.models.cache import stacks_of, with_stacks
from jaxgen.models.rope import Rope

Params = dict[str, Any]
LayerFn = Callable[[Params, "LayerSpec", Array, Any, Array, bool],
                   tuple[Array, Any, Array | None]]
STACKED = "layers"  # the top-level key of stacked layers (leaves with a leading layer axis)
SCAN_UNROLL = 1  # lax.scan's unroll; 2 and 5 measured slower (benchmarks/bench_compile.py)


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """What is static about one layer (``slot`` may be traced inside a scan)."""

    kind: str  # its cache stack: "full_attention" | "sliding_attention"
    slot: Any  # its index inside that stack
    window: int | None = None
    rope: Rope | None = None


@dataclasses.dataclass(frozen=True)
class LayerGroup:
    """``repeats`` consecutive copies of ``unit`` (the specs of its first copy), from
    layer ``start`` on."""

    start: int
    unit: tuple[LayerSpec, ...]
    repeats: int

    def layer(self, r: int, j: int) -> int:
        """The model layer of unit position ``j`` in repeat ``r``."""
        return self.start + r * len(self.unit) + j


def layer_groups(specs: Sequence[LayerSpec]) -> tuple[LayerGroup, ...]:
    """The shortest unit whose repeats give ``specs`` (kind, window and rope; slots are
    counted on), and a tail group for the layers after its last whole repeat."""
    key = [(s.kind, s.window, s.rope) for s in specs]
    n = len(specs)
    p = next(p for p in range(1, n + 1) if all(key[i] == key[i % p] for i in range(n)))
    groups = [LayerGroup(0, tuple(specs[:p]), n // p)]
    if n % p:
        groups.append(LayerGroup(n - n % p, tuple(specs[n - n % p:]), 1))
    return tuple(groups)


def stack_layers(params: Params, groups: Sequence[LayerGroup]) -> Params:
    """Per-layer params -> stacked (module docstring); other keys are kept."""
    out = {k: v for k, v in params.items() if not k.startswith("layers_")}
    out[STACKED] = tuple(
        {str(j): _stack([params[f"layers_{g.layer(r, j)}"] for r in range(g.repeats)])
         for j in range(len(g.unit))} for g in groups)
    return out


@jax.jit
def _stack(trees: list[Params]) -> Params:
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack_layers(params: Params, groups: Sequence[LayerGroup]) -> Params:
    """Stacked params -> per layer (inverse of `stack_layers`)."""
    out = {k: v for k, v in params.items() if k != STACKED}
    for g, stacked in zip(groups, params[STACKED], strict=True):
        for j in range(len(g.unit)):
            for r in range(g.repeats):
                out[f"layers_{g.layer(r, j)}"] = jax.tree.map(lambda x, r=r: x[r],
                                                              stacked[str(j)])
    return out


def stacked_shapes(layer: dict[str, Any], groups: Sequence[LayerGroup]) -> tuple:
    """`init_from_shapes` entries of stacked layers whose per-layer entries are ``layer``."""
    def lead(n: int) -> Any:
        return jax.tree.map(lambda e: ((n, *e[0]), e[1]), layer,
                            is_leaf=lambda e: isinstance(e, tuple) and isinstance(e[1], str))

    return tuple({str(j): lead(g.repeats) for j in range(len(g.unit))} for g in groups)


# ------------------------------------------------------------------------ the forward pass


def _on_slots(probs: Float[Array, "b h t S"], slots: Int[Array, "rows S"] | None, length: int
              ) -> Float[Array, "b h t length"]:
    """Attention probabilities laid out over the logical slots ``[0, length)``."""
    if slots is None:
        return probs
    b, s = probs.shape[0], slots.shape[1]
    slots = jnp.broadcast_to(jnp.where(slots >= 0, slots, length), (b, s))
    out = jnp.zeros((*probs.shape[:3], length), probs.dtype)
    # advanced (rows, slots) lead: [b, S, h, t]
    return out.at[jnp.arange(b)[:, None], :, :, slots].set(probs.transpose(0, 3, 1, 2),
                                                            mode="drop")


def run_layers(layer_fn: LayerFn, specs: Sequence[LayerSpec], kinds: tuple[str, ...],
               x: Float[Array, "b t d"], cache: Any, positions: Array, mask: Array,
               outputs: tuple[str, ...], params: Params) -> tuple[Array, Any, dict[str, Any]]:
    """``x`` through every layer, each on its kind's stack, visibility computed once per
    (stack, window); ``params`` holds ``layers_<i>`` or stacked ``layers`` (a scan per
    group). Returns ``(x, cache advanced by t, extras)``: ``hidden_states`` (the input
    and every layer's output), ``attentions`` (per layer ``[b, heads, t, length]``)."""
    t, length = x.shape[1], mask.shape[1]
    stacks = stacks_of(cache, kinds)
    visible = {key: stacks[key[0]].visibility(mask, positions, t, key[1])
               for key in dict.fromkeys((s.kind, s.window) for s in specs)}
    with_probs = "attentions" in outputs

    def one(p: Params, spec: LayerSpec, x: Array, stacks: dict[str, Any]) -> tuple:
        stack = stacks[spec.kind]
        x, stacks[spec.kind], probs = layer_fn(p, spec, x, stack, visible[spec.kind,
                                                                          spec.window],
                                               with_probs)
        return x, (_on_slots(probs, stack.key_slots(t), length) if with_probs else None)

    x_in = x
    if STACKED in params:
        x, hidden, attentions = _scanned(one, layer_groups(specs), x, stacks,
                                         params[STACKED], "hidden_states" in outputs)
    else:
        hidden, attentions = [], []
        for i, spec in enumerate(specs):
            x, probs = one(params[f"layers_{i}"], spec, x, stacks)
            hidden.append(x)
            attentions.append(probs)
    extras: dict[str, Any] = {}
    if "hidden_states" in outputs:
        extras["hidden_states"] = (x_in, *hidden)
    if with_probs:
        extras["attentions"] = tuple(attentions)
    return x, with_stacks(cache, {k: s.advance(t) for k, s in stacks.items()}), extras


def _scanned(one: Callable, groups: Sequence[LayerGroup], x: Array, stacks: dict[str, Any],
             stacked: tuple[Params, ...], keep: bool
             ) -> tuple[Array, list[Array | None], list[Array | None]]:
    """The groups in order, each a ``lax.scan`` over its repeats (one call for a single
    repeat); per-layer outputs (hidden states if ``keep``) back in layer order. The
    updated stacks are written back into ``stacks``."""
    carried = dict(stacks)
    n = sum(len(g.unit) * g.repeats for g in groups)
    hidden: list[Any] = [None] * n
    attentions: list[Any] = [None] * n
    for g, weights in zip(groups, stacked, strict=True):
        per_unit = Counter(s.kind for s in g.unit)

        def unit(carry: tuple, xs: tuple, g: LayerGroup = g, per_unit: Counter = per_unit
                 ) -> tuple[tuple, tuple]:
            (x, stacks), (w, r) = carry, xs
            stacks, ys = dict(stacks), []
            for j, spec in enumerate(g.unit):
                spec = dataclasses.replace(spec, slot=spec.slot + r * per_unit[spec.kind])
                x, probs = one(w[str(j)], spec, x, stacks)
                ys.append((x if keep else None, probs))
            return (x, stacks), tuple(ys)

        if g.repeats == 1:  # [1, ...] -> [...] is a bitcast, not a copy
            (x, carried), ys = unit((x, carried), (jax.tree.map(lambda a: a[0], weights), 0))
            ys = jax.tree.map(lambda a: a[None], ys)
        else:
            (x, carried), ys = lax.scan(unit, (x, carried), (weights, jnp.arange(g.repeats)),
                                       unroll=SCAN_UNROLL)
        for j, (h, probs) in enumerate(ys):
            for r in range(g.repeats):
                hidden[g.layer(r, j)] = None if h is None else h[r]
                attentions[g.layer(r, j)] = None if probs is None else probs[r]
    stacks.update(carried)
    return x, hidden, attentions
