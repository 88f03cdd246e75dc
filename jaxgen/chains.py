"""Build the processor chain of a ``GenerationConfig`` in transformers' exact order.

Order (transformers 5 ``_get_logits_processor``, then jaxgen's extras where noted)::

    guidance_scale (unbatched CFG) > sequence_bias > [logit_bias] > encoder_repetition
    > repetition > [presence/frequency] > no_repeat_ngram > encoder_no_repeat_ngram
    > bad_words > min_length > min_new_tokens > prefix_allowed_tokens_fn > forced_bos
    > forced_eos > remove_invalid_values > exponential_decay > suppress > begin_suppress
    > user processors
    then, when sampling: temperature > top_h > top_k > top_p > min_p > typical > epsilon
    > eta; then watermarking; then renormalize_logits (always last).

A user processor of a built-in type replaces the built-in one; the others follow the
built-in processors and precede the sampling warpers (transformers' merge rule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxgen import processors as P
from jaxgen.config import GenerationConfig
from jaxgen.decoding import Knobs
from jaxgen.ops import pad_ids


def _thaw(x: Any) -> Any:
    """Config values are frozen (tuples); processors take transformers' list forms."""
    if isinstance(x, tuple):
        return [_thaw(v) for v in x]
    return x


_WATERMARK_KEYS = ("greenlist_ratio", "bias", "hashing_key", "seeding_scheme", "context_width")


def _watermark(wc: Any, vocab_size: int) -> Any:
    """A ``Watermark`` from transformers' ``WatermarkingConfig`` (or the same dict)."""
    d = wc.to_dict() if hasattr(wc, "to_dict") else dict(wc)
    d = {k: v for k, v in d.items() if v is not None}
    unknown = sorted(set(d) - set(_WATERMARK_KEYS))
    if unknown:
        raise ValueError(f"GenerationConfig.watermarking_config: unsupported keys {unknown}; "
                         f"allowed: {list(_WATERMARK_KEYS)} (green-list watermarking)")
    return P.Watermark(vocab_size, **d)


def _merge(built: list[Any], user: Sequence[Any]) -> list[Any]:
    merged = []
    for b in built:
        custom = [u for u in user if type(u) is type(b)]
        merged.append(custom[0] if custom else b)
    return merged + [u for u in user if not any(u is m for m in merged)]


def build_knobs(cfg: GenerationConfig, *, prompt_ids: np.ndarray, max_length: int,
                user: Sequence[Any] = (), model: Any = None, params: Any = None,
                prefix_allowed_tokens_fn: Callable[..., Any] | None = None,
                negative_prompt_ids: Any = None,
                negative_prompt_attention_mask: Any = None) -> Knobs:
    """Processors, warpers and the other traced knobs of one ``generate`` call.

    prompt_ids: the caller's ``input_ids`` [batch, width] (before beam / sample expansion);
    max_length: transformers' total length for this call.
    """
    eos = list(cfg.eos_token_ids())
    guidance = []
    if cfg.guidance_scale is not None and cfg.guidance_scale != 1:
        guidance.append(P.UnbatchedClassifierFreeGuidance(
            cfg.guidance_scale, model, params, unconditional_ids=negative_prompt_ids,
            unconditional_attention_mask=negative_prompt_attention_mask))
    built = guidance + _processors(cfg, eos, prompt_ids, max_length, prefix_allowed_tokens_fn)
    processors = _merge(built, user)
    warpers = _warpers(cfg, eos)
    # After the warpers in transformers; these look at token ids, so they run on the full
    # vocabulary: as processors when greedy, as (non-candidate) warpers when sampling.
    tail: list[Any] = []
    if cfg.watermarking_config is not None:
        tail.append(_watermark(cfg.watermarking_config, model.vocab_size))
    if cfg.renormalize_logits:
        tail.append(P.LogitNormalization())
    if cfg.do_sample:
        warpers += tail
    else:
        processors += tail
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (eos[0] if eos else 0)
    return Knobs(processors=P.chain(*processors), warpers=P.Chain(tuple(warpers)),
                 eos=pad_ids(eos), pad=np.asarray(pad, np.int32),
                 length_penalty=np.asarray(cfg.length_penalty, np.float32),
                 diversity_penalty=np.asarray(cfg.diversity_penalty, np.float32),
                 penalty_alpha=None if cfg.penalty_alpha is None
                 else np.asarray(cfg.penalty_alpha, np.float32))


