"""``jaxgen.load``: a Hugging Face directory or a GGUF file -> an ``LM`` (model, params,
tokenizer)."""

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


def load(path: str | Path | None = None, dtype: Any = None, mesh: Any = None, *,
         scan_layers: bool = False, quantize: str | None = None,
         kv_cache_dtype: str | None = None) -> LM:
    """Load a Hugging Face layout directory (``config.json``, safetensors, optional
    ``tokenizer.json``, ``generation_config.json`` and chat template) or a GGUF file
    (``model.gguf``: dequantized; config, tokenizer, chat template and special ids from its
    metadata, see `jaxgen.models.gguf`); no path loads the bundled model.

    dtype: None (float32), "float32", "bfloat16" or a jnp dtype. Tensors are converted one
    at a time, so the peak host memory is about one copy of the weights in ``dtype``.
    mesh: a ``jax.sharding.Mesh`` with ``data`` and ``model`` axes: parameters are placed
    by ``jaxgen.sharding.rules_for(model)`` as they are read, each process reading only
    the shards of its own devices, kv heads repeated when the ``model`` axis exceeds them
    (`jaxgen.placement`; ``lm.model`` then has the repeated kv heads).
    scan_layers: stack the layer weights and run the layers as a ``lax.scan``: compile
        time flat in depth (`jaxgen.models.layers`), but decode steps measured 1.4x slower
        on XLA:CPU for SmolLM2 (benchmarks/bench_compile.py), hence off by default;
        ``params`` then hold ``layers`` (stacked) instead of ``layers_<i>``.
    quantize: None or ``"int8"`` (weight-only, per-channel scales: `jaxgen.quant`).
    kv_cache_dtype: None (``dtype``) or ``"int8"`` (per-token, per-head scales).
    Turns on the persistent compilation cache (`jaxgen.compile_cache`; opt out with
    ``JAXGEN_COMPILATION_CACHE=0``).
    """
    from jaxgen import compile_cache, quant
    from jaxgen.tokenizer import Tokenizer

    quant.check_settings(quantize, kv_cache_dtype)  # refused by name before any work
    compile_cache.enable_compilation_cache()

    placement = None
    if mesh is not None:
        from jaxgen.placement import placement as on_mesh
        from jaxgen.sharding import auto_axes

        placement = on_mesh(auto_axes(mesh))  # validates the type; Explicit axes -> Auto
    if path is None:
        path = DEFAULT_MODEL_DIR
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"no bundled default model in {path}; pass a checkpoint directory, e.g. "
                f"one made by `jaxgen make-tiny DIR`")
    path = Path(path)
    if path.is_file() or path.suffix == ".gguf":
        from jaxgen.models.gguf import load_gguf, read_gguf

        file = read_gguf(path)  # ValueError for a file that is not GGUF
        model, params, gen_dict = load_gguf(file, dtype=dtype, placement=placement)
        tokenizer = Tokenizer.from_gguf(file) if "tokenizer.ggml.tokens" in file.metadata \
            else None
    else:
        from jaxgen.models.checkpoint import load_checkpoint

        model, params, gen_dict = load_checkpoint(path, dtype=dtype, placement=placement)
        tokenizer = Tokenizer.from_file(path / "tokenizer.json") \
            if (path / "tokenizer.json").exists() else None
        if gen_dict is None:
            gen_dict = _token_ids_from_model_config(path)
    model, params = quant.prepare(model, params, scan_layers=scan_layers, quantize=quantize,
                                  kv_cache_dtype=kv_cache_dtype)
    gen = GenerationConfig.from_dict(gen_dict, unknown="warn")
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
