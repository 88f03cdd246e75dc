"""GenerationConfig checks: invalid values, unsupported features, settings without effect.

Functions take the config and return messages; ``GenerationConfig.validate`` raises or
warns with them, ``GenerationConfig.merged`` uses ``no_effect`` to drop inherited settings.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from jaxgen.config.rules import _RULES, _is_num
from jaxgen.config.serialise import _same
from jaxgen.config.support import (
    BEAM_ONLY,
    DICT_ONLY,
    ENCODER_DECODER_ONLY,
    NEUTRAL,
    SAMPLING_ONLY,
)
from jaxgen.ops import is_int

if TYPE_CHECKING:
    from jaxgen.config.generation import GenerationConfig

_TOKEN_FIELDS = ("pad_token_id", "bos_token_id", "eos_token_id", "forced_bos_token_id",
                 "forced_eos_token_id", "decoder_start_token_id")  # fmt: skip
_TOKEN_LIST_FIELDS = ("suppress_tokens", "begin_suppress_tokens")
_TOKEN_LISTS_FIELDS = ("bad_words_ids",)
_NESTED_FIELDS = ("force_words_ids", "constraints")


@functools.cache
def _defaults(cls: type) -> dict[str, Any]:
    """Field name -> default, in field order."""
    return {f.name: f.default for f in dataclasses.fields(cls)}


@functools.cache
def _mode_only(cls: type) -> tuple[str, ...]:
    """The fields that apply in one mode only, in field order."""
    return tuple(n for n in _defaults(cls) if n in SAMPLING_ONLY | BEAM_ONLY | ENCODER_DECODER_ONLY)


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
    if fine("penalty_alpha", "top_k") and _contrastive(cfg) and cfg.top_k <= 1:
        errors.append(
            f"GenerationConfig.penalty_alpha={cfg.penalty_alpha!r} needs top_k > 1 (contrastive "
            f"search re-ranks the top_k candidates), got top_k={cfg.top_k!r}; allowed: top_k "
            f"> 1, or penalty_alpha=None"
        )
    if fine("constraints", "force_words_ids", "num_beams", "do_sample", "num_beam_groups"):
        errors += _constrained_errors(cfg)
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


def _contrastive(cfg: GenerationConfig) -> bool:
    """Contrastive search is asked for (transformers: penalty_alpha > 0, greedy, 1 beam)."""
    return (_is_num(cfg.penalty_alpha) and cfg.penalty_alpha > 0 and cfg.do_sample is False
            and cfg.num_beams == 1)


def _constrained_errors(cfg: GenerationConfig) -> list[str]:
    """Constrained beam search needs beams, no sampling and no beam groups."""
    name = "constraints" if cfg.constraints is not None else "force_words_ids"
    if cfg.constraints is None and cfg.force_words_ids is None:
        return []
    errors = []
    for bad, allowed in ((cfg.num_beams == 1, "num_beams > 1"),
                         (cfg.do_sample is True, "do_sample=False"),
                         (cfg.num_beam_groups > 1, "num_beam_groups=1")):
        if bad:
            errors.append(f"GenerationConfig.{name} (constrained beam search) needs "
                          f"{allowed}; allowed: {allowed}, or {name}=None")
    return errors


def nested_ids(value: Any) -> set[int]:
    """Every token id in a ``force_words_ids`` / ``constraints`` value."""
    if value is None:
        return set()
    if hasattr(value, "token_ids"):
        return nested_ids(value.token_ids)
    if isinstance(value, (tuple, list)):
        return set().union(*map(nested_ids, value)) if value else set()
    return {value} if is_int(value) else set()


def _as_set(v: Any) -> set[int]:
    if v is None:
        return set()
    return {v} if isinstance(v, int) else set(v)


def _vocab_errors(cfg: GenerationConfig, vocab_size: int, bad: set[str]) -> list[str]:
    errors = []
    allowed = f"allowed: token ids in [0, {vocab_size})"
    for name in (
        _TOKEN_FIELDS + _TOKEN_LIST_FIELDS + _TOKEN_LISTS_FIELDS + _NESTED_FIELDS
        + ("sequence_bias", "logit_bias")
    ):
        value = getattr(cfg, name)
        if name in bad or value is None:
            continue
        if name == "pad_token_id" and value < 0:
            continue  # reported by _unused
        if name in _NESTED_FIELDS:
            ids = nested_ids(value)
        elif name in _TOKEN_LISTS_FIELDS:
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
    if name == "top_k" and cfg.penalty_alpha is not None and cfg.do_sample is not True:
        return None  # contrastive search re-ranks the top_k candidates (as transformers)
    if name in SAMPLING_ONLY and cfg.do_sample is not True:
        return "only applies with do_sample=True"
    if name in BEAM_ONLY and cfg.num_beams == 1:
        return "only applies with num_beams > 1"
    if name in ENCODER_DECODER_ONLY:
        return "only applies to encoder-decoder models; jaxgen runs decoder-only models"
    return None


def no_effect(cfg: GenerationConfig) -> list[tuple[str, str]]:
    """``(field, message)`` for every field set away from its default that has no effect
    with the rest of ``cfg``."""
    defaults = _defaults(type(cfg))
    issues = []
    for name in _mode_only(type(cfg)):
        value = getattr(cfg, name)
        why = _unused_field(cfg, name)
        if why and not _same(value, defaults[name]):
            issues.append((name, f"GenerationConfig.{name}={value!r} has no effect: it {why}; "
                                 f"allowed: {defaults[name]!r}"))
    # max_length next to max_new_tokens is fine (max_new_tokens wins, as in transformers,
    # and model files often set max_length); min_length and min_new_tokens both apply.
    if cfg.eos_token_id is None:
        for name in ("min_length", "min_new_tokens"):
            value = getattr(cfg, name)
            if is_int(value) and value > 0:
                issues.append((name, f"GenerationConfig.{name}={value!r} has no effect "
                                     f"without eos_token_id; allowed: set eos_token_id"))
    if _is_num(cfg.diversity_penalty) and cfg.diversity_penalty != 0.0 and (
            cfg.num_beam_groups == 1):
        issues.append(("diversity_penalty",
                       f"GenerationConfig.diversity_penalty={cfg.diversity_penalty!r} has no "
                       f"effect without num_beam_groups > 1; allowed: 0.0"))
    for name in DICT_ONLY:
        if getattr(cfg, name) is True and cfg.return_dict_in_generate is not True:
            issues.append((name, f"GenerationConfig.{name}=True has no effect without "
                                 f"return_dict_in_generate=True; allowed: False"))
    return issues + _mode_issues(cfg)


def _mode_issues(cfg: GenerationConfig) -> list[tuple[str, str]]:
    """Contrastive search and DoLa settings the rest of ``cfg`` makes irrelevant (transformers
    falls back to another mode and ignores them)."""
    issues = []
    alpha = cfg.penalty_alpha
    if _is_num(alpha) and not _contrastive(cfg):
        why = ("penalty_alpha=0 is greedy decoding" if alpha == 0 and cfg.do_sample is False
               and cfg.num_beams == 1 else "it only applies with do_sample=False and num_beams=1")
        issues.append(("penalty_alpha", f"GenerationConfig.penalty_alpha={alpha!r} has no "
                                        f"effect: {why}; allowed: None"))
    if cfg.dola_layers is not None and (cfg.num_beams != 1 or _contrastive(cfg)):
        issues.append(("dola_layers", f"GenerationConfig.dola_layers={cfg.dola_layers!r} has no "
                                      f"effect: DoLa applies to greedy decoding and sampling "
                                      f"(num_beams=1, no penalty_alpha); allowed: None"))
    return issues


def advice(cfg: GenerationConfig) -> list[str]:
    """Valid settings transformers warns about (jaxgen warns too, never raises)."""
    if cfg.dola_layers is not None and _is_num(cfg.repetition_penalty) and (
            cfg.repetition_penalty < 1.2):
        return [f"GenerationConfig.dola_layers is set but repetition_penalty="
                f"{cfg.repetition_penalty!r}, which could induce unwanted repetition; the "
                f"recommended value for DoLa decoding is repetition_penalty>=1.2"]
    return []


def _unused(cfg: GenerationConfig) -> list[str]:
    """Settings that have no effect (and a negative pad id): errors when strict, warnings
    otherwise."""
    issues = [message for _, message in no_effect(cfg)]
    if is_int(cfg.pad_token_id) and cfg.pad_token_id < 0:
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
