"""``jaxgen.load``: a Hugging Face directory -> an ``LM`` (model, params, tokenizer)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax

from jaxgen.config import GenerationConfig
from jaxgen.generate import GenerateOutput, generate

DEFAULT_MODEL_DIR = Path(__file__).parent / "assets" / "default"


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
                 **kwargs: Any) -> GenerateOutput | jax.Array:
        """``jaxgen.generate`` with this model's params and generation_config as the base."""
        if input_ids is None:
            raise ValueError("input_ids is required, e.g. lm.generate(**lm.tokenizer([text]))")
        return generate(self.model, self.params, input_ids, attention_mask,
                        config=config if config is not None else self.generation_config,
                        logits_processor=logits_processor, stopping_criteria=stopping_criteria,
                        rng=rng, **kwargs)


def _token_ids_from_model_config(path: Path) -> dict[str, Any]:
    cfg = json.loads((path / "config.json").read_text())
    return {k: cfg[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
            if cfg.get(k) is not None}


def load(path: str | Path | None = None, dtype: Any = None, mesh: Any = None) -> LM:
    """Load a Hugging Face layout directory (``config.json``, safetensors, optional
    ``tokenizer.json`` and ``generation_config.json``); no path loads the bundled model.

    dtype: None (float32), "float32", "bfloat16" or a jnp dtype.
    """
    from jaxgen.models.checkpoint import load_checkpoint

    if mesh is not None:
        raise ValueError("load(mesh=...) is not supported by jaxgen yet; allowed: None")
    if path is None:
        path = DEFAULT_MODEL_DIR
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"no bundled default model in {path}; pass a checkpoint directory, e.g. "
                f"one made by `jaxgen make-tiny DIR`")
    path = Path(path)
    model, params, gen_dict = load_checkpoint(path, dtype=dtype)
    tokenizer = None
    if (path / "tokenizer.json").exists():
        from jaxgen.tokenizer import Tokenizer

        tokenizer = Tokenizer.from_file(path / "tokenizer.json")
    if gen_dict is not None:
        gen = GenerationConfig.from_dict(gen_dict)
    else:
        gen = GenerationConfig.from_dict(_token_ids_from_model_config(path))
    if gen.pad_token_id is None and tokenizer is not None and tokenizer.pad_token_id is not None:
        gen = gen.replace(pad_token_id=tokenizer.pad_token_id)
    return LM(model=model, params=params, tokenizer=tokenizer, generation_config=gen, path=path)
