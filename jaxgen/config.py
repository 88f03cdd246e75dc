"""``GenerationConfig``: transformers' generation knobs, with jaxgen's support rules.

Field names and meanings are those of ``transformers.GenerationConfig`` (5.24). Where
transformers stores ``None`` and applies a default inside ``generate()``
(``GenerationConfig._get_default_generation_params``), our dataclass default *is* that
effective default, so ``GenerationConfig().top_k == 50``. This module is pure Python
(no jax) so ``validate()`` is cheap to call on every ``generate``.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

__all__ = [
    "BEAM_ONLY",
    "DEFAULT_MAX_NEW_TOKENS",
    "ENCODER_DECODER_ONLY",
    "METADATA_KEYS",
    "NEUTRAL",
    "SAMPLING_ONLY",
    "SUPPORTED",
    "GenerationConfig",
    "GenerationConfigWarning",
]

#: New tokens generated when neither ``max_length`` nor ``max_new_tokens`` is set
#: (transformers: ``max_length=20`` "by default let's always generate 20 new tokens").
DEFAULT_MAX_NEW_TOKENS = 20

#: Keys transformers writes into ``generation_config.json`` that are not settings.
METADATA_KEYS = frozenset(
    {"transformers_version", "_from_model_config", "_commit_hash", "_original_object_hash"}
)

_CACHE_IMPLEMENTATIONS = (
    "static", "offloaded_static", "sliding_window", "hybrid", "hybrid_chunked",
    "offloaded_hybrid", "offloaded_hybrid_chunked", "dynamic", "offloaded", "quantized", "paged",
)  # fmt: skip


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
        eos = self.eos_token_id
        if eos is None:
            return ()
        if isinstance(eos, int):
            return (eos,)
        return tuple(eos)

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
        for issue in unused:
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


# ---- normalisation -------------------------------------------------------------------


def _freeze(value: Any) -> Any:
    """numpy scalars -> Python, lists/tuples/arrays -> tuples (deep)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return _freeze(value.tolist())
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _normalise(name: str, value: Any) -> Any:
    if name == "sequence_bias" and isinstance(value, (list, tuple)):
        # transformers' JSON form: [[token_ids, bias], ...]
        try:
            return {_freeze(ids): _freeze(bias) for ids, bias in value}
        except (TypeError, ValueError):
            return _freeze(value)
    if name == "sequence_bias" and isinstance(value, dict):
        # transformers writes tuple keys to JSON as strings like "(8, 9)"
        return {_tuple_key(k): _freeze(v) for k, v in value.items()}
    if name == "logit_bias" and isinstance(value, dict):
        # JSON turns int keys into strings
        return {_int_key(k): _freeze(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.generic, np.ndarray)):
        return _freeze(value)
    return value


def _tuple_key(k: Any) -> Any:
    if isinstance(k, str):
        try:
            k = ast.literal_eval(k)
        except (ValueError, SyntaxError):
            return k
        k = (k,) if isinstance(k, int) else k
    return _freeze(k)


def _int_key(k: Any) -> Any:
    k = _freeze(k)
    if isinstance(k, str) and k.lstrip("-").isdigit():
        return int(k)
    return k


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    if isinstance(value, dict):
        return {k: _thaw(v) for k, v in value.items()}
    if hasattr(value, "to_dict"):
        return value.to_dict()
    return value


