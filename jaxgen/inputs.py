"""Checks of what a caller passes to ``generate``, in plain Python, before anything compiles."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.config import GenerationConfig
from jaxgen.decoding.record import FLAGS, MODEL_OUTPUTS, wanted


def split_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keep the GenerationConfig fields of ``kwargs``; anything else is an error."""
    fields = {f.name for f in dataclasses.fields(GenerationConfig)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, fields, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TypeError(f"generate() got unknown arguments: {', '.join(hints)}; pass "
                        f"GenerationConfig field names, or logits_processor=, "
                        f"stopping_criteria=, rng=")
    return kwargs


def as_2d_ids(input_ids: Any, vocab_size: int) -> np.ndarray:
    if isinstance(input_ids, (str, bytes)):
        raise TypeError("input_ids must be token ids (int array [batch, length]), got a "
                        "string; tokenize first, e.g. lm.tokenizer([text])")
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        raise ValueError(f"input_ids must be 2-D [batch, length], got shape {ids.shape}; "
                         f"wrap a single prompt as [ids]")
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be 2-D [batch, length], got shape {ids.shape}")
    if ids.shape[0] == 0:
        raise ValueError("input_ids is an empty batch (shape[0] == 0); give at least one row")
    if ids.shape[1] == 0:
        raise ValueError("input_ids has no tokens (shape[1] == 0); give at least one token")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"input_ids must hold integers, got dtype {ids.dtype}")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"input_ids holds token id {bad}, outside the vocabulary "
                         f"[0, {vocab_size})")
    return ids.astype(np.int32)


def as_mask(attention_mask: Any, ids: np.ndarray, cfg: GenerationConfig,
             eos: Sequence[int]) -> np.ndarray:
    if attention_mask is None:
        # transformers' inference: mask pads only if pad is in the ids and is not an eos
        pad = cfg.pad_token_id
        if pad is not None and (ids == pad).any() and pad not in eos:
            return (ids != pad).astype(np.int32)
        return np.ones_like(ids)
    mask = np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask has shape {mask.shape} but input_ids has shape "
                         f"{ids.shape}; they must be equal")
    if not np.isin(mask, (0, 1)).all():
        raise ValueError("attention_mask must hold only 0 and 1")
    if (mask[:, -1] == 0).any():
        row = int(np.argmax(mask[:, -1] == 0))
        raise ValueError(f"attention_mask row {row} ends with padding: jaxgen needs "
                         f"left-padded prompts (tokenizer(..., padding_side='left'))")
    return mask.astype(np.int32)


def max_positions(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def as_key(rng: Any) -> jax.Array:
    """A typed PRNG key from None (seed 0), an int seed, a typed key or a legacy key."""
    if rng is None:
        return jax.random.key(0)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return jax.random.key(int(rng))
    if isinstance(rng, jax.Array) and jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        if rng.shape != ():
            raise ValueError(f"rng must be a single key, got shape {rng.shape}")
        return rng
    arr = np.asarray(rng)
    if arr.shape == (2,) and arr.dtype == np.uint32:
        return jax.random.wrap_key_data(jnp.asarray(arr))
    raise TypeError(f"rng must be None, an int seed or a jax.random.key, got "
                    f"{type(rng).__name__}")


def assistant(assistant_model: Any, model: Any) -> tuple[Any, Any]:
    """(draft model, draft params) from an ``LM``, a ``(model, params)`` pair or None."""
    if assistant_model is None:
        return None, None
    if hasattr(assistant_model, "model") and hasattr(assistant_model, "params"):
        draft, params = assistant_model.model, assistant_model.params
    elif isinstance(assistant_model, (tuple, list)) and len(assistant_model) == 2:
        draft, params = assistant_model
    else:
        raise TypeError("assistant_model must be a jaxgen LM (jaxgen.load(...)) or a "
                        f"(model, params) pair, got {type(assistant_model).__name__}")
    if draft.vocab_size != model.vocab_size:
        raise ValueError(f"assistant_model has a vocabulary of {draft.vocab_size} tokens, the "
                         f"model {model.vocab_size}; they must share the tokenizer")
    return draft, params


def recordable(cfg: GenerationConfig, strategy: Any, model: Any) -> tuple[str, ...]:
    """The outputs to record (`jaxgen.decoding.record.wanted`); ValueError naming the flag
    when the strategy or the model cannot give one."""
    record = wanted(cfg)
    for name in record:
        flag = f"GenerationConfig.{FLAGS[name]}=True"
        if name not in strategy.outputs:
            raise ValueError(f"{flag} is not supported by {type(strategy).__name__}; allowed: "
                             f"False (it gives {sorted(FLAGS[n] for n in strategy.outputs)})")
        if name in MODEL_OUTPUTS and not takes_outputs(model):
            raise ValueError(f"{flag} needs a model whose apply() takes outputs= (jaxgen's "
                             f"models do; {type(model).__name__} does not); allowed: False")
    return record


def takes_outputs(model: Any) -> bool:
    """Whether ``model.apply`` accepts ``outputs=`` (hidden states, attentions)."""
    params = inspect.signature(model.apply).parameters
    return "outputs" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
