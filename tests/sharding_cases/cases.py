"""Multi-device checks for ``tests/test_sharding.py``, run in a subprocess on 8 simulated
CPU devices: ``python tests/sharding_cases/cases.py {parity,inspect} OUT.json``.

Each case writes ``{check name: [ok, detail]}``; the test module asserts each entry.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxgen  # noqa: E402
from jaxgen import sharding as S  # noqa: E402

MESHES = [(8, 1), (2, 4), (1, 8), (4, 2)]
VOCAB = 128
_COMPILES: list[str] = []


def _listener(name: str, duration: float, **kwargs: Any) -> None:
    if name == "/jax/core/compile/backend_compile_duration":
        _COMPILES.append(name)


jax.monitoring.register_event_duration_secs_listener(_listener)


class Results(dict):
    """``check(name, ok, detail)`` records one result; ``guard(name)`` records a crash."""

    def check(self, name: str, ok: bool, detail: Any = "") -> None:
        self[name] = [bool(ok), str(detail)[:2000]]

    def guard(self, name: str, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - reported to the test as a failed check
            self.check(name, False, traceback.format_exc())


def prompts(batch: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` left-padded random prompts of 3..9 tokens (pad id 0)."""
    rng = np.random.default_rng(seed)
    width = 9
    ids = np.zeros((batch, width), np.int32)
    mask = np.zeros((batch, width), np.int32)
    for i in range(batch):
        n = 3 + (i * 5) % (width - 2)
        ids[i, width - n:] = rng.integers(3, VOCAB, n)
        mask[i, width - n:] = 1
    return ids, mask


def hf_checkpoints(root: Path) -> dict[str, Path]:
    """Tiny random transformers checkpoints (8 attention heads; one GQA with 4 kv heads)."""
    import torch
    import transformers

    torch.manual_seed(0)
    common = dict(vocab_size=VOCAB, initializer_range=0.3, bos_token_id=1, eos_token_id=2)
    models = {
        "llama": transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
            num_key_value_heads=8, max_position_embeddings=128, **common)),
        "llama_gqa": transformers.LlamaForCausalLM(transformers.LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
            num_key_value_heads=4, max_position_embeddings=128, **common)),
        "gpt2": transformers.GPT2LMHeadModel(transformers.GPT2Config(
            n_embd=64, n_layer=2, n_head=8, n_positions=128, **common)),
    }
    out = {}
    for name, m in models.items():
        m.eval()
        m.save_pretrained(root / name)
        out[name] = root / name
    return out


STRATEGIES: dict[str, dict[str, Any]] = {
    "greedy": dict(max_new_tokens=12),
    "beam": dict(max_new_tokens=12, num_beams=2),
}


def _same(a: np.ndarray, b: np.ndarray) -> tuple[bool, str]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return False, f"shapes differ: {a.shape} vs {b.shape}"
    ok = bool((a == b).all())
    return ok, "" if ok else f"rows differ: {np.nonzero((a != b).any(1))[0].tolist()}\n{a}\n{b}"


def parity() -> Results:
    """Greedy / beam (every mesh), sampling and beam sampling (8,1) vs one device; no
    recompiles on a repeated call or between chunks; the KV cache's placement."""
    res = Results()
    ids, mask = prompts()
    root = Path(tempfile.mkdtemp())
    dirs = hf_checkpoints(root)
    for name, path in dirs.items():
        ref_lm = jaxgen.load(path)
        refs = {s: ref_lm.generate(ids, mask, **kw) for s, kw in STRATEGIES.items()}
        # the GQA model (4 kv heads) only where it adds something: a split kv axis, and
        # a model axis of 8 (each kv head repeated twice)
        for shape in [(2, 4), (1, 8)] if name == "llama_gqa" else MESHES:
            key = f"{name}-{shape[0]}x{shape[1]}"
            res.guard(f"greedy-{key}", _mesh_parity, res, key, path, shape, refs, ids, mask)
        sample_kw = {"sample": dict(max_new_tokens=12, do_sample=True, top_k=20)}
        if name == "llama":
            sample_kw["beam_sample"] = dict(max_new_tokens=12, do_sample=True, num_beams=2)
        if name != "llama_gqa":
            res.guard(f"sample-{name}-8x1", _sampling, res, name, path, ref_lm, sample_kw,
                      ids, mask)
    res.guard("no_recompile", _no_recompile, res, dirs["llama"], ids, mask)
    return res


