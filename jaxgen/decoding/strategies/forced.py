"""Forced words for constrained beam search: transformers' ``PhrasalConstraint`` and
``DisjunctiveConstraint``, compiled to tables, and their progress as per-beam arrays.

Every constraint is a trie over token ids (a phrase is a single path; a disjunctive one
has one path per alternative). A beam's progress is transformers 4.55's
``ConstraintListState``: which constraints are complete, the one in progress and its trie
node, the order of the pending ones (a constraint that falls back from progress goes
last), all-complete. `add` advances it by one token; `advance` lists the tokens that make
progress and the "bank" (progress score) transformers sorts their candidates by,
including its aliasing of a disjunctive constraint's token list when several tokens
continue the same node (``copy(stateful=True)`` shares ``current_seq``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool, Int

from jaxgen.ops import is_int

BIG = np.iinfo(np.int32).max // 2


def _ids(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not value or any(
            not is_int(t) or t < 0 for t in value):
        raise ValueError(f"{what} has to be a non-empty list of token ids >= 0, got {value!r}")
    return tuple(int(t) for t in value)


@dataclasses.dataclass(frozen=True, init=False)
class PhrasalConstraint:
    """Every hypothesis must contain ``token_ids``, in order and contiguously."""

    token_ids: tuple[int, ...]

    def __init__(self, token_ids: Sequence[int]):
        object.__setattr__(self, "token_ids", _ids(token_ids, "PhrasalConstraint token_ids"))

    @property
    def alternatives(self) -> tuple[tuple[int, ...], ...]:
        return (self.token_ids,)


@dataclasses.dataclass(frozen=True, init=False)
class DisjunctiveConstraint:
    """Every hypothesis must contain one of ``nested_token_ids`` (none may be a prefix of
    another, as in transformers)."""

    token_ids: tuple[tuple[int, ...], ...]

    def __init__(self, nested_token_ids: Sequence[Sequence[int]]):
        if not isinstance(nested_token_ids, (list, tuple)) or not nested_token_ids:
            raise ValueError(f"DisjunctiveConstraint needs a non-empty list of token-id lists, "
                             f"got {nested_token_ids!r}")
        alts = tuple(_ids(a, "each DisjunctiveConstraint alternative") for a in nested_token_ids)
        if _trie(alts)[2] != len(alts):
            raise ValueError(f"no DisjunctiveConstraint alternative may be a prefix of another "
                             f"(or repeat it), got {nested_token_ids!r}")
        object.__setattr__(self, "token_ids", alts)

    @property
    def alternatives(self) -> tuple[tuple[int, ...], ...]:
        return self.token_ids


def as_constraint(c: Any) -> PhrasalConstraint | DisjunctiveConstraint:
    """A jaxgen constraint from one of ours, a transformers one, or a ``force_words_ids``
    entry (a list of ids, or a list of such lists)."""
    if isinstance(c, (PhrasalConstraint, DisjunctiveConstraint)):
        return c
    ids = getattr(c, "token_ids", c)
    if type(c).__name__ == "DisjunctiveConstraint" or (
            isinstance(ids, (list, tuple)) and ids and isinstance(ids[0], (list, tuple))):
        return DisjunctiveConstraint(ids)
    return PhrasalConstraint(ids)


def _trie(alts: tuple[tuple[int, ...], ...]) -> tuple[list[dict[int, int]], list[int], int]:
    """Nodes (children in insertion order: token -> node), node depths, leaf count."""
    kids: list[dict[int, int]] = [{}]
    depth = [0]
    for alt in alts:
        node = 0
        for tok in alt:
            if tok not in kids[node]:
                kids.append({})
                depth.append(depth[node] + 1)
                kids[node][tok] = len(kids) - 1
            node = kids[node][tok]
    return kids, depth, sum(1 for k in kids if not k)


class Tables(NamedTuple):
    """Constraints as arrays (``C`` constraints, ``N`` trie nodes, ``W`` children)."""

    child_tok: np.ndarray    # [C, N, W] child tokens in transformers' order (-1: none)
    child_node: np.ndarray   # [C, N, W] their nodes
    leaf: np.ndarray         # [C, N] a complete alternative
    depth: np.ndarray        # [C, N]
    seqlen: np.ndarray       # [C] transformers' ``seqlen`` (the longest alternative)
    q_kind: np.ndarray       # [C, N, W] aliased ``advance`` outcome: 0 progress, 1 done, 2 reset
    q_depth: np.ndarray      # [C, N, W] with 0: the depth its bank sees


@functools.cache
def tables(constraints: tuple[Any, ...]) -> Tables:
    """The `Tables` of ``constraints`` (cached: constraints are hashable)."""
    tries = [_trie(c.alternatives) for c in constraints]
    n = max(len(k) for k, _, _ in tries)
    w = max(max(len(c) for c in k) for k, _, _ in tries)
    shape = (len(tries), n, w)
    t = Tables(np.full(shape, -1, np.int32), np.zeros(shape, np.int32),
               np.zeros(shape[:2], bool), np.zeros(shape[:2], np.int32),
               np.array([max(map(len, c.alternatives)) for c in constraints], np.int32),
               np.zeros(shape, np.int8), np.zeros(shape, np.int32))
    for ci, (kids, depth, _) in enumerate(tries):
        for node, children in enumerate(kids):
            t.leaf[ci, node], t.depth[ci, node] = not children, depth[node]
            for j, (tok, child) in enumerate(children.items()):
                t.child_tok[ci, node, j], t.child_node[ci, node, j] = tok, child
            _aliasing(kids, depth, node, t.q_kind[ci, node], t.q_depth[ci, node])
    return t


def _aliasing(kids: list[dict[int, int]], depth: list[int], node: int, kind: np.ndarray,
              seen: np.ndarray) -> None:
    """transformers' banks of the states ``advance`` makes from a disjunctive constraint in
    progress at ``node``: all its children share one ``current_seq`` list, so each token
    extends the list the previous ones left (or resets), and banks are read at the end."""
    at, live = node, []
    for j, tok in enumerate(kids[node]):
        if tok in kids[at]:
            at = kids[at][tok]
            kind[j] = 1 if not kids[at] else 0
            if kids[at]:
                live.append(j)
        else:
            kind[j] = 2
    for j in live:
        seen[j] = depth[at]


@struct.dataclass
class Progress:
    """Per beam, transformers' ``ConstraintListState`` (leading dims ``*b``)."""

    done: Bool[Array, "*b C"]        # complete constraints
    inprog: Int[Array, "*b"]         # the constraint in progress (-1: none)
    node: Int[Array, "*b"]           # its trie node
    rank: Int[Array, "*b C"]         # pending order (lowest first)
    completed: Bool[Array, "*b"]     # every constraint complete


