"""KV cache layouts on XLA:CPU: stacked vs one buffer per layer, and paged gathers.

    python benchmarks/bench_cache_layout.py            # b16 x 512 slots, 6 layers
    python benchmarks/bench_cache_layout.py --batch 8 --slots 160

A bare decode loop (6 layers shaped like the bundled model: d 256, 4 query / 2 kv
heads, hd 64, SwiGLU 704; one token per row per step, inside one jitted while_loop,
cache donated) with the cache kept as

- **stacked**: one ``[layers, batch, kv, S, hd]`` array per k/v, layer ``l`` written
  with a ``dynamic_update_slice`` and read as ``k[l]`` (the slice XLA copies before the
  dot), or
- **per layer**: one ``[batch, kv, S, hd]`` buffer per layer (`jaxgen.models.per_layer`),

and, for the paged pool of the engine, one layer's ``[kv, batch, S, hd]`` keys gathered
as ``pool[layer][:, table]`` + transpose (the old path) or as one take of whole-block
rows (`jaxgen.models.paged`). Interleaved rounds; medians in ms.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

L, KV, G, HD, D, FF = 6, 2, 2, 64, 256, 704
DOT = (((3,), (3,)), ((0, 1), (0, 1)))
PV = (((3,), (2,)), ((0, 1), (0, 1)))


def weights(seed: int = 0) -> list[dict]:
    rs = np.random.default_rng(seed)

    def w(*shape):
        return jnp.asarray(rs.normal(size=shape) * 0.02, jnp.float32)

    return [dict(q=w(D, KV * G * HD), k=w(D, KV * HD), v=w(D, KV * HD), o=w(KV * G * HD, D),
                 up=w(D, 2 * FF), down=w(FF, D)) for _ in range(L)]


def layer(w, x, kv_of, b):
    """One pre-norm-free decoder layer; ``kv_of(k, v)`` writes and returns the keys."""
    q = (x @ w["q"]).reshape(b, KV, G, HD)
    keys, values = kv_of((x @ w["k"]).reshape(b, KV, 1, HD), (x @ w["v"]).reshape(b, KV, 1, HD))
    p = jax.nn.softmax(lax.dot_general(q, keys, DOT), -1)
    x = x + lax.dot_general(p, values, PV).reshape(b, -1) @ w["o"]
    h = x @ w["up"]
    return x + (jax.nn.silu(h[:, :FF]) * h[:, FF:]) @ w["down"]


def loop(ws, x, k, v, n, per_layer: bool):
    b, zero = x.shape[0], jnp.zeros((), jnp.int32)

    def body(c):
        i, x, k, v = c
        k, v, at = list(k) if per_layer else k, list(v) if per_layer else v, i % k_slots
        for li in range(L):
            def kv_of(nk, nv, li=li):
                nonlocal k, v
                if per_layer:
                    k[li] = lax.dynamic_update_slice(k[li], nk, (zero, zero, at, zero))
                    v[li] = lax.dynamic_update_slice(v[li], nv, (zero, zero, at, zero))
                    return k[li], v[li]
                start = (jnp.int32(li), zero, zero, at, zero)
                k = lax.dynamic_update_slice(k, nk[None], start)
                v = lax.dynamic_update_slice(v, nv[None], start)
                return k[li], v[li]
            x = layer(ws[li], x, kv_of, b)
        return i + 1, x, tuple(k) if per_layer else k, tuple(v) if per_layer else v

    k_slots = k[0].shape[2]
    return lax.while_loop(lambda c: c[0] < n, body, (jnp.int32(0), x, k, v))


def gathers(pool, table, flat_take: bool):
    """Layer 3's keys of every row (old: ``[batch, kv, S, hd]``; new: kv-major)."""
    layers, kv, blocks, bs, hd = pool.shape
    b, n = table.shape
    if not flat_take:
        # the old layout: [kv, batch, n, B, hd] -> [batch, kv, n * B, hd]
        return pool[3][:, table].transpose(1, 0, 2, 3, 4).reshape(b, kv, n * bs, hd)
    rows = ((3 * kv + jnp.arange(kv))[:, None, None] * blocks + table[None]).reshape(-1)
    return jnp.take(pool.reshape(-1, bs * hd), rows, axis=0).reshape(kv, b, n * bs, hd)


def timed(fn, rounds: int) -> float:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(1e3 * (time.perf_counter() - t))
    return statistics.median(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--slots", type=int, default=512)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    b, s, n = a.batch, a.slots, a.steps
    ws, x = weights(), jnp.ones((b, D))
    runs = {}
    for per_layer in (False, True):
        f = jax.jit(lambda k, v, p=per_layer: loop(ws, x, k, v, n, p), donate_argnums=(0, 1))
        shape = (b, KV, s, HD)
        state = {"k": tuple(jnp.zeros(shape) for _ in range(L)) if per_layer else
                 jnp.zeros((L, *shape)), "v": None}
        state["v"] = jax.tree.map(jnp.zeros_like, state["k"])

        def run(f=f, state=state):
            out = f(state["k"], state["v"])
            state["k"], state["v"] = out[2], out[3]
            return out[1]

        run()
        runs["per-layer" if per_layer else "stacked"] = run
    blocks = b * s // 16 + 1
    table = jnp.asarray(np.random.default_rng(0).permutation(np.arange(1, blocks))
                        .reshape(b, s // 16), jnp.int32)
    pool = jnp.ones((L, KV, blocks, 16, HD))
    for flat in (False, True):
        g = jax.jit(lambda p, t, f=flat: gathers(p, t, f))
        g(pool, table)
        runs["block-row take" if flat else "pool[l][:, table]"] = lambda g=g: g(pool, table)
    med = {k: [] for k in runs}
    for _ in range(a.rounds):
        for k, fn in runs.items():
            med[k].append(timed(fn, 1))
    print(f"batch {b}, {s} slots, {L} layers ({jax.default_backend()})\n")
    print("| what | ms |\n|---|---:|")
    for k in ("stacked", "per-layer"):
        print(f"| decode step, {k} cache | {statistics.median(med[k]) / n:.2f} |")
    for k in ("pool[l][:, table]", "block-row take"):
        print(f"| one layer's paged keys, `{k}` | {statistics.median(med[k]):.2f} |")


if __name__ == "__main__":
    main()