def _to_json(name: str, value: Any) -> Any:
    if name == "sequence_bias" and isinstance(value, dict):
        return [[_thaw(k), v] for k, v in value.items()]
    return _thaw(value)


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to generation_config.json")


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same kind (so ``False`` is not ``0`` and ``1`` is ``1.0``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    try:
        return bool(a == b)
    except Exception:  # arrays and other odd objects
        return False


# ---- value rules: (predicate, allowed) per field -------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(lo: int, optional: bool = False) -> tuple[Any, str]:
    desc = f"an int >= {lo}" + (" or None" if optional else "")
    return (lambda v: (optional and v is None) or (_is_int(v) and v >= lo)), desc


def _num(
    lo: float = -math.inf,
    hi: float = math.inf,
    lo_open: bool = False,
    hi_open: bool = False,
    optional: bool = False,
) -> tuple[Any, str]:
    def ok(v: Any) -> bool:
        if v is None:
            return optional
        if not _is_num(v):
            return False
        above = v > lo if lo_open else v >= lo
        below = v < hi if hi_open else v <= hi
        return above and below

    if lo == -math.inf and hi == math.inf:
        desc = "a finite number"
    elif hi == math.inf:
        desc = f"a number {'>' if lo_open else '>='} {lo}"
    else:
        desc = f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return ok, desc + (" or None" if optional else "")


def _bool() -> tuple[Any, str]:
    return (lambda v: isinstance(v, bool)), "True or False"


def _choice(*values: Any, optional: bool = False) -> tuple[Any, str]:
    allowed = values + ((None,) if optional else ())
    return (lambda v: any(_same(v, a) for a in allowed)), " or ".join(map(repr, allowed))


def _anything() -> tuple[Any, str]:
    return (lambda v: True), "anything"


def _is_id(v: Any) -> bool:
    return _is_int(v) and v >= 0


def _ids(v: Any) -> bool:
    return isinstance(v, tuple) and len(v) > 0 and all(_is_id(t) for t in v)


def _token(multi: bool = False) -> tuple[Any, str]:
    desc = "None, a token id >= 0" + (" or a non-empty list of them" if multi else "")
    return (lambda v: v is None or _is_id(v) or (multi and _ids(v))), desc


def _id_list() -> tuple[Any, str]:
    ok = lambda v: v is None or (isinstance(v, tuple) and all(_is_id(t) for t in v))  # noqa: E731
    return ok, "None or a list of token ids >= 0"


def _id_lists() -> tuple[Any, str]:
    ok = lambda v: v is None or (isinstance(v, tuple) and len(v) > 0 and all(map(_ids, v)))  # noqa: E731
    return ok, "None or a non-empty list of non-empty lists of token ids >= 0"


def _stop_strings(v: Any) -> bool:
    if isinstance(v, str):
        return len(v) > 0
    return isinstance(v, tuple) and len(v) > 0 and all(isinstance(s, str) and s for s in v)


def _decay(v: Any) -> bool:
    return isinstance(v, tuple) and len(v) == 2 and _is_id(v[0]) and _is_num(v[1])


def _seq_bias(v: Any) -> bool:
    return isinstance(v, dict) and len(v) > 0 and all(_ids(k) and _is_num(b) for k, b in v.items())


def _logit_bias(v: Any) -> bool:
    return isinstance(v, dict) and all(
        _is_id(k) and _is_num(b) and -100 <= b <= 100 for k, b in v.items()
    )


def _dola(v: Any) -> bool:
    return v in ("low", "high") or (isinstance(v, tuple) and all(_is_id(t) for t in v))


_RULES: dict[str, tuple[Any, str]] = {
    "max_length": _int(1, optional=True),
    "max_new_tokens": _int(1, optional=True),
    "min_length": _int(0),
    "min_new_tokens": _int(0, optional=True),
    "early_stopping": _choice(True, False, "never"),
    "max_time": _num(0, lo_open=True, optional=True),
    "stop_strings": (
        lambda v: v is None or _stop_strings(v),
        "None, a non-empty string or a non-empty list of them",
    ),
    "do_sample": _bool(),
    "num_beams": _int(1),
    "use_mtp": _bool(),
    "use_cache": _bool(),
    "cache_implementation": _choice(*_CACHE_IMPLEMENTATIONS, optional=True),
    "cache_config": (lambda v: v is None or isinstance(v, dict), "None or a dict"),
    "max_cache_len": _int(1, optional=True),
    "temperature": _num(0, lo_open=True),
    "top_k": _int(0),
    "top_p": _num(0, 1),
    "min_p": _num(0, 1, optional=True),
    "top_h": _num(0, 1, lo_open=True, optional=True),
    "typical_p": _num(0, 1, lo_open=True),
    "epsilon_cutoff": _num(0, 1, hi_open=True),
    "eta_cutoff": _num(0, 1, hi_open=True),
    "repetition_penalty": _num(0, lo_open=True),
    "encoder_repetition_penalty": _num(0, lo_open=True),
    "length_penalty": _num(),
    "no_repeat_ngram_size": _int(0),
    "bad_words_ids": _id_lists(),
    "renormalize_logits": _bool(),
    "forced_bos_token_id": _token(),
    "forced_eos_token_id": _token(multi=True),
    "remove_invalid_values": _bool(),
    "exponential_decay_length_penalty": (
        lambda v: v is None or _decay(v),
        "None or a pair (start_index >= 0, decay_factor)",
    ),
    "suppress_tokens": _id_list(),
    "begin_suppress_tokens": _id_list(),
    "sequence_bias": (
        lambda v: v is None or _seq_bias(v),
        "None or a non-empty dict {tuple of token ids: bias}",
    ),
    "token_healing": _bool(),
    "guidance_scale": _num(optional=True),
    "watermarking_config": _anything(),
    "num_return_sequences": _int(1),
    "output_attentions": _bool(),
    "output_hidden_states": _bool(),
    "output_scores": _bool(),
    "output_logits": _bool(),
    "return_dict_in_generate": _bool(),
    "pad_token_id": (lambda v: v is None or _is_int(v), "None or an int token id"),
    "bos_token_id": _token(),
    "eos_token_id": _token(multi=True),
    "encoder_no_repeat_ngram_size": _int(0),
    "decoder_start_token_id": _token(multi=True),
    "is_assistant": _bool(),
    "num_assistant_tokens": _int(1),
    "num_assistant_tokens_schedule": _choice("heuristic", "heuristic_transient", "constant"),
    "assistant_confidence_threshold": _num(0, 1),
    "prompt_lookup_num_tokens": _int(1, optional=True),
    "max_matching_ngram_size": _int(1),
    "assistant_early_exit": _int(1, optional=True),
    "assistant_lookbehind": _int(0),
    "target_lookbehind": _int(0),
    "assistant_ensemble_weight": _num(0, 1, lo_open=True, hi_open=True, optional=True),
    "speculation_type": _choice("dflash", optional=True),
    "compile_config": _anything(),
    "disable_compile": _bool(),
    "continuous_batching_config": _anything(),
    "low_memory": _bool(),
    "penalty_alpha": _num(0, optional=True),
    "dola_layers": (
        lambda v: v is None or _dola(v),
        "None, 'low', 'high' or a list of layer indices",
    ),
    "diversity_penalty": _num(0),
    "num_beam_groups": _int(1),
    "constraints": (lambda v: v is None or isinstance(v, tuple), "None or a list"),
    "force_words_ids": (
        lambda v: v is None or (isinstance(v, tuple) and len(v) > 0),
        "None or a non-empty list of token-id lists",
    ),
    "prefill_chunk_size": _int(1, optional=True),
    "presence_penalty": _num(-2, 2),
    "frequency_penalty": _num(-2, 2),
    "logit_bias": (
        lambda v: v is None or _logit_bias(v),
        "None or a dict {token id >= 0: bias in [-100, 100]}",
    ),
}

# ---- support: which fields jaxgen honours ---------------------------------------------

#: Fields whose every valid value jaxgen honours.
SUPPORTED: frozenset[str] = frozenset({
    "max_length", "max_new_tokens", "min_length", "min_new_tokens", "do_sample",
    "temperature", "top_k", "top_p", "min_p", "num_return_sequences", "output_scores",
    "return_dict_in_generate", "pad_token_id", "bos_token_id", "eos_token_id",
    "num_beams", "length_penalty", "early_stopping", "num_beam_groups", "diversity_penalty",
    "repetition_penalty", "encoder_repetition_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "renormalize_logits",
    "forced_bos_token_id", "forced_eos_token_id", "remove_invalid_values",
    "exponential_decay_length_penalty", "suppress_tokens", "begin_suppress_tokens",
    "sequence_bias", "guidance_scale", "presence_penalty", "frequency_penalty", "logit_bias",
    "typical_p", "epsilon_cutoff", "eta_cutoff", "top_h", "watermarking_config",
    "max_time", "stop_strings", "prompt_lookup_num_tokens", "max_matching_ngram_size",
    "num_assistant_tokens", "num_assistant_tokens_schedule",
})  # fmt: skip

#: Every other field: (values that leave outputs unchanged, what the field enables).
#: Move a field to ``SUPPORTED`` (or widen its values) when jaxgen implements it.
NEUTRAL: dict[str, tuple[tuple[Any, ...], str]] = {
    "use_mtp": ((False,), "multi-token prediction"),
    "use_cache": ((True,), "decoding without a KV cache; jaxgen always uses one"),
    # exact KV caches behave the same; jaxgen's cache is preallocated ("static")
    "cache_implementation": (
        (None, "static", "dynamic", "hybrid", "sliding_window", "hybrid_chunked"),
        "offloaded, quantized or paged KV caches",
    ),
    "cache_config": ((None,), "KV cache class arguments"),
    "max_cache_len": ((None,), "torch static cache size"),
    "token_healing": ((False,), "token healing"),
    "output_attentions": ((False,), "returning attentions"),
    "output_hidden_states": ((False,), "returning hidden states"),
    "output_logits": ((False,), "returning raw logits"),
    "decoder_start_token_id": ((None,), "encoder-decoder models"),
    "is_assistant": ((False,), "assisted generation"),
    "assistant_confidence_threshold": ((0.4,), "assisted generation"),
    "assistant_early_exit": ((None,), "early-exit assisted generation"),
    "assistant_lookbehind": ((10,), "universal assisted generation"),
    "target_lookbehind": ((10,), "universal assisted generation"),
    "assistant_ensemble_weight": ((None,), "ensemble speculative decoding"),
    "speculation_type": ((None,), "DFlash speculation"),
    "compile_config": ((None,), "torch.compile settings; jaxgen always uses jax.jit"),
    "disable_compile": ((False,), "eager decoding; jaxgen always uses jax.jit"),
    "continuous_batching_config": ((None,), "continuous batching"),
    "low_memory": ((False,), "sequential low-memory search"),
    "penalty_alpha": ((None,), "contrastive search"),
    "dola_layers": ((None,), "DoLa decoding"),
    "constraints": ((None,), "constrained beam search"),
    "force_words_ids": ((None,), "constrained beam search"),
    "prefill_chunk_size": ((None,), "chunked prefill"),
}

#: Only used when sampling (transformers warns when set with do_sample=False).
SAMPLING_ONLY = frozenset(
    {"temperature", "top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff",
     "eta_cutoff"}
)  # fmt: skip
#: Only used by beam search (transformers warns when set with num_beams=1).
BEAM_ONLY = frozenset({"early_stopping", "length_penalty"})
#: Only used by encoder-decoder models (transformers ignores them for decoder-only ones).
# (encoder_repetition_penalty / encoder_no_repeat_ngram_size apply to the prompt ids of a
# decoder-only model, as in transformers)
ENCODER_DECODER_ONLY = frozenset({"decoder_start_token_id"})

_MODE_ONLY = tuple(n for n in _FIELDS if n in SAMPLING_ONLY | BEAM_ONLY | ENCODER_DECODER_ONLY)
_TOKEN_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "forced_bos_token_id",
                 "forced_eos_token_id", "decoder_start_token_id")  # fmt: skip