def start(rows: int, n: int) -> Progress:
    """No progress for ``rows`` beams and ``n`` constraints."""
    return Progress(done=jnp.zeros((rows, n), bool), inprog=jnp.full((rows,), -1, jnp.int32),
                    node=jnp.zeros((rows,), jnp.int32),
                    rank=jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (rows, n)),
                    completed=jnp.zeros((rows,), bool))


def _on_device(t: Tables) -> Tables:
    return Tables(*(jnp.asarray(x) for x in t))


def add(t: Tables, s: Progress, tok: Int[Array, "*b"]) -> Progress:
    """``ConstraintListState.add(tok)`` for every beam."""
    t = _on_device(t)
    n_c = t.seqlen.shape[0]
    has = s.inprog >= 0
    c = jnp.maximum(s.inprog, 0)
    hit = t.child_tok[c, s.node] == tok[..., None]                          # [*b, W]
    nxt = jnp.take_along_axis(t.child_node[c, s.node], jnp.argmax(hit, -1)[..., None],
                              -1)[..., 0]
    stepped = has & hit.any(-1)
    rhit = t.child_tok[:, 0, :] == tok[..., None, None]        # [*b, C, W]
    can = ~s.done & rhit.any(-1) & ~has[..., None]
    first = jnp.argmin(jnp.where(can, s.rank, BIG), -1)
    first_hit = jnp.take_along_axis(rhit, first[..., None, None], -2)[..., 0, :]
    node0 = t.child_node[first, 0, jnp.argmax(first_hit, -1)]
    moved = stepped | can.any(-1)
    cc, nn = jnp.where(has, c, first), jnp.where(has, nxt, node0)
    finished = moved & t.leaf[cc, nn]
    reset = has & ~stepped
    which = jnp.arange(n_c) == cc[..., None]
    done = s.done | (finished[..., None] & which)
    rank = jnp.where(reset[..., None] & which, s.rank.max(-1, keepdims=True) + 1, s.rank)
    off = finished | reset
    new = Progress(done=done, inprog=jnp.where(off, -1, jnp.where(moved, cc, s.inprog)),
                   node=jnp.where(off, 0, jnp.where(moved, nn, s.node)), rank=rank,
                   completed=finished & done.all(-1))
    keep = s.completed
    return Progress(done=jnp.where(keep[..., None], s.done, new.done),
                    inprog=jnp.where(keep, s.inprog, new.inprog),
                    node=jnp.where(keep, s.node, new.node),
                    rank=jnp.where(keep[..., None], s.rank, new.rank),
                    completed=keep | new.completed)


