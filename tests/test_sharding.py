"""Sharded generation (``jaxgen.sharding``).

Multi-device checks run in two subprocesses on 8 simulated CPU devices (see
``tests/sharding_cases/cases.py``), so this process keeps one device; everything else
(rules, divisibility errors, memory arithmetic) runs here on abstract meshes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from jaxgen import sharding as S
from jaxgen.models import GPT2, GPT2Config, Llama, LlamaConfig

CASES = Path(__file__).parent / "sharding_cases" / "cases.py"
ROOT = Path(__file__).resolve().parents[1]
MESHES = ["8x1", "2x4", "1x8", "4x2"]


def _run_case(case: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    out = tmp_path_factory.mktemp(case) / "results.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(CASES), case, str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def parity(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    return _run_case("parity", tmp_path_factory)


@pytest.fixture(scope="module")
def inspect(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    return _run_case("inspect", tmp_path_factory)


def _assert(results: dict[str, list], name: str) -> None:
    assert name in results, f"check {name!r} did not run; ran: {sorted(results)}"
    ok, detail = results[name]
    assert ok, detail


PARITY = (
    [f"{s}-{m}-{mesh}" for m in ("llama", "gpt2") for s in ("greedy", "beam")
     for mesh in MESHES]
    + ["greedy-llama_gqa-2x4", "beam-llama_gqa-2x4", "greedy-llama_gqa-1x8", "beam-llama_gqa-1x8",
       "sample-llama-8x1", "beam_sample-llama-8x1", "sample-gpt2-8x1",
       "no_recompile-repeat", "no_recompile-chunks", "chunks-equal", "kv_cache_placement"])


@pytest.mark.parametrize("name", PARITY)
def test_sharded_matches_one_device(parity: dict[str, list], name: str) -> None:
    """Same tokens as one device; errors for kv heads; no recompiles; cache placement."""
    _assert(parity, name)


@pytest.fixture(scope="module")
def kv(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    return _run_case("kv", tmp_path_factory)


KV = ["greedy-bundled-2x4", "beam-bundled-2x4", "kv-config", "kv-shard", "kv-copies",
      "kv-memory-params", "kv-memory-cache", "kv-unreplicated-error", "kv-in-memory",
      "kv-gguf-2x4", "kv-heads-error", "int8-2x4"]


@pytest.mark.parametrize("name", KV)
def test_replicated_kv_heads(kv: dict[str, list], name: str) -> None:
    """The bundled model (2 kv heads) on a model axis of 4: each kv head twice, the same
    tokens as one device (greedy, beam); shards, cache and memory_per_device agree."""
    _assert(kv, name)


def test_no_unexpected_failures(parity: dict[str, list], inspect: dict[str, list],
                                kv: dict[str, list]) -> None:
    bad = {k: v[1] for r in (parity, inspect, kv) for k, v in r.items() if not v[0]}
    assert not bad, bad


INSPECT = [
    "shard-q_proj", "shard-o_proj", "shard-down_proj", "shard-norm-replicated",
    "shard-embed-vocab", "shard-gpt2-c_fc", "memory-params-vs-shards",
    "explicit-mesh-accepted",
    *[f"hlo-{c}-{k}" for k in ("llama-1x8", "llama-2x4", "gpt2-1x8")
      for c in ("all-reduce", "no-weight-gather")],
    "hlo-no-all-gather-llama-1x8", "hlo-no-all-gather-llama-2x4",
    "batch_error-greedy", "batch_error-beam", "batch_error-before-compile",
    "shard_batch", "multihost-process_count", "multihost-global_batch", "multihost-generate",
]


@pytest.mark.parametrize("name", INSPECT)
def test_sharding_inspection(inspect: dict[str, list], name: str) -> None:
    """Parameter shards, compiled collectives, batch errors, single-process multi-host."""
    _assert(inspect, name)


# --------------------------------------------------------------- in-process (one device)


def _mesh(data: int, model: int) -> AbstractMesh:
    return AbstractMesh((data, model), ("data", "model"))


def test_rules_cover_every_llama_and_gpt2_parameter() -> None:
    import jax

    for model in (Llama(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64,
                                     num_hidden_layers=1, num_attention_heads=4,
                                     qkv_bias=True, o_bias=True, mlp_bias=True)),
                  GPT2(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4,
                                  n_positions=16, tie_word_embeddings=False))):
        params = jax.eval_shape(model.init_params, jax.random.key(0))
        rules = S.rules_for(model)
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
            name = S._path_str(path)
            matched = [p for p, _ in rules if re.search(p, name)]
            assert matched, f"no rule for {name}"
            spec = S.spec_for(name, leaf.shape, _mesh(1, 4), rules)
            if leaf.ndim == 2 and name.endswith(("q_proj/kernel", "gate_proj/kernel",
                                                 "c_fc/kernel", "lm_head/kernel")):
                assert spec == P(None, "model"), name
            if name.endswith(("o_proj/kernel", "down_proj/kernel", "c_proj/kernel")):
                assert spec == P("model", None), name
            if "norm" in name or "ln_" in name:
                assert spec == P(), name


def test_spec_for_errors_and_fallbacks() -> None:
    with pytest.raises(ValueError, match=r"'w'.*\(6, 4\).*'model' of size 8"):
        S.spec_for("w", (6, 4), _mesh(1, 8), [(r"^w$", P("model", None))])
    with pytest.raises(ValueError, match="names mesh axis 'tensor'"):
        S.spec_for("w", (8, 4), _mesh(1, 8), [(r"^w$", P("tensor", None))])
    assert S.spec_for("x/unmatched", (6, 4), _mesh(2, 4), S.LLAMA_RULES) == P()
    # GPT-2's 50257 does not divide a model axis: embeddings fall back to replicated
    gpt2 = GPT2(GPT2Config())
    rules = dict(S.rules_for(gpt2, _mesh(1, 8)))
    assert rules[r"wte/embedding$"] == P() and rules[r"mlp/c_fc/kernel$"] == P(None, "model")
    with pytest.raises(ValueError, match="no default partition rules"):
        S.rules_for(object())


def test_memory_per_device_llama2_numbers() -> None:
    """Hand-computed: 7B = 6,738,415,616 params, 70B = 68,976,648,192 (bf16: 2 bytes)."""
    m7 = S.memory_per_device(S.llama2_7b(), batch=8, length=4096, mesh_shape=(1, 1))
    assert m7["params_bytes"] == 2 * 6_738_415_616
    # k and v: 2 * 32 layers * 8 rows * 32 heads * 4096 slots * 128 dims * 2 bytes = 16 GiB
    assert m7["kv_cache_bytes"] == 2 * 32 * 8 * 32 * 4096 * 128 * 2 == 16 * 2 ** 30
    m70 = S.memory_per_device(S.llama2_70b(), batch=8, length=4096, mesh_shape=(1, 1))
    assert m70["params_bytes"] == 2 * 68_976_648_192
    assert m70["kv_cache_gib"] == 10.0  # 8 kv heads: 2 * 80 * 8 * 8 * 4096 * 128 * 2 bytes
    # (2, 4): weights / 4 except the norms (replicated), cache / 8
    m = S.memory_per_device(S.llama2_70b(), batch=8, length=4096, mesh_shape=(2, 4))
    norms = (2 * 80 + 1) * 8192 * 2
    assert m["params_bytes"] == (m70["params_bytes"] - norms) // 4 + norms
    assert m["kv_cache_bytes"] == m70["kv_cache_bytes"] // 8
    assert m["total_bytes"] == m["params_bytes"] + m["kv_cache_bytes"]
    repl = S.memory_per_device(S.llama2_7b(), batch=8, length=4096, mesh_shape=(1, 8),
                               shard_vocab=False)
    split = S.memory_per_device(S.llama2_7b(), batch=8, length=4096, mesh_shape=(1, 8))
    assert repl["params_bytes"] - split["params_bytes"] == 2 * 2 * 32000 * 4096 * 7 // 8
    # (1, 64): 8 kv heads repeated 8 times, one per device, counted
    m64 = S.memory_per_device(S.llama2_70b(), batch=8, length=4096, mesh_shape=(1, 64))
    assert m64["kv_heads_per_device"] == 1
    assert m64["kv_cache_bytes"] == m70["kv_cache_bytes"] // 8
    kv_proj = 2 * 80 * 8192 * 128 * 2  # k and v of one kv head per layer, bf16
    norms = (2 * 80 + 1) * 8192 * 2
    assert m64["params_bytes"] == (m70["params_bytes"] - norms - 8 * kv_proj) // 64 \
        + norms + kv_proj
    assert S.replicated_kv_heads(32, 8, 16) == 16 and S.replicated_kv_heads(12, 4, 6) == 12
    with pytest.raises(ValueError, match="num_attention_heads=64"):
        S.memory_per_device(S.llama2_70b(), batch=8, length=4096, mesh_shape=(1, 128))
    with pytest.raises(ValueError, match="batch=8.*'data'"):
        S.memory_per_device(S.llama2_7b(), batch=8, length=4096, mesh_shape=(16, 4))


def test_one_device_paths_unchanged() -> None:
    import jax

    mesh = S.make_mesh((1, 1), devices=jax.devices()[:1])
    params = {"w": np.ones((4, 2), np.float32)}
    placed = S.shard_params(params, mesh, [(r"w", P(None, "model"))])
    assert S.params_mesh(placed) is None and S.params_mesh(params) is None
    with pytest.raises(ValueError, match="needs 8 devices"):
        S.make_mesh((2, 4), devices=jax.devices()[:1])
    with pytest.raises(TypeError, match="jax.sharding.Mesh"):
        S.shard_params(params, (2, 4), [])
