"""``jaxgen.load``: a Hugging Face directory -> an ``LM`` (model, params, tokenizer)."""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxgen.config import GenerationConfig
from jaxgen.generate import GenerateOutput, generate

DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default"
DRAFT_MODEL_DIR = Path(__file__).parent / "assets" / "draft"


@dataclasses.dataclass
class LM:
    """A loaded model: ``lm.generate(**lm.tokenizer(texts), max_new_tokens=20)``."""

    model: Any
    params: Any
    tokenizer: Any | None
    generation_config: GenerationConfig
    path: Path | None = None

    def generate(self, input_ids: Any = None, attention_mask: Any = None, *,
                 config: GenerationConfig | None = None,
                 logits_processor: Sequence[Any] | None = None,
                 stopping_criteria: Sequence[Any] | None = None, rng: Any = None,
                 **kwargs: Any) -> GenerateOutput | np.ndarray:
        """``jaxgen.generate`` with this model's params and generation_config as the base.

        Settings of the model's own generation_config that have no effect here (e.g. its
        ``temperature`` under greedy decoding) give warnings, not errors.
        """
        if input_ids is None:
            raise ValueError("input_ids is required, e.g. lm.generate(**lm.tokenizer([text]))")
        kwargs.setdefault("tokenizer", self.tokenizer)  # for stop_strings
        return generate(self.model, self.params, input_ids, attention_mask,
                        config=config if config is not None else self.generation_config,
                        logits_processor=logits_processor, stopping_criteria=stopping_criteria,
                        rng=rng, strict=config is not None, **kwargs)


def _token_ids_from_model_config(path: Path) -> dict[str, Any]:
    cfg = json.loads((path / "config.json").read_text())
    return {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
            if cfg.get(k) is not None}


def _drop_ids_outside_vocab(gen: GenerationConfig, vocab_size: int) -> GenerationConfig:
    """Model files sometimes carry special ids outside the vocabulary (e.g. GPT-2's 50256
    in a resized model); such an id can never be generated, so drop it with a warning."""
    changes: dict[str, Any] = {}
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(gen, name)
        if value is None:
            continue
        ids = [value] if isinstance(value, int) else list(value)
        keep = [i for i in ids if 0 <= i < vocab_size]
        if len(keep) != len(ids):
            warnings.warn(f"{name}={value!r} from the model's files is outside the vocabulary "
                          f"[0, {vocab_size}); dropped", stacklevel=3)
            changes[name] = (keep[0] if keep else None) if isinstance(value, int) else (
                keep or None)
    return gen.replace(**changes) if changes else gen


def load(path: str | Path | None = None, dtype: Any = None, mesh: Any = None) -> LM:
    """Load a Hugging Face layout directory (``config.json``, safetensors, optional
    ``tokenizer.json`` and ``generation_config.json``); no path loads the bundled model.

    dtype: None (float32), "float32", "bfloat16" or a jnp dtype.
    mesh: a ``jax.sharding.Mesh`` with ``data`` and ``model`` axes: parameters are placed
    by ``jaxgen.sharding.rules_for(model)`` (see ``jaxgen.sharding.shard_params``).
    """
    from jaxgen.models.checkpoint import load_checkpoint

    if mesh is not None:
        from jaxgen.sharding import auto_axes

        mesh = auto_axes(mesh)  # validates the type; Explicit axes -> Auto
    if path is None:
        path = DEFAULT_MODEL_DIR
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"no bundled default model in {path}; pass a checkpoint directory, e.g. "
                f"one made by `jaxgen make-tiny DIR`")
    path = Path(path)
    model, params, gen_dict = load_checkpoint(path, dtype=dtype)
    if mesh is not None:
        from jaxgen.sharding import check_model, shard_params

        check_model(model, mesh)
        params = shard_params(params, mesh, model=model)
    tokenizer = None
    if (path / "tokenizer.json").exists():
        from jaxgen.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_file(path / "tokenizer.json")
    if gen_dict is not None:
        gen = GenerationConfig.from_dict(gen_dict, unknown="warn")
    else:
        gen = GenerationConfig.from_dict(_token_ids_from_model_config(path))
    gen = _drop_ids_outside_vocab(gen, model.vocab_size)
    if gen.pad_token_id is None and tokenizer is not None and tokenizer.pad_token_id is not None:
        gen = gen.replace(pad_token_id=tokenizer.pad_token_id)
    return LM(model=model, params=params, tokenizer=tokenizer, generation_config=gen, path=path)


def load_draft(dtype: Any = None) -> LM:
    """The bundled draft model of the bundled default model (same tokenizer, 2 layers), to
    pass as ``assistant_model`` for speculative decoding::

        lm, draft = jaxgen.load(), jaxgen.load_draft()
        lm.generate(**lm.tokenizer(["ROMEO:\\n"]), do_sample=False, max_new_tokens=50,
                    assistant_model=draft, num_assistant_tokens=3)

    dtype: as in `load` (None: float32).
    """
    if not (DRAFT_MODEL_DIR / "config.json").exists():
        raise FileNotFoundError(f"no bundled draft model in {DRAFT_MODEL_DIR}")
    return load(DRAFT_MODEL_DIR, dtype=dtype)
