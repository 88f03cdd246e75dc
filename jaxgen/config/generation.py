"""The ``GenerationConfig`` dataclass: fields, construction, JSON, derived values."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from jaxgen.config.serialise import _json_default, _normalise, _same, _to_json
from jaxgen.config.validation import (
    _format,
    _support_errors,
    _unused,
    _value_errors,
    advice,
    no_effect,
)
from jaxgen.ops import eos_ids

#: New tokens generated when neither ``max_length`` nor ``max_new_tokens`` is set
#: (transformers: ``max_length=20`` "by default let's always generate 20 new tokens").
DEFAULT_MAX_NEW_TOKENS = 20

#: Keys transformers writes into ``generation_config.json`` that are not settings.
METADATA_KEYS = frozenset(
    {"transformers_version", "_from_model_config", "_commit_hash", "_original_object_hash"}
)

class GenerationConfigWarning(UserWarning):
    """A setting that has no effect (emitted by ``validate(strict=False)``)."""


@dataclasses.dataclass(frozen=True, kw_only=True, repr=False)
class GenerationConfig:
    """How to generate: transformers' ``GenerationConfig`` fields, effective defaults.

    ``None`` passed for a field whose default is not ``None`` means "the default", as in
    transformers. Lists are stored as tuples. ``max_length=None`` (the default) means
    transformers' rule: prompt length + 20, capped at ``max_position_embeddings``.
    Construction never checks values; ``validate()`` does, with three kinds of issue:

    * invalid values or combinations (what transformers rejects, plus values it silently
      ignores such as ``top_p=1.5``): always ``ValueError``;
    * fields outside ``SUPPORTED`` set away from their ``NEUTRAL`` values (a feature
      jaxgen does not implement yet): always ``ValueError``;
    * settings without effect (sampling knobs with ``do_sample=False``, beam knobs with
      ``num_beams=1``, encoder-decoder knobs,
      ``output_scores`` without ``return_dict_in_generate``, min lengths without an eos,
      a negative ``pad_token_id``): ``ValueError`` when ``strict=True`` (user configs),
      a ``GenerationConfigWarning`` when ``strict=False`` (configs merged from a model's
      ``generation_config.json``, which may legitimately carry e.g. ``temperature`` with
      greedy decoding). With ``strict=False`` unused sampling knobs are not range-checked.

    Example: ``GenerationConfig(max_new_tokens=32, do_sample=True, top_p=0.9).validate()``
    """

    # length of the output
    max_length: int | None = None
    max_new_tokens: int | None = None
    min_length: int = 0
    min_new_tokens: int | None = None
    early_stopping: bool | str = False
    max_time: float | None = None
    stop_strings: str | tuple[str, ...] | None = None
    # strategy
    do_sample: bool = False
    num_beams: int = 1
    use_mtp: bool = False
    # cache
    use_cache: bool = True
    cache_implementation: str | None = None
    cache_config: dict[str, Any] | None = None
    max_cache_len: int | None = None
    # logits manipulation
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    min_p: float | None = None
    top_h: float | None = None
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    repetition_penalty: float = 1.0
    encoder_repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    bad_words_ids: tuple[tuple[int, ...], ...] | None = None
    renormalize_logits: bool = False
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | tuple[int, ...] | None = None
    remove_invalid_values: bool = False
    exponential_decay_length_penalty: tuple[int, float] | None = None
    suppress_tokens: tuple[int, ...] | None = None
    begin_suppress_tokens: tuple[int, ...] | None = None
    sequence_bias: dict[tuple[int, ...], float] | None = None
    token_healing: bool = False
    guidance_scale: float | None = None
    watermarking_config: Any = None
    # outputs
    num_return_sequences: int = 1
    output_attentions: bool = False
    output_hidden_states: bool = False
    output_scores: bool = False
    output_logits: bool = False
    return_dict_in_generate: bool = False
    # special tokens
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    # encoder-decoder only
    encoder_no_repeat_ngram_size: int = 0
    decoder_start_token_id: int | tuple[int, ...] | None = None
    # assisted generation
    is_assistant: bool = False
    num_assistant_tokens: int = 20
    num_assistant_tokens_schedule: str = "constant"
    assistant_confidence_threshold: float = 0.4
    prompt_lookup_num_tokens: int | None = None
    max_matching_ngram_size: int = 2
    assistant_early_exit: int | None = None
    assistant_lookbehind: int = 10
    target_lookbehind: int = 10
    assistant_ensemble_weight: float | None = None
    speculation_type: str | None = None
    # performance (torch-specific in transformers)
    compile_config: Any = None
    disable_compile: bool = False
    continuous_batching_config: Any = None
    # deprecated in transformers (moved to the Hub)
    low_memory: bool = False
    penalty_alpha: float | None = None
    dola_layers: str | tuple[int, ...] | None = None
    diversity_penalty: float = 0.0
    num_beam_groups: int = 1
    constraints: tuple[Any, ...] | None = None
    force_words_ids: tuple[Any, ...] | None = None
    prefill_chunk_size: int | None = None
    # jaxgen-only (OpenAI / vLLM style)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            new = f.default if value is None else _normalise(f.name, value)
            if new is not value:
                object.__setattr__(self, f.name, new)

    def __repr__(self) -> str:
        diff = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.to_dict(diff=True))
        return f"GenerationConfig({diff})"

    # ---- construction and serialisation -------------------------------------------

    def replace(self, **changes: Any) -> GenerationConfig:
        """A copy with ``changes`` applied; an unknown name is a ``TypeError``."""
        _check_names(changes)
        return dataclasses.replace(self, **changes)

    def merged(self, overrides: Mapping[str, Any]) -> GenerationConfig:
        """The caller's ``overrides`` on top of this (the model's) config, as transformers 5
        merges ``generate(**kwargs)`` into ``model.generation_config``.

        After applying ``overrides``, every field that came from ``self`` (not in
        ``overrides``) and has no effect in the result is quietly reset to its default:
        the rules of ``validate``'s "has no effect" checks (sampling knobs without
        ``do_sample``, beam knobs with ``num_beams=1``, ``output_scores`` without
        ``return_dict_in_generate``, ``diversity_penalty`` without beam groups, min
        lengths without an eos, ...). Fields in ``overrides`` are kept, so
        ``validate(strict=True)`` still reports them.

        Example: a model that samples (``temperature=0.8, top_p=0.95``), called greedy::

            model_cfg.merged({"do_sample": False})   # temperature, top_p back to 1.0
        """
        _check_names(overrides)
        cfg = dataclasses.replace(self, **overrides)
        stale = {name: _DEFAULTS[name] for name, _ in no_effect(cfg) if name not in overrides}
        return dataclasses.replace(cfg, **stale) if stale else cfg

    def to_dict(self, *, diff: bool = False) -> dict[str, Any]:
        """JSON-ready dict of all fields (tuples as lists); ``diff``: non-defaults only."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if diff and _same(value, f.default):
                continue
            out[f.name] = _to_json(f.name, value)
        return out

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], *, unknown: Literal["raise", "warn"] = "raise"
    ) -> GenerationConfig:
        """Build from a dict such as a ``generation_config.json``.

        Metadata keys (``transformers_version``, ``_from_model_config``, ...) are dropped.
        transformers would store any other unknown key as an attribute and never use it;
        we raise a ``ValueError`` naming it (``unknown="warn"``: warn and drop it).
        """
        kw = {k: v for k, v in d.items() if k not in METADATA_KEYS}
        bad = sorted(set(kw) - _FIELD_NAMES)
        if bad:
            msg = f"unknown GenerationConfig keys: {', '.join(_hint(k) for k in bad)}"
            if unknown == "raise":
                raise ValueError(msg + "; load with unknown='warn' to drop them")
            warnings.warn(msg + "; dropped", GenerationConfigWarning, stacklevel=2)
            kw = {k: v for k, v in kw.items() if k in _FIELD_NAMES}
        return cls(**kw)

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, *, unknown: Literal["raise", "warn"] = "raise"
    ) -> GenerationConfig:
        """Read ``path/generation_config.json`` (or ``path`` itself if it is a file)."""
        p = Path(path)
        if p.is_dir():
            p = p / "generation_config.json"
        with open(p, encoding="utf-8") as fh:
            d = json.load(fh)
        if not isinstance(d, dict):
            raise ValueError(f"{p} must hold a JSON object, got {type(d).__name__}")
        return cls.from_dict(d, unknown=unknown)

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write ``path/generation_config.json`` (non-default fields, like transformers).

        Unsupported features are saved as they are (``compile_config`` is dropped, as
        transformers does); invalid values raise ``ValueError``.
        Returns the file written.
        """
        errors = _value_errors(self, None, strict=False)
        if errors:
            raise ValueError(_format("cannot save an invalid GenerationConfig", errors))
        d = self.to_dict(diff=True)
        d.pop("compile_config", None)  # a torch object; transformers drops it too
        p = Path(path)
        p.mkdir(parents=True, exist_ok=True)
        out = p / "generation_config.json"
        text = json.dumps(d, indent=2, sort_keys=True, default=_json_default) + "\n"
        out.write_text(text, encoding="utf-8")
        return out

    # ---- derived values --------------------------------------------------------------

    def effective_max_length(
        self, prompt_len: int, *, max_position_embeddings: int | None = None
    ) -> int:
        """Total length (prompt + new) that ``generate`` stops at, as transformers computes it.

        ``max_new_tokens`` wins: ``prompt_len + max_new_tokens``. Else an explicit
        ``max_length``. Else ``prompt_len + 20``, capped at ``max_position_embeddings``
        when given. Raises ``ValueError`` when nothing is left to generate (transformers:
        "Input length of input_ids is ..., but `max_length` is set to ...").
        """
        if self.max_new_tokens is not None:
            total = prompt_len + self.max_new_tokens
        elif self.max_length is not None:
            total = self.max_length
        else:
            total = prompt_len + DEFAULT_MAX_NEW_TOKENS
            if max_position_embeddings is not None:
                total = min(total, max_position_embeddings)
        if prompt_len >= total:
            raise ValueError(
                f"GenerationConfig.max_length is {total} but the prompt already has {prompt_len} "
                f"tokens; allowed: max_length > prompt length, or set max_new_tokens"
            )
        return total

    def max_new_token_count(
        self, prompt_len: int, *, max_position_embeddings: int | None = None
    ) -> int:
        """How many tokens ``generate`` may add to a prompt of ``prompt_len`` tokens."""
        total = self.effective_max_length(
            prompt_len, max_position_embeddings=max_position_embeddings
        )
        return total - prompt_len

    def eos_token_ids(self) -> tuple[int, ...]:
        """``eos_token_id`` as a tuple: ``None -> ()``, ``2 -> (2,)``, ``[2, 7] -> (2, 7)``."""
        return eos_ids(self.eos_token_id, "GenerationConfig.eos_token_id")

    # ---- validation ------------------------------------------------------------------

    def validate(self, vocab_size: int | None = None, *, strict: bool = True) -> None:
        """Raise ``ValueError`` naming every bad field and its allowed values.

        vocab_size: when given, every token id must lie in ``[0, vocab_size)``.
        strict: see the class docstring; ``False`` turns "no effect" issues into warnings.
        """
        errors = _value_errors(self, vocab_size, strict=strict)
        errors += _support_errors(self)
        unused = _unused(self)
        if strict:
            errors += unused
        if errors:
            raise ValueError(_format("invalid GenerationConfig", errors))
        for issue in ([] if strict else unused) + advice(self):
            warnings.warn(issue, GenerationConfigWarning, stacklevel=2)


_FIELDS = {f.name: f for f in dataclasses.fields(GenerationConfig)}
_FIELD_NAMES = frozenset(_FIELDS)
_DEFAULTS = {name: f.default for name, f in _FIELDS.items()}


def _hint(name: str) -> str:
    close = difflib.get_close_matches(name, _FIELD_NAMES, n=1)
    return repr(name) + (f" (did you mean {close[0]!r}?)" if close else "")


def _check_names(kw: Mapping[str, Any]) -> None:
    bad = sorted(set(kw) - _FIELD_NAMES)
    if bad:
        raise TypeError(f"GenerationConfig has no field {', '.join(_hint(k) for k in bad)}")


_dataclass_init = GenerationConfig.__init__


@functools.wraps(_dataclass_init)
def _init(self: GenerationConfig, **kwargs: Any) -> None:
    _check_names(kwargs)
    _dataclass_init(self, **kwargs)


GenerationConfig.__init__ = _init  # type: ignore[method-assign]