def _mesh_parity(res: Results, key: str, path: Path | None, shape: tuple[int, int],
                 refs: dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray,
                 strategies: dict[str, dict[str, Any]] = STRATEGIES) -> None:
    lm = jaxgen.load(path, mesh=S.make_mesh(shape))
    for strategy, kw in strategies.items():
        res.check(f"{strategy}-{key}", *_same(lm.generate(ids, mask, **kw), refs[strategy]))


def _sampling(res: Results, name: str, path: Path, ref_lm: Any, sample_kw: dict[str, Any],
              ids: np.ndarray, mask: np.ndarray) -> None:
    lm = jaxgen.load(path, mesh=S.make_mesh((8, 1)))
    for strategy, kw in sample_kw.items():
        a = lm.generate(ids, mask, rng=jax.random.key(3), **kw)
        b = ref_lm.generate(ids, mask, rng=jax.random.key(3), **kw)
        res.check(f"{strategy}-{name}-8x1", *_same(a, b))


def _no_recompile(res: Results, path: Path, ids: np.ndarray, mask: np.ndarray) -> None:
    from jaxgen.decoding import run_steps
    from jaxgen.generate import finish, prepare, start

    lm = jaxgen.load(path, mesh=S.make_mesh((2, 4)))
    lm.generate(ids, mask, max_new_tokens=12)
    n0 = len(_COMPILES)
    lm.generate(ids, mask, max_new_tokens=12)
    res.check("no_recompile-repeat", len(_COMPILES) == n0, f"{len(_COMPILES) - n0} compiles")
    prep = prepare(lm.model, ids, mask, config=lm.generation_config, max_new_tokens=12)
    state = start(prep, lm.params)
    specs = [tuple(k.sharding.spec) for k in state.loop.cache.k.arrays]  # per layer
    res.check("kv_cache_placement", all(sp[:2] == ("data", "model") for sp in specs), specs)
    four = np.asarray(4, np.int32)
    state = run_steps(prep.strategy, lm.params, state, four)
    n1 = len(_COMPILES)
    state = run_steps(prep.strategy, lm.params, state, four)
    state = run_steps(prep.strategy, lm.params, state, four)
    res.check("no_recompile-chunks", len(_COMPILES) == n1, f"{len(_COMPILES) - n1} compiles")
    ref = jaxgen.load(path).generate(ids, mask, max_new_tokens=12)
    res.check("chunks-equal", *_same(finish(prep, state), ref))


# ------------------------------------------------------------------------------ inspect


def _collectives(hlo: str) -> list[tuple[str, tuple[int, ...]]]:
    """``(op, result shape)`` of every collective in compiled HLO text."""
    out = []
    pat = (r"= \w+\[([\d,]*)\]\S* (all-reduce|all-gather|all-to-all|collective-permute|"
           r"reduce-scatter)(?:-start)?\(")
    for m in re.finditer(pat, hlo):
        shape = tuple(int(d) for d in m.group(1).split(",") if d)
        out.append((m.group(2), shape))
    return out


def _tiny(kind: str, root: Path) -> Path:
    from jaxgen.models import GPT2, GPT2Config, Llama, LlamaConfig, save_checkpoint

    if kind == "llama":
        model: Any = Llama(LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=8,
                                       num_key_value_heads=8, eos_token_id=2))
    else:
        model = GPT2(GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=8,
                                n_positions=128, bos_token_id=1, eos_token_id=2))
    save_checkpoint(model, model.init_params(jax.random.key(0)), root / kind)
    return root / kind