_TOKEN_LIST_FIELDS = ("suppress_tokens", "begin_suppress_tokens")
_TOKEN_LISTS_FIELDS = ("bad_words_ids",)


def _skip_sampling_checks(cfg: GenerationConfig, strict: bool) -> bool:
    return not strict and cfg.do_sample is not True


def _value_errors(cfg: GenerationConfig, vocab_size: int | None, *, strict: bool) -> list[str]:
    """Invalid single values and combinations (always errors)."""
    errors: list[str] = []
    bad: set[str] = set()
    skip_sampling = _skip_sampling_checks(cfg, strict)
    for name, (ok, allowed) in _RULES.items():
        if skip_sampling and name in SAMPLING_ONLY:
            continue
        value = getattr(cfg, name)
        if not ok(value):
            bad.add(name)
            msg = f"GenerationConfig.{name}={value!r} is invalid; allowed: {allowed}"
            if name == "temperature" and _is_num(value) and value == 0:
                msg += " (for greedy decoding set do_sample=False)"
            errors.append(msg)

    def fine(*names: str) -> bool:
        return not bad.intersection(names)

    nrs, beams = cfg.num_return_sequences, cfg.num_beams
    if fine("num_return_sequences", "num_beams", "do_sample") and nrs > 1:
        if beams == 1 and not cfg.do_sample:
            errors.append(
                f"GenerationConfig.num_return_sequences={nrs} needs do_sample=True or "
                f"num_beams > 1 (greedy decoding returns one sequence); allowed: 1"
            )
        elif beams > 1 and nrs > beams:
            errors.append(
                f"GenerationConfig.num_return_sequences={nrs} exceeds num_beams={beams}; "
                f"allowed: 1 .. num_beams"
            )
    if fine("num_beam_groups", "num_beams") and cfg.num_beam_groups > 1:
        if beams % cfg.num_beam_groups:
            errors.append(
                f"GenerationConfig.num_beam_groups={cfg.num_beam_groups} must divide "
                f"num_beams={beams}; allowed: a divisor of num_beams"
            )
        if cfg.do_sample is True:
            errors.append(
                "GenerationConfig.num_beam_groups > 1 (diverse beam search) cannot sample; "
                "allowed: do_sample=False or num_beam_groups=1"
            )
    if fine("suppress_tokens", "forced_bos_token_id", "forced_eos_token_id") and (
        cfg.suppress_tokens is not None
    ):
        for forced in ("forced_bos_token_id", "forced_eos_token_id"):
            ids = _as_set(getattr(cfg, forced))
            if ids and ids <= set(cfg.suppress_tokens):
                errors.append(
                    f"GenerationConfig.{forced}={getattr(cfg, forced)!r} is entirely in "
                    f"suppress_tokens; allowed: a token not in suppress_tokens"
                )
    if vocab_size is not None:
        errors += _vocab_errors(cfg, vocab_size, bad)
    return errors


