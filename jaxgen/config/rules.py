"""Value rules: ``(predicate, allowed values in words)`` per GenerationConfig field."""

from __future__ import annotations

import math
from typing import Any

from jaxgen.config.serialise import _same
from jaxgen.ops import is_int

_CACHE_IMPLEMENTATIONS = (
    "static", "offloaded_static", "sliding_window", "hybrid", "hybrid_chunked",
    "offloaded_hybrid", "offloaded_hybrid_chunked", "dynamic", "offloaded", "quantized", "paged",
)  # fmt: skip


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(lo: int, optional: bool = False) -> tuple[Any, str]:
    desc = f"an int >= {lo}" + (" or None" if optional else "")
    return (lambda v: (optional and v is None) or (is_int(v) and v >= lo)), desc


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
    return is_int(v) and v >= 0


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


def _word(v: Any) -> bool:
    """A forced word: a non-empty list of ids, or a non-empty list of such lists."""
    return _ids(v) or (isinstance(v, tuple) and len(v) > 0 and all(map(_ids, v)))


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
    "pad_token_id": (lambda v: v is None or is_int(v), "None or an int token id"),
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
    "constraints": (
        lambda v: v is None or (isinstance(v, tuple) and len(v) > 0
                                and all(hasattr(c, "token_ids") for c in v)),
        "None or a non-empty list of PhrasalConstraint / DisjunctiveConstraint",
    ),
    "force_words_ids": (
        lambda v: v is None or (isinstance(v, tuple) and len(v) > 0 and all(map(_word, v))),
        "None or a non-empty list whose entries are token-id lists (words) or lists of them "
        "(alternatives)",
    ),
    "prefill_chunk_size": _int(1, optional=True),
    "presence_penalty": _num(-2, 2),
    "frequency_penalty": _num(-2, 2),
    "logit_bias": (
        lambda v: v is None or _logit_bias(v),
        "None or a dict {token id >= 0: bias in [-100, 100]}",
    ),
}
