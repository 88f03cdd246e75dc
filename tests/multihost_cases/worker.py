"""One JAX process of ``tests/test_multihost.py`` (CPU devices, gloo collectives)::

    python tests/multihost_cases/worker.py CASE CKPT OUT.json --processes 2 --id 0 --port P

``--processes 1`` is the reference: one process with 8 devices. Otherwise each of the
processes has ``8 / processes`` devices and passes its own block of the prompts. Cases:
``parity`` (greedy, beam, seeded sampling on meshes spanning both processes; the
global-batch form, streaming, generate_batch; loading reads only this host's shards),
``errors`` (bad row counts, a different config, a failed validation on one process,
different generate_batch inputs; then good calls, one with guidance), ``init`` (start-up only: an
unreachable coordinator, a missing peer).
Each case writes ``{name: value}``; the test compares processes and the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.pop("XLA_FLAGS", None)

import jax  # noqa: E402
import numpy as np  # noqa: E402

MESHES = [(8, 1), (2, 4), (4, 2)]
ROWS = 8  # global prompts
STRATEGIES: dict[str, dict[str, Any]] = {
    "greedy": dict(max_new_tokens=8, do_sample=False),
    "beam": dict(max_new_tokens=8, num_beams=2, do_sample=False),
    "sample": dict(max_new_tokens=8, do_sample=True, top_k=20),
}
TEXTS = ["To be", "Once upon a time", "ROMEO:", "The king", "It was", "O", "A", "We"]


def prompts(vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """``ROWS`` left-padded prompts of 2..8 tokens (pad id 0), the same in every process."""
    rng = np.random.default_rng(0)
    ids, mask = np.zeros((ROWS, 8), np.int32), np.zeros((ROWS, 8), np.int32)
    for i in range(ROWS):
        n = 2 + (i * 3) % 7
        ids[i, 8 - n:], mask[i, 8 - n:] = rng.integers(3, vocab, n), 1
    return ids, mask


def mine(x: np.ndarray) -> np.ndarray:
    """This process's block of the global rows (what it passes in local mode)."""
    n = len(x) // jax.process_count()
    return x[jax.process_index() * n:(jax.process_index() + 1) * n]


def _gen(lm: Any, ids: np.ndarray, mask: np.ndarray, kw: dict[str, Any]) -> list:
    return np.asarray(lm.generate(ids, mask, rng=jax.random.key(3), **kw)).tolist()


def parity(ckpt: Path) -> dict[str, Any]:
    import jaxgen
    from jaxgen import sharding as S

    out: dict[str, Any] = {}
    ids, mask = prompts(jaxgen.load(ckpt).model.vocab_size)
    for shape in MESHES:
        key = f"{shape[0]}x{shape[1]}"
        lm = jaxgen.load(ckpt, mesh=S.make_mesh(shape))
        for name, kw in STRATEGIES.items():
            out[f"{name}-{key}"] = _gen(lm, mine(ids), mine(mask), kw)
    # the global batch in, the global result out on every process
    mesh = S.make_mesh((2, 4))
    lm = jaxgen.load(ckpt, mesh=mesh)
    batch = S.global_batch({"input_ids": mine(ids), "attention_mask": mine(mask)}, mesh)
    out["global-greedy-2x4"] = np.asarray(lm.generate(
        batch["input_ids"], batch["attention_mask"], **STRATEGIES["greedy"])).tolist()
    out["stream-2x4"] = ["".join(pieces) for pieces in zip(*jaxgen.stream(
        lm, mine(TEXTS), max_new_tokens=8, do_sample=False), strict=True)]
    # generate_batch: every process passes all the prompts and gets every result
    out["batch-2x4"] = [r.tokens for r in jaxgen.generate_batch(
        lm, TEXTS, max_new_tokens=8, do_sample=False, progress=False)]
    out["loading-1x8"] = _loading(ckpt)
    return out


