"""Shared fixtures: compile counting."""

from __future__ import annotations

import jax
import pytest

_COMPILES: list[str] = []


def _listener(name: str, duration: float, **kwargs) -> None:
    if name == "/jax/core/compile/backend_compile_duration":
        _COMPILES.append(name)


jax.monitoring.register_event_duration_secs_listener(_listener)


class CompileCounter:
    """``with counter() as c: ...; c.count`` = backend compiles inside the block."""

    def __call__(self):
        return self

    def __enter__(self):
        self._start = len(_COMPILES)
        return self

    def __exit__(self, *exc):
        self.count = len(_COMPILES) - self._start
        return False


@pytest.fixture(autouse=True, scope="module")
def _fresh_jax_caches():
    """Drop compiled executables after every test module: the suite compiles a few
    thousand programs, and keeping them all made XLA:CPU crash late in a full run."""
    yield
    jax.clear_caches()


@pytest.fixture(autouse=True)
def _no_persistent_cache_in_process(monkeypatch):
    """``jaxgen generate`` turns on JAX's persistent compilation cache for its process;
    called in-process by tests it would switch it on for the rest of the suite (writing
    into a deleted temporary directory). Subprocess tests still exercise the real thing."""
    import jaxgen.cli

    monkeypatch.setattr(jaxgen.cli, "enable_compilation_cache", lambda: None)


@pytest.fixture
def count_compiles() -> CompileCounter:
    return CompileCounter()


TINY_VOCAB = 97


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Tiny random transformers GPT-2 and Llama, saved and loaded in jaxgen:
    ``{"gpt2": (hf_model, lm), "llama": (hf_model, lm)}``."""
    import torch
    import transformers

    import jaxgen

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("parity")
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=TINY_VOCAB, n_positions=128, n_embd=32, n_layer=2, n_head=4,
        initializer_range=0.3, bos_token_id=1, eos_token_id=2))
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        initializer_range=0.3, bos_token_id=1, eos_token_id=2, rope_theta=500.0))
    out = {}
    for name, m in [("gpt2", gpt2), ("llama", llama)]:
        m.eval()
        m.save_pretrained(root / name)
        out[name] = (m, jaxgen.load(root / name))
    return out
