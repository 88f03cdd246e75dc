"""One request, checked on the host before it reaches a slot: prompt, config, settings row.

``prepare(lm, prompt, config, seed=..., **fields)`` resolves the config as
``lm.generate`` does (the model's ``generation_config`` merged with the caller's fields,
or the caller's ``config`` validated strictly), then refuses by name what the engine
cannot do per request, and builds the request's `RowSettings` row. Nothing here
touches the device, so a bad request never disturbs the requests already running.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from jaxgen.config import SUPPORTED, GenerationConfig
from jaxgen.config.serialise import _same
from jaxgen.engine.settings import Limits, RowSettings, neutral_rows
from jaxgen.inputs import max_positions
from jaxgen.ops import is_int, pad_ids
from jaxgen.stopping import stop_targets

#: GenerationConfig fields the engine honours per request.
ENGINE_FIELDS = frozenset({
    "max_length", "max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p",
    "repetition_penalty", "presence_penalty", "frequency_penalty", "eos_token_id",
    "stop_strings", "output_scores", "logit_bias", "min_new_tokens",
})  # fmt: skip
#: Supported fields that change nothing in the engine (ids it does not use, beam and
#: assisted-decoding knobs whose features are refused anyway).
_INERT = frozenset({
    "pad_token_id", "bos_token_id", "return_dict_in_generate", "length_penalty",
    "early_stopping", "num_assistant_tokens", "num_assistant_tokens_schedule",
    "max_matching_ngram_size",
})  # fmt: skip
_PENALTIES = ("repetition_penalty", "presence_penalty", "frequency_penalty")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GenerationConfig)}


@dataclasses.dataclass
class Prepared:
    """A validated request: prompt ids, the config in force and its settings row."""

    ids: list[int]
    config: GenerationConfig
    max_new: int
    seed: int
    row: RowSettings | None       # numpy, one row (None until `fit`)
    text: bool                    # the prompt was text (results carry text)

    @property
    def total(self) -> int:
        """Slots the request may fill (prompt + max new tokens)."""
        return len(self.ids) + self.max_new


def prompt_ids(lm: Any, prompt: Any) -> tuple[list[int], bool]:
    """``(token ids, was text)`` of a prompt: a string, a list of token ids, or chat
    messages (a list of ``{"role", "content"}`` dicts, rendered with the chat template)."""
    if isinstance(prompt, str):
        if lm.tokenizer is None:
            raise ValueError("a text prompt needs a model with a tokenizer; pass token ids")
        return list(lm.tokenizer.encode(prompt)), True
    if isinstance(prompt, Sequence) and prompt and isinstance(prompt[0], Mapping):
        render = getattr(lm.tokenizer, "apply_chat_template", None)
        if render is None:
            raise ValueError("chat messages need a tokenizer with apply_chat_template; this "
                             "model has none: pass a prompt string or token ids")
        return list(render(list(prompt), add_generation_prompt=True, tokenize=True,
                           return_dict=False)), True
    ids = np.asarray(prompt)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise TypeError(f"a prompt is a string, a list of token ids or chat messages, got "
                        f"{type(prompt).__name__} of shape {ids.shape}")
    vocab = lm.model.vocab_size
    if ids.size and (ids.min() < 0 or ids.max() >= vocab):
        raise ValueError(f"prompt holds token ids outside the vocabulary [0, {vocab})")
    return [int(i) for i in ids], False


def resolve_config(lm: Any, config: GenerationConfig | None, fields: Mapping[str, Any]
                   ) -> GenerationConfig:
    """The config in force, as ``lm.generate`` builds it: ``config`` with ``fields``,
    validated strictly, or the model's ``generation_config`` merged with ``fields``."""
    strict = config is not None
    base = config if strict else lm.generation_config
    if not isinstance(base, GenerationConfig):
        raise TypeError(f"config must be a jaxgen.GenerationConfig, got {type(base).__name__}")
    cfg = base.replace(**fields) if strict else base.merged(dict(fields))
    if cfg.output_scores:               # the engine returns logprobs, never a dict
        cfg = cfg.replace(return_dict_in_generate=True)
    cfg.validate(vocab_size=lm.model.vocab_size, strict=strict)
    return cfg


def check_engine(cfg: GenerationConfig, penalties: bool = True) -> None:
    """ValueError naming every setting the engine cannot honour per request."""
    names = sorted(SUPPORTED - ENGINE_FIELDS - _INERT)
    if not penalties:
        names += list(_PENALTIES)
    bad = [f"{n}={getattr(cfg, n)!r}" for n in names if not _same(getattr(cfg, n), _DEFAULTS[n])]
    if bad:
        raise ValueError(f"the engine cannot do per request: {', '.join(bad)}; allowed: their "
                         f"defaults (use jaxgen.generate for these settings)")
    if cfg.do_sample and cfg.top_k == 0:
        raise ValueError("GenerationConfig.top_k=0 (sampling from the whole vocabulary): the "
                         "engine samples among the top_k best tokens; allowed: top_k >= 1")