def bank(t: Tables, s: Progress) -> Int[Array, "*b"]:
    """transformers' ``get_bank``: complete constraints x longest + progress in the current."""
    m = int(np.max(t.seqlen))
    t = _on_device(t)
    c = jnp.maximum(s.inprog, 0)
    part = jnp.where(s.inprog >= 0, m - (t.seqlen[c] - t.depth[c, s.node]), 0)
    return s.done.sum(-1) * m + part


def advance(t: Tables, s: Progress) -> tuple[Int[Array, "*b A"], Bool[Array, "*b A"],
                                              Int[Array, "*b A"]]:
    """Tokens that make progress (transformers' ``advance()`` order), whether each is
    real, and the bank transformers gives each candidate: ``A = C * W`` slots."""
    n_c, _, w = t.child_tok.shape
    m = int(np.max(t.seqlen))
    root_bank_of = functools.partial(_root_bank, t)
    t = _on_device(t)
    has = s.inprog >= 0
    c = jnp.maximum(s.inprog, 0)
    n_done = s.done.sum(-1)[..., None]
    kind, seen = t.q_kind[c, s.node], t.q_depth[c, s.node]               # [*b, W]
    in_bank = jnp.where(kind == 1, n_done * m + m, jnp.where(
        kind == 2, n_done * m, n_done * m + m - (t.seqlen[c][..., None] - seen)))
    pad = [(0, 0)] * (in_bank.ndim - 1) + [(0, (n_c - 1) * w)]
    in_tok = jnp.pad(t.child_tok[c, s.node], pad, constant_values=-1)
    in_bank = jnp.pad(in_bank, pad)
    pending = ~s.done & (jnp.arange(n_c) != jnp.where(has, s.inprog, -1)[..., None])
    order = jnp.argsort(jnp.where(pending, s.rank, BIG), -1, stable=True)   # [*b, C]
    root_tok = t.child_tok[order, 0]                                        # [*b, C, W]
    root_ok = jnp.take_along_axis(pending, order, -1)[..., None] & (root_tok >= 0)
    root_tok = root_tok.reshape(*root_tok.shape[:-2], n_c * w)
    root_bank = root_bank_of(s, root_tok)
    tokens = jnp.where(has[..., None], in_tok, root_tok)
    valid = ~s.completed[..., None] & jnp.where(
        has[..., None], in_tok >= 0, root_ok.reshape(root_tok.shape))
    return tokens, valid, jnp.where(has[..., None], in_bank, root_bank)


def _root_bank(t: Tables, s: Progress, tok: Int[Array, "*b A"]) -> Int[Array, "*b A"]:
    """The bank after adding each of ``tok`` to the beam's (unaliased) state."""
    wide = Progress(done=s.done[..., None, :], inprog=s.inprog[..., None],
                    node=s.node[..., None], rank=s.rank[..., None, :],
                    completed=s.completed[..., None])
    return bank(t, add(t, wide, tok))
