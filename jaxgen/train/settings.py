"""The knobs of ``jaxgen train``: model size, optimisation, saved sampling defaults."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from jaxgen.models.checkpoint import resolve_dtype
from jaxgen.models.llama import LlamaConfig

EOS = "<|endoftext|>"

#: Sampling defaults written to generation_config.json (transformers' names and meaning).
GENERATION_DEFAULTS: dict[str, Any] = {
    "do_sample": True, "temperature": 0.8, "top_k": 50, "top_p": 0.95, "max_new_tokens": 200,
}


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSize:
    """Architecture knobs of the trained Llama; the vocabulary comes from the tokenizer.

    ``intermediate_size=None``: 8/3 of ``d_model`` rounded up to a multiple of 64 (SwiGLU).
    """

    d_model: int = 256
    layers: int = 6
    heads: int = 8
    kv_heads: int = 2
    intermediate_size: int | None = None
    rope_theta: float = 10000.0

    def llama_config(self, vocab_size: int, eos_id: int, max_positions: int) -> LlamaConfig:
        inter = self.intermediate_size or 64 * math.ceil(8 * self.d_model / 3 / 64)
        return LlamaConfig(vocab_size=vocab_size, hidden_size=self.d_model,
                           intermediate_size=inter, num_hidden_layers=self.layers,
                           num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
                           rms_norm_eps=1e-5, rope_theta=self.rope_theta,
                           max_position_embeddings=max_positions, tie_word_embeddings=True,
                           bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation and bookkeeping knobs (the CLI flags of ``jaxgen train``)."""

    steps: int = 2000
    batch_size: int = 32
    seq_len: int = 256
    lr: float = 1e-3  # peak learning rate, reached after warmup_steps
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio at the last step
    weight_decay: float = 0.1  # on matrices only (not norms)
    beta1: float = 0.9
    beta2: float = 0.95
    clip_norm: float = 1.0  # global gradient norm
    eval_every: int = 250
    patience: int | None = None  # stop after this many evaluations without improvement
    eval_batch_size: int = 16
    vocab_size: int = 2048
    holdout: float = 0.1  # the last fraction of the characters is held out
    tokenizer: str | None = None  # reuse DIR/tokenizer.json instead of training one
    seed: int = 0
    dtype: str = "float32"  # dtype of the saved weights (training is always float32)
    log_every: int = 10

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "eval_every", "eval_batch_size",
                     "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout}")
        resolve_dtype(self.dtype)
