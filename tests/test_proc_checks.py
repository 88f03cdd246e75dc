"""Processors and stopping criteria are checked once, at construction: rebuilding the
pytree (jit, ``jax.tree.map``, vmap) never runs ``__init__`` / ``__post_init__`` again, so
a tracer never reaches the checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgen import processors as P
from jaxgen.processors.base import Context
from tests.test_proc_rows import CRITERIA, PROCESSORS, V


def _classes(obj):
    """The pytree_dataclass classes inside ``obj`` (a processor, a chain, a criterion)."""
    out = {type(obj)}
    for child in getattr(obj, "processors", ()):
        out |= _classes(child)
    return out


class Constructions:
    """Counts every ``__init__`` of the watched classes (``calls``), and fails when a
    ``__post_init__`` sees a tracer."""

    def __init__(self, monkeypatch):
        self.monkeypatch, self.calls = monkeypatch, []

    def watch(self, cls):
        init, post = cls.__init__, cls.__dict__.get("__post_init__")
        calls = self.calls

        def counting_init(obj, *a, **kw):
            calls.append(cls.__name__)
            init(obj, *a, **kw)

        self.monkeypatch.setattr(cls, "__init__", counting_init)
        if post is not None:
            def checking_post(obj, *a):
                for value in vars(obj).values():
                    assert not isinstance(value, jax.core.Tracer), cls.__name__
                post(obj, *a)
            self.monkeypatch.setattr(cls, "__post_init__", checking_post)


@pytest.fixture
def constructions(monkeypatch):
    return Constructions(monkeypatch)


def _ctx(rows=3, length=12):
    seq = jnp.asarray(np.random.RandomState(0).randint(0, 20, (rows, length)), jnp.int32)
    return Context(seq, jnp.ones_like(seq), jnp.int32(8), jnp.int32(1))


def _use(obj, ctx, logits):
    if isinstance(obj, P.LogitsProcessor):
        if isinstance(obj, P.ClassifierFreeGuidance):
            logits = jnp.concatenate([logits, logits])
        out, _ = obj(logits, obj.init(ctx), ctx)
        return out
    return obj(ctx)


CASES = PROCESSORS + CRITERIA


@pytest.mark.parametrize("name,make", CASES, ids=[c[0] for c in CASES])
def test_checks_run_once_at_construction(name, make, constructions):
    obj = make(slice(None))
    for cls in _classes(obj):
        constructions.watch(cls)
    obj = jax.tree.map(lambda x: x, obj)           # rebuilt from its leaves
    assert constructions.calls == []
    ctx, logits = _ctx(), jnp.zeros((3, V))
    jitted = jax.jit(_use)(obj, ctx, logits)
    jax.vmap(_use, in_axes=(None, 0, None))(obj, jax.tree.map(lambda x: x[None], ctx),
                                            logits)
    leaves, tree = jax.tree.flatten(obj)
    again = jax.tree.unflatten(tree, [jnp.asarray(x) for x in leaves])
    assert type(again) is type(obj) and isinstance(again, type(obj))
    np.testing.assert_array_equal(np.asarray(jax.jit(_use)(again, ctx, logits)),
                                  np.asarray(jitted))
    assert constructions.calls == []               # no __init__ at all since construction


def test_construction_still_checks_and_replace_checks_again(constructions):
    constructions.watch(P.TopK)
    k = P.TopK(5)
    assert constructions.calls == ["TopK"]
    assert isinstance(k.top_k, np.ndarray) and k.top_k.dtype == np.int32
    with pytest.raises(ValueError, match="top_k"):
        k.replace(top_k=0)
    assert k.replace(top_k=7).top_k == 7 and constructions.calls == ["TopK"] * 3


def test_tree_map_keeps_static_fields_and_user_dataclasses_still_work():
    k = jax.tree.map(lambda x: x + 1, P.TopK(5, min_tokens_to_keep=2))
    assert int(k.top_k) == 6 and k.k_max == 64 and k.min_tokens_to_keep == 2
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(
        P.chain(P.Temperature(0.5), P.TopK(3)))[0]]
    assert paths == [".processors[0].temperature", ".processors[1].top_k"]