def _loading(ckpt: Path) -> dict[str, Any]:
    """Bytes this process read from the checkpoint for a (1, 8) mesh (the model axis
    spans both processes), and whether its shards hold the right values."""
    import jaxgen
    from jaxgen import sharding as S
    from jaxgen.models import checkpoint

    ref = jaxgen.load(ckpt)
    read, depth = [0], [0]  # a window may read through __call__: count the outer call
    call, window = checkpoint._Stored.__call__, checkpoint._Stored.window

    def count(fn: Any) -> Any:
        def wrapped(*args: Any) -> np.ndarray:
            depth[0] += 1
            try:
                x = fn(*args)
            finally:
                depth[0] -= 1
            read[0] += x.nbytes if depth[0] == 0 else 0
            return x
        return wrapped

    checkpoint._Stored.__call__, checkpoint._Stored.window = count(call), count(window)
    try:
        lm = jaxgen.load(ckpt, mesh=S.make_mesh((1, 8)))
    finally:
        checkpoint._Stored.__call__, checkpoint._Stored.window = call, window
    total = sum(x.nbytes for x in jax.tree.leaves(ref.params))
    right = True
    flat_ref = dict(jax.tree_util.tree_flatten_with_path(ref.params)[0])
    for path, x in jax.tree_util.tree_flatten_with_path(lm.params)[0]:
        if x.shape != flat_ref[path].shape:  # k/v with repeated heads: checked by tokens
            continue
        full = np.asarray(flat_ref[path])
        right &= all((np.asarray(s.data) == full[s.index]).all() for s in x.addressable_shards)
    return {"read": read[0], "total": total, "right": bool(right)}


def errors(ckpt: Path) -> dict[str, Any]:
    import jaxgen
    from jaxgen import sharding as S

    out: dict[str, Any] = {}
    lm = jaxgen.load(ckpt, mesh=S.make_mesh((8, 1)))
    ids, mask = prompts(lm.model.vocab_size)
    me = jax.process_index()
    calls = {
        "rows": (ids[:3], mask[:3], dict(max_new_tokens=4)),
        "config": (mine(ids), mine(mask), dict(max_new_tokens=4 + me)),
        "validation": (mine(ids), mine(mask), dict(max_new_tokens=4, do_sample=True,
                                                   temperature=-1.0 if me else 1.0)),
    }
    for name, (a, b, kw) in calls.items():
        try:
            lm.generate(a, b, **kw)
            out[name] = "no error"
        except ValueError as e:
            out[name] = str(e)
    try:
        jaxgen.generate_batch(lm, TEXTS[:2 + me], max_new_tokens=4, progress=False)
        out["batch"] = "no error"
    except ValueError as e:
        out["batch"] = str(e)
    out["after"] = _gen(lm, mine(ids), mine(mask), STRATEGIES["greedy"])
    # classifier-free guidance: the negative prompts are per-process rows too
    kw = dict(STRATEGIES["greedy"], guidance_scale=1.5, negative_prompt_ids=ids[::-1],
              negative_prompt_attention_mask=mask[::-1])
    alone = jaxgen.load(ckpt).generate(ids, mask, **kw)    # this process's devices only
    kw |= dict(negative_prompt_ids=mine(ids[::-1]),
               negative_prompt_attention_mask=mine(mask[::-1]))
    out["guidance"] = bool((lm.generate(mine(ids), mine(mask), **kw) == mine(alone)).all())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("case")
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--id", type=int, default=0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--timeout", type=int, default=60)
    a = ap.parse_args()
    jax.config.update("jax_num_cpu_devices", 8 // a.processes)
    if a.processes > 1 or a.case == "init":
        from jaxgen import distributed

        distributed.initialize(f"127.0.0.1:{a.port}", a.processes, a.id, timeout=a.timeout,
                               heartbeat_timeout=a.timeout, shutdown_timeout=a.timeout)
    if a.case == "init":
        a.out.write_text(json.dumps({"initialized": True}))
        return
    try:
        result = {"parity": parity, "errors": errors}[a.case](a.ckpt)
    except Exception:
        traceback.print_exc()
        sys.exit(3)
    a.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