def check_limits(cfg: GenerationConfig, limits: Limits) -> None:
    """ValueError when ``cfg`` needs more than the engine's static sizes."""
    if cfg.do_sample and cfg.top_k > limits.k_max:
        raise ValueError(f"GenerationConfig.top_k={cfg.top_k!r}: this engine samples among at "
                         f"most k_max={limits.k_max} candidates; allowed: 1 .. {limits.k_max}")
    if len(cfg.eos_token_ids()) > limits.max_eos:
        raise ValueError(f"GenerationConfig.eos_token_id={cfg.eos_token_id!r}: this engine "
                         f"takes at most max_eos={limits.max_eos} eos ids per request")
    if cfg.logit_bias and len(cfg.logit_bias) > limits.max_logit_bias:
        raise ValueError(f"GenerationConfig.logit_bias has {len(cfg.logit_bias)} entries: this "
                         f"engine takes at most max_logit_bias={limits.max_logit_bias} per "
                         f"request")


def settings_row(cfg: GenerationConfig, n_prompt: int, limits: Limits) -> RowSettings:
    """The request's `RowSettings` (numpy, one row); sampling knobs of a greedy request
    and unset knobs keep their neutral values."""
    row = neutral_rows(1, limits)
    changes: dict[str, Any] = {"prompt_len": np.asarray([n_prompt], np.int32),
                               "eos": pad_ids(cfg.eos_token_ids(), limits.max_eos)[None]}
    if cfg.do_sample:
        changes.update(greedy=np.asarray([False]), top_k=np.asarray([cfg.top_k], np.int32),
                       **{n: np.asarray([v], np.float32) for n, v in (
                           ("temperature", cfg.temperature), ("top_p", cfg.top_p),
                           ("min_p", cfg.min_p or 0.0))})
    for name in _PENALTIES:
        changes[name] = np.asarray([getattr(cfg, name)], np.float32)
    if cfg.logit_bias:
        ids = np.full((1, limits.max_logit_bias), -1, np.int32)
        values = np.zeros((1, limits.max_logit_bias), np.float32)
        ids[0, :len(cfg.logit_bias)] = list(cfg.logit_bias)
        values[0, :len(cfg.logit_bias)] = list(cfg.logit_bias.values())
        changes.update(bias_ids=ids, bias_values=values)
    if cfg.min_new_tokens:
        changes["min_new"] = np.asarray([cfg.min_new_tokens], np.int32)
    if cfg.stop_strings is not None:
        strings = [cfg.stop_strings] if isinstance(cfg.stop_strings, str) else cfg.stop_strings
        if not limits.max_stop_strings:
            raise ValueError("GenerationConfig.stop_strings: this engine has no stop strings "
                             "(max_stop_strings=0)")
        targets, lengths = stop_targets(list(strings), max(limits.max_stop_strings, 1),
                                        limits.max_stop_bytes)
        changes.update(stop=targets[None], stop_lengths=lengths[None])
    return row.replace(**changes)


def prepare(lm: Any, prompt: Any, config: GenerationConfig | None = None, *, seed: int = 0,
            **fields: Any) -> Prepared:
    """Check one request (ValueError / TypeError naming what is wrong); its settings
    row is built by `fit` for a given engine."""
    if not is_int(seed) or not 0 <= seed < 2**31:
        raise ValueError(f"seed must be an int in [0, 2**31), got {seed!r}")
    ids, text = prompt_ids(lm, prompt)
    if not ids:
        raise ValueError("the prompt is empty: give at least one token")
    cfg = resolve_config(lm, config, fields)
    check_engine(cfg)
    if cfg.stop_strings is not None and lm.tokenizer is None:
        raise ValueError("GenerationConfig.stop_strings needs the model's tokenizer")
    max_new = cfg.max_new_token_count(len(ids), max_position_embeddings=max_positions(lm.model))
    return Prepared(ids=ids, config=cfg, max_new=max_new, seed=int(seed), row=None, text=text)


def fit(prep: Prepared, limits: Limits, max_length: int) -> Prepared:
    """``prep`` with its settings row for an engine of these ``limits`` / ``max_length``
    (ValueError naming what does not fit)."""
    n, cfg = len(prep.ids), prep.config
    if prep.total > max_length:
        raise ValueError(f"the prompt ({n} tokens) plus max_new_tokens ({prep.max_new}) exceeds "
                         f"the engine's max_length={max_length}; allowed: prompt + "
                         f"max_new_tokens <= {max_length}")
    check_engine(cfg, limits.penalties)
    check_limits(cfg, limits)
    return dataclasses.replace(prep, row=settings_row(cfg, n, limits))