def inspect() -> Results:
    """Parameter shards, compiled collectives, batch errors, the single-process path of
    the multi-host recipe, and memory_per_device against real shard sizes."""
    res = Results()
    root = Path(tempfile.mkdtemp())
    paths = {k: _tiny(k, root) for k in ("llama", "gpt2")}
    ids, mask = prompts()

    def shards() -> None:
        lm = jaxgen.load(paths["llama"], mesh=S.make_mesh((2, 4)))
        p = lm.params["layers_0"]
        q = p["self_attn"]["q_proj"]["kernel"]          # [64, 8 heads * 8]
        hd = lm.model.config.head_dim
        res.check("shard-q_proj", q.addressable_shards[0].data.shape == (64, 64 // 4)
                  and q.shape[1] // hd // 4 == 16 // hd, q.sharding)
        res.check("shard-o_proj", p["self_attn"]["o_proj"]["kernel"]
                  .addressable_shards[0].data.shape == (16, 64), "")
        res.check("shard-down_proj", p["mlp"]["down_proj"]["kernel"]
                  .addressable_shards[0].data.shape == (32, 64), "")
        res.check("shard-norm-replicated",
                  p["input_layernorm"]["scale"].sharding.is_fully_replicated, "")
        res.check("shard-embed-vocab", lm.params["embed_tokens"]["embedding"]
                  .addressable_shards[0].data.shape == (VOCAB // 4, 64), "")
        # memory_per_device agrees with the bytes really held by device 0
        held = sum(s.data.nbytes for x in jax.tree.leaves(lm.params)
                   for s in x.addressable_shards if s.device == jax.devices()[0])
        mem = S.memory_per_device(lm.model.config, batch=8, length=32, mesh_shape=(2, 4),
                                  dtype="float32")
        res.check("memory-params-vs-shards", held == mem["params_bytes"],
                  f"held {held}, computed {mem['params_bytes']}")
        g = jaxgen.load(paths["gpt2"], mesh=S.make_mesh((1, 8)))
        c_fc = g.params["layers_0"]["mlp"]["c_fc"]["kernel"]
        res.check("shard-gpt2-c_fc", c_fc.addressable_shards[0].data.shape == (64, 256 // 8),
                  c_fc.sharding)
        # an Explicit-axis mesh from jax.make_mesh is accepted (made Auto)
        explicit = jax.make_mesh((2, 4), ("data", "model"))
        lm2 = jaxgen.load(paths["llama"], mesh=explicit)
        out = lm2.generate(ids, mask, max_new_tokens=6)
        ref = jaxgen.load(paths["llama"]).generate(ids, mask, max_new_tokens=6)
        res.check("explicit-mesh-accepted", *_same(out, ref))
    res.guard("shard-q_proj", shards)

    def hlo() -> None:
        from jaxgen.decoding import run_steps
        from jaxgen.generate import prepare, start

        for kind, shape in [("llama", (1, 8)), ("llama", (2, 4)), ("gpt2", (1, 8))]:
            lm = jaxgen.load(paths[kind], mesh=S.make_mesh(shape))
            prep = prepare(lm.model, ids, mask, config=lm.generation_config,
                           max_new_tokens=8)
            state = start(prep, lm.params)
            text = run_steps.lower(prep.strategy, lm.params, state,
                                   np.asarray(7, np.int32)).compile().as_text()
            ops = _collectives(text)
            weights = {tuple(x.shape) for x in jax.tree.leaves(lm.params) if x.ndim == 2}
            n_reduce = sum(op == "all-reduce" for op, _ in ops)
            key = f"{kind}-{shape[0]}x{shape[1]}"
            # two row-parallel projections per layer (attention out, MLP down)
            res.check(f"hlo-all-reduce-{key}", n_reduce >= 2 * 2, ops)
            full = [(op, s) for op, s in ops if op != "all-reduce" and s in weights]
            res.check(f"hlo-no-weight-gather-{key}", not full, full)
            if kind == "llama":
                res.check(f"hlo-no-all-gather-{key}",
                          not any(op == "all-gather" for op, _ in ops), ops)
    res.guard("hlo", hlo)

    def batch_errors() -> None:
        lm = jaxgen.load(paths["llama"], mesh=S.make_mesh((4, 2)))
        n0 = len(_COMPILES)
        for label, kw, b, want in [("greedy", {}, 6, "input_ids batch 6"),
                                   ("beam", {"num_beams": 2}, 3, "input_ids batch 3 x 2")]:
            try:
                lm.generate(ids[:b], mask[:b], max_new_tokens=4, **kw)
            except ValueError as e:
                msg = str(e)
                res.check(f"batch_error-{label}", want in msg and "'data'" in msg
                          and "size 4" in msg, msg)
            else:
                res.check(f"batch_error-{label}", False, "no error")
        res.check("batch_error-before-compile", len(_COMPILES) == n0,
                  f"{len(_COMPILES) - n0} compiles")
    res.guard("batch_errors", batch_errors)

    def multihost() -> None:
        mesh = S.make_mesh((2, 4))
        lm = jaxgen.load(paths["llama"], mesh=mesh)
        res.check("multihost-process_count", jax.process_count() == 1, jax.process_count())
        batch = S.global_batch({"input_ids": ids, "attention_mask": mask}, mesh)
        x = batch["input_ids"]
        res.check("multihost-global_batch", x.shape == ids.shape
                  and tuple(x.sharding.spec) == ("data", None)
                  and (S.to_host(x) == ids).all(), x.sharding)
        placed = S.shard_batch(ids, mesh)
        res.check("shard_batch", tuple(placed.sharding.spec) == ("data", None)
                  and placed.addressable_shards[0].data.shape == (4, ids.shape[1]),
                  placed.sharding)
        out = lm.generate(**{k: S.to_host(v) for k, v in batch.items()}, max_new_tokens=6)
        ref = jaxgen.load(paths["llama"]).generate(ids, mask, max_new_tokens=6)
        res.check("multihost-generate", *_same(out, ref))
    res.guard("multihost", multihost)
    return res


def kv() -> Results:
    """Repeated kv heads on the bundled model (4 query heads, 2 kv heads): (2, 4) equals
    one device (greedy, beam), via load and via `replicate_kv_heads`; the shards, the
    cache and memory_per_device; the errors."""
    from jaxgen import placement
    from jaxgen.generate import prepare, start

    res = Results()
    ref = jaxgen.load()
    ids, mask = prompts(seed=1)
    plain = {s: {**kw, "do_sample": False} for s, kw in STRATEGIES.items()}  # model samples
    refs = {s: ref.generate(ids, mask, **kw) for s, kw in plain.items()}
    res.guard("greedy-bundled-2x4", _mesh_parity, res, "bundled-2x4", None, (2, 4), refs, ids,
              mask, plain)

    def layout() -> None:
        lm = jaxgen.load(mesh=S.make_mesh((2, 4)))
        c = lm.model.config
        k = lm.params["layers_0"]["self_attn"]["k_proj"]["kernel"]   # [d, 4 kv * hd]
        res.check("kv-config", c.num_key_value_heads == 4 and c.num_attention_heads == 4, c)
        res.check("kv-shard", k.addressable_shards[0].data.shape == (c.hidden_size,
                                                                     c.head_dim), k.sharding)
        stored = np.asarray(ref.params["layers_0"]["self_attn"]["k_proj"]["kernel"])
        hd = c.head_dim
        want = np.concatenate([stored[:, (j // 2) * hd:(j // 2 + 1) * hd] for j in range(4)], 1)
        res.check("kv-copies", (np.asarray(k) == want).all(), "")
        held = sum(s.data.nbytes for x in jax.tree.leaves(lm.params)
                   for s in x.addressable_shards if s.device == jax.devices()[0])
        prep = prepare(lm.model, ids, mask, config=lm.generation_config, max_new_tokens=12)
        layers = start(prep, lm.params).loop.cache.k.arrays   # per layer [rows, kv, slots, hd]
        shards = [k.addressable_shards[0].data for k in layers]
        mem = S.memory_per_device(ref.model.config, batch=8, length=layers[0].shape[2],
                                  mesh_shape=(2, 4), dtype="float32")
        res.check("kv-memory-params", held == mem["params_bytes"],
                  f"held {held}, computed {mem['params_bytes']}")
        res.check("kv-memory-cache", 2 * sum(x.nbytes for x in shards) == mem["kv_cache_bytes"]
                  and shards[0].shape[1] == mem["kv_heads_per_device"] == 1,
                  f"{shards[0].shape}, {mem}")
    res.guard("kv-config", layout)

    def in_memory() -> None:
        mesh = S.make_mesh((2, 4))
        lm = jaxgen.load()
        lm.params = S.shard_params(lm.params, mesh, model=lm.model)
        try:
            lm.generate(ids, mask, max_new_tokens=4, do_sample=False)
            res.check("kv-unreplicated-error", False, "no error")
        except ValueError as e:
            res.check("kv-unreplicated-error", "num_key_value_heads=2" in str(e)
                      and "replicate_kv_heads" in str(e), e)
        lm.model, params = placement.replicate_kv_heads(lm.model, jaxgen.load().params, mesh)
        lm.params = S.shard_params(params, mesh, model=lm.model)
        res.check("kv-in-memory", *_same(lm.generate(ids, mask, **plain["greedy"]),
                                         refs["greedy"]))
    res.guard("kv-unreplicated-error", in_memory)

    res.guard("kv-gguf-2x4", _gguf_on_mesh, res, ids, mask, plain["greedy"])

    def int8() -> None:  # int8 weights + cache on the (2, 4) mesh equal them on one device
        kw = {"quantize": "int8", "kv_cache_dtype": "int8"}
        one = jaxgen.load(**kw).generate(ids, mask, **plain["greedy"])
        res.check("int8-2x4", *_same(jaxgen.load(mesh=S.make_mesh((2, 4)), **kw).generate(
            ids, mask, **plain["greedy"]), one))
    res.guard("int8-2x4", int8)
    try:
        jaxgen.load(mesh=S.make_mesh((1, 8)))
        res.check("kv-heads-error", False, "no error")
    except ValueError as e:
        res.check("kv-heads-error", "num_attention_heads=4" in str(e) and "size 8" in str(e), e)
    return res


def _gguf_on_mesh(res: Results, ids: np.ndarray, mask: np.ndarray, kw: dict[str, Any]) -> None:
    """A Q8_0 GGUF (4 query, 2 kv heads; permuted q/k) read by windows onto (2, 4)."""
    import gguf
    import torch
    import transformers

    from tests.gguf_files import write_gguf

    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        initializer_range=0.1)).eval()
    path = write_gguf(Path(tempfile.mkdtemp()) / "tiny.gguf", "llama", hf,
                      qtype=gguf.GGMLQuantizationType.Q8_0)
    ref = jaxgen.load(path).generate(ids, mask, **kw)
    lm = jaxgen.load(path, mesh=S.make_mesh((2, 4)))
    res.check("kv-gguf-2x4", *_same(lm.generate(ids, mask, **kw), ref))


CASES = {"parity": parity, "inspect": inspect, "kv": kv}

if __name__ == "__main__":
    case, out = sys.argv[1], sys.argv[2]
    assert len(jax.devices()) == 8, jax.devices()
    Path(out).write_text(json.dumps(CASES[case](), indent=1))