def _processors(cfg: GenerationConfig, eos: list[int], prompt_ids: np.ndarray,
                max_length: int, prefix_allowed_tokens_fn: Any) -> list[Any]:
    """The built-in processors after guidance, in transformers' order."""
    width = prompt_ids.shape[1]
    b: list[Any] = []
    if cfg.sequence_bias is not None:
        b.append(P.SequenceBias(cfg.sequence_bias))
    if cfg.logit_bias:
        b.append(P.LogitBias(cfg.logit_bias))
    if cfg.encoder_repetition_penalty != 1.0:
        b.append(P.EncoderRepetitionPenalty(cfg.encoder_repetition_penalty, prompt_ids))
    if cfg.repetition_penalty != 1.0:
        # left padding is never counted (jaxgen skips attention_mask == 0 slots)
        b.append(P.RepetitionPenalty(cfg.repetition_penalty))
    if cfg.presence_penalty or cfg.frequency_penalty:
        b.append(P.PresenceFrequencyPenalty(cfg.presence_penalty, cfg.frequency_penalty))
    if cfg.no_repeat_ngram_size:
        b.append(P.NoRepeatNGram(cfg.no_repeat_ngram_size))
    if cfg.encoder_no_repeat_ngram_size:
        b.append(P.EncoderNoRepeatNGram(cfg.encoder_no_repeat_ngram_size, prompt_ids))
    if cfg.bad_words_ids is not None:
        b.append(P.NoBadWords(_thaw(cfg.bad_words_ids), eos or None))
    if eos and cfg.min_length and cfg.min_length > 0:
        b.append(P.MinLength(cfg.min_length, eos))
    if eos and cfg.min_new_tokens and cfg.min_new_tokens > 0:
        b.append(P.MinNewTokensLength(width, cfg.min_new_tokens, eos))
    if prefix_allowed_tokens_fn is not None:
        group = max(cfg.num_beams // cfg.num_beam_groups, cfg.num_return_sequences)
        b.append(P.PrefixConstrained(prefix_allowed_tokens_fn, group))
    if cfg.forced_bos_token_id is not None:
        b.append(P.ForcedBOSToken(cfg.forced_bos_token_id))
    if cfg.forced_eos_token_id is not None:
        b.append(P.ForcedEOSToken(max_length, _thaw(cfg.forced_eos_token_id)))
    if cfg.remove_invalid_values:
        b.append(P.InfNanRemove())
    if cfg.exponential_decay_length_penalty is not None:
        b.append(P.ExponentialDecayLengthPenalty(tuple(cfg.exponential_decay_length_penalty), eos,
                                                 width))
    if cfg.suppress_tokens is not None:
        b.append(P.SuppressTokens(_thaw(cfg.suppress_tokens)))
    if cfg.begin_suppress_tokens is not None:
        begin = width if (width > 1 or cfg.forced_bos_token_id is None) else width + 1
        b.append(P.SuppressTokensAtBegin(_thaw(cfg.begin_suppress_tokens), begin))
    return b


def _warpers(cfg: GenerationConfig, eos: list[int]) -> list[Any]:
    """The sampling warpers, in transformers' order (none when greedy)."""
    if not cfg.do_sample:
        return []
    # beam sampling keeps a non-eos continuation per beam, like transformers
    keep = len(eos) + 1 if cfg.num_beams > 1 else 1
    # always present: dividing by 1.0 is exact, and changing it never recompiles
    warpers: list[Any] = [P.Temperature(float(cfg.temperature))]
    if cfg.top_h is not None:
        warpers.append(P.TopH(cfg.top_h))
    if cfg.top_k:
        warpers.append(P.TopK(int(cfg.top_k), min_tokens_to_keep=keep))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        warpers.append(P.TopP(float(cfg.top_p), min_tokens_to_keep=keep))
    if cfg.min_p is not None:
        warpers.append(P.MinP(float(cfg.min_p), min_tokens_to_keep=keep))
    if cfg.typical_p is not None and cfg.typical_p < 1.0:
        warpers.append(P.Typical(float(cfg.typical_p), min_tokens_to_keep=keep))
    if cfg.epsilon_cutoff and 0.0 < cfg.epsilon_cutoff < 1.0:
        warpers.append(P.Epsilon(float(cfg.epsilon_cutoff), min_tokens_to_keep=keep))
    if cfg.eta_cutoff and 0.0 < cfg.eta_cutoff < 1.0:
        warpers.append(P.Eta(float(cfg.eta_cutoff), min_tokens_to_keep=keep))
    return warpers
