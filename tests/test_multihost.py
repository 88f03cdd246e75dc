"""Multi-host generation on loopback: 2 JAX processes x 4 CPU devices give the tokens of
one process with 8 devices (``tests/multihost_cases/worker.py``).

Run alone with ``pytest tests/test_multihost.py``. Every process is started with a
timeout and killed if the test fails or time runs out; the coordinator listens on a
free port of 127.0.0.1 (gloo collectives).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).parent / "multihost_cases" / "worker.py"
MESHES = ["8x1", "2x4", "4x2"]
TIMEOUT = 600  # seconds for a whole run of the worker processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(case: str, ckpt: Path, out: Path, processes: int, *, ids: Any = None,
                timeout: float = TIMEOUT, extra: tuple[str, ...] = ()
                ) -> list[tuple[int, str, Path]]:
    """Start ``processes`` workers (or only those of ``ids``), wait at most ``timeout``
    for all, kill whatever still runs; ``[(returncode, log text, result file)]``."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    port = _free_port()
    procs = []
    for i in range(processes) if ids is None else ids:
        result, log = out / f"{case}-{processes}-{i}.json", out / f"{case}-{processes}-{i}.log"
        cmd = [sys.executable, str(WORKER), case, str(ckpt), str(result), "--processes",
               str(processes), "--id", str(i), "--port", str(port), *extra]
        with open(log, "w") as f:
            procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f,
                                           stderr=subprocess.STDOUT), log, result))
    deadline = time.monotonic() + timeout
    try:
        for p, _, _ in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p, _, _ in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [(p.returncode, log.read_text(), result) for p, log, result in procs]


def _results(runs: list[tuple[int, str, Path]]) -> list[dict[str, Any]]:
    for rc, log, _ in runs:
        assert rc == 0, log[-6000:]
    return [json.loads(result.read_text()) for _, _, result in runs]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama (8 query heads, 2 kv heads: (2, 4) repeats kv heads) with the
    bundled tokenizer."""
    import jax

    from jaxgen.lm import DEFAULT_MODEL_DIR
    from jaxgen.models import Llama, LlamaConfig, save_checkpoint

    path = tmp_path_factory.mktemp("multihost") / "tiny"
    model = Llama(LlamaConfig(vocab_size=2048, hidden_size=64, intermediate_size=128,
                              num_hidden_layers=2, num_attention_heads=8,
                              num_key_value_heads=2, bos_token_id=1, eos_token_id=0,
                              pad_token_id=0))
    save_checkpoint(model, model.init_params(jax.random.key(0)), path)
    shutil.copy(DEFAULT_MODEL_DIR / "tokenizer.json", path / "tokenizer.json")
    return path


@pytest.fixture(scope="module")
def parity(ckpt: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(one process with 8 devices, [process 0, process 1] of the 2-process run)."""
    out = ckpt.parent
    (reference,) = _results(run_workers("parity", ckpt, out, 1))
    return reference, _results(run_workers("parity", ckpt, out, 2))


@pytest.mark.parametrize("mesh", MESHES)
@pytest.mark.parametrize("strategy", ["greedy", "beam", "sample"])
def test_two_processes_match_one(parity: Any, strategy: str, mesh: str) -> None:
    """Each process passes its 4 rows and gets its rows back: together, one process's."""
    reference, (p0, p1) = parity
    key = f"{strategy}-{mesh}"
    assert len(p0[key]) == len(p1[key]) == len(reference[key]) // 2
    assert p0[key] + p1[key] == reference[key]


def test_global_batch_gives_global_result(parity: Any) -> None:
    reference, (p0, p1) = parity
    assert p0["global-greedy-2x4"] == p1["global-greedy-2x4"] == reference["greedy-2x4"]


def test_stream_gives_each_process_its_rows(parity: Any) -> None:
    reference, (p0, p1) = parity
    assert p0["stream-2x4"] + p1["stream-2x4"] == reference["stream-2x4"]
    assert any(reference["stream-2x4"])


def test_generate_batch_gives_every_result(parity: Any) -> None:
    reference, (p0, p1) = parity
    assert p0["batch-2x4"] == p1["batch-2x4"] == reference["batch-2x4"]


def test_loading_reads_own_shards(parity: Any) -> None:
    """On a (1, 8) mesh each host holds half of every split parameter: it reads about
    half the checkpoint (plus the replicated norms), and its shards are right."""
    reference, (p0, p1) = parity
    for p in (p0, p1):
        load = p["loading-1x8"]
        assert load["right"]
        assert load["read"] < 0.55 * load["total"], load
    assert reference["loading-1x8"]["read"] == reference["loading-1x8"]["total"]


def test_errors_are_clear_on_every_process(ckpt: Path) -> None:
    results = _results(run_workers("errors", ckpt, ckpt.parent, 2))
    for i, r in enumerate(results):
        assert "input_ids batch 6" in r["rows"] and "'data' mesh axis of size 8" in r["rows"]
        assert "GenerationConfig.max_new_tokens" in r["config"], r["config"]
        assert "temperature" in r["validation"], r["validation"]
        if i == 0:
            assert "process 1 of 2 failed" in r["validation"], r["validation"]
        assert "inputs (process 1 vs process 0)" in r["batch"], r["batch"]
        assert len(r["after"]) == 4 and r["guidance"]
    assert results[0]["after"] != results[1]["after"]


def test_unreachable_coordinator_times_out(tmp_path: Path) -> None:
    t0 = time.monotonic()
    ((rc, log, _),) = run_workers("init", tmp_path, tmp_path, 2, ids=[1], timeout=120,
                                  extra=("--timeout", "3"))
    assert rc != 0 and "could not reach the JAX coordinator" in log, log[-3000:]
    assert time.monotonic() - t0 < 60


def test_missing_process_ends_the_coordinator(tmp_path: Path) -> None:
    t0 = time.monotonic()
    ((rc, log, _),) = run_workers("init", tmp_path, tmp_path, 2, ids=[0], timeout=120,
                                  extra=("--timeout", "3"))
    assert rc != 0 and "still waiting for the other 1 process(es) of 2" in log \
        and "initialization_timeout=3 s" in log, log[-3000:]
    assert time.monotonic() - t0 < 60