def _as_set(v: Any) -> set[int]:
    if v is None:
        return set()
    return {v} if isinstance(v, int) else set(v)


def _vocab_errors(cfg: GenerationConfig, vocab_size: int, bad: set[str]) -> list[str]:
    errors = []
    allowed = f"allowed: token ids in [0, {vocab_size})"
    for name in (
        _TOKEN_FIELDS + _TOKEN_LIST_FIELDS + _TOKEN_LISTS_FIELDS + ("sequence_bias", "logit_bias")
    ):
        value = getattr(cfg, name)
        if name in bad or value is None:
            continue
        if name == "pad_token_id" and value < 0:
            continue  # reported by _unused
        if name in _TOKEN_LISTS_FIELDS:
            ids = {t for row in value for t in row}
        elif name == "sequence_bias":
            ids = {t for key in value for t in key}
        elif name == "logit_bias":
            ids = set(value)
        else:
            ids = _as_set(value)
        outside = sorted(t for t in ids if t >= vocab_size)
        if outside:
            errors.append(
                f"GenerationConfig.{name} has ids {outside} outside the vocabulary; {allowed}"
            )
    return errors


def _unused_field(cfg: GenerationConfig, name: str) -> str | None:
    """Why a non-default field has no effect here, or None if it has one."""
    if name in SAMPLING_ONLY and cfg.do_sample is not True:
        return "only applies with do_sample=True"
    if name in BEAM_ONLY and cfg.num_beams == 1:
        return "only applies with num_beams > 1"
    if name in ENCODER_DECODER_ONLY:
        return "only applies to encoder-decoder models; jaxgen runs decoder-only models"
    return None


