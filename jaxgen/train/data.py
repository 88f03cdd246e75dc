"""Text and tokens for ``jaxgen train``: the held-out split, the BPE tokenizer, windows."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax import lax
from jaxtyping import Array, Int

from jaxgen.train.settings import EOS


def split_text(text: str, holdout: float = 0.1) -> tuple[str, str]:
    """``(train, heldout)``: the first ``1 - holdout`` of the characters, and the rest."""
    n = int(len(text) * (1 - holdout))
    return text[:n], text[n:]


def train_tokenizer(text: str, vocab_size: int = 2048) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` trained on ``text``.

    ``<|endoftext|>`` is id 0; all 256 bytes are in the alphabet; digits are pre-split one
    by one, so "0".."9" are single tokens and never merged.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([text], trainer=trainer)
    return tok


def save_tokenizer(tok: Any, out: str | os.PathLike, model_max_length: int) -> None:
    """Write ``tokenizer.json`` and a ``tokenizer_config.json`` that jaxgen and
    transformers' ``AutoTokenizer`` both read (bos = eos = pad = ``<|endoftext|>``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS, "eos_token": EOS,
              "pad_token": EOS, "unk_token": None, "add_bos_token": False,
              "add_eos_token": False, "clean_up_tokenization_spaces": False,
              "model_max_length": model_max_length}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_tokenizer(directory: str | os.PathLike) -> Any:
    """The `tokenizers.Tokenizer` of ``directory/tokenizer.json``; it must contain
    ``<|endoftext|>`` (the document start and eos token)."""
    from tokenizers import Tokenizer

    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"--tokenizer {directory}: no tokenizer.json there")
    tok = Tokenizer.from_file(str(path))
    if tok.token_to_id(EOS) is None:
        raise ValueError(f"--tokenizer {directory}: the tokenizer has no {EOS} token")
    return tok


def encode(tok: Any, text: str) -> np.ndarray:
    """int32 ids of ``text`` behind the document-start token (``[eos] + ids``).

    ``tok``: a `tokenizers.Tokenizer` or a `jaxgen.tokenizer.Tokenizer`."""
    ids = tok.encode(text)
    ids = getattr(ids, "ids", ids)
    eos = tok.token_to_id(EOS) if hasattr(tok, "token_to_id") else tok.eos_token_id
    return np.asarray([eos, *ids], np.int32)


def random_windows(data: Int[Array, " n"], key: jax.Array, batch: int, length: int
                   ) -> Int[Array, "batch length"]:
    """``batch`` random contiguous windows of ``length`` tokens from ``data``."""
    starts = jax.random.randint(key, (batch,), 0, data.shape[0] - length + 1)
    return jax.vmap(lambda s: lax.dynamic_slice(data, (s,), (length,)))(starts)


def eval_windows(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows covering every target of ``ids`` exactly once.

    Window ``w`` is ``ids[w*T : w*T + T + 1]`` (right-padded), so its T targets are
    ``ids[w*T+1 : w*T+T+1]``. Returns ``tokens [n, T+1]`` and ``weights [n, T]`` (0 on
    padding)."""
    n_targets = len(ids) - 1
    n = max(1, math.ceil(n_targets / seq_len))
    tokens = np.full((n, seq_len + 1), ids[0], np.int32)
    weights = np.zeros((n, seq_len), np.float32)
    for w in range(n):
        chunk = ids[w * seq_len: w * seq_len + seq_len + 1]
        tokens[w, :len(chunk)] = chunk
        weights[w, :len(chunk) - 1] = 1.0
    return tokens, weights