def _unused(cfg: GenerationConfig) -> list[str]:
    """Settings that have no effect: errors when strict, warnings otherwise."""
    issues = []
    for name in _MODE_ONLY:
        value = getattr(cfg, name)
        why = _unused_field(cfg, name)
        if why and not _same(value, _DEFAULTS[name]):
            issues.append(
                f"GenerationConfig.{name}={value!r} has no effect: it {why}; "
                f"allowed: {_DEFAULTS[name]!r}"
            )
    # max_length next to max_new_tokens is fine (max_new_tokens wins, as in transformers,
    # and model files often set max_length); min_length and min_new_tokens both apply.
    if cfg.eos_token_id is None:
        for name in ("min_length", "min_new_tokens"):
            value = getattr(cfg, name)
            if _is_int(value) and value > 0:
                issues.append(
                    f"GenerationConfig.{name}={value!r} has no effect without "
                    f"eos_token_id; allowed: set eos_token_id"
                )
    if _is_num(cfg.diversity_penalty) and cfg.diversity_penalty != 0.0 and (
            cfg.num_beam_groups == 1):
        issues.append(
            f"GenerationConfig.diversity_penalty={cfg.diversity_penalty!r} has no effect "
            f"without num_beam_groups > 1; allowed: 0.0")
    if cfg.output_scores is True and cfg.return_dict_in_generate is not True:
        issues.append(
            "GenerationConfig.output_scores=True has no effect without "
            "return_dict_in_generate=True; allowed: False"
        )
    if _is_int(cfg.pad_token_id) and cfg.pad_token_id < 0:
        issues.append(
            f"GenerationConfig.pad_token_id={cfg.pad_token_id!r} is negative; "
            f"allowed: a token id >= 0 or None"
        )
    return issues


def _support_errors(cfg: GenerationConfig) -> list[str]:
    """Fields set to values that would change outputs in ways jaxgen cannot produce yet."""
    errors = []
    for name, (allowed, feature) in NEUTRAL.items():
        value = getattr(cfg, name)
        if _unused_field(cfg, name) or any(_same(value, a) for a in allowed):
            continue
        shown = " or ".join(map(repr, allowed))
        errors.append(
            f"GenerationConfig.{name}={value!r} ({feature}) is not supported by "
            f"jaxgen yet; allowed: {shown}"
        )
    return errors


def _format(title: str, errors: Sequence[str]) -> str:
    if len(errors) == 1:
        return errors[0]
    return title + ":\n" + "\n".join(f"- {e}" for e in errors)
