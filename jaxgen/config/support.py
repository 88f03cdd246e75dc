"""Which GenerationConfig fields jaxgen honours, and which apply only in one mode."""

from __future__ import annotations

from typing import Any

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
    "num_assistant_tokens", "num_assistant_tokens_schedule", "output_logits",
    "output_hidden_states", "output_attentions", "penalty_alpha", "dola_layers",
    "constraints", "force_words_ids", "token_healing", "assistant_confidence_threshold",
    "assistant_early_exit",
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
    "decoder_start_token_id": ((None,), "encoder-decoder models"),
    "is_assistant": ((False,), "assisted generation"),
    "assistant_lookbehind": ((10,), "universal assisted generation"),
    "target_lookbehind": ((10,), "universal assisted generation"),
    "assistant_ensemble_weight": ((None,), "ensemble speculative decoding"),
    "speculation_type": ((None,), "DFlash speculation"),
    "compile_config": ((None,), "torch.compile settings; jaxgen always uses jax.jit"),
    "disable_compile": ((False,), "eager decoding; jaxgen always uses jax.jit"),
    "continuous_batching_config": ((None,), "continuous batching"),
    "low_memory": ((False,), "sequential low-memory search"),
    "prefill_chunk_size": ((None,), "chunked prefill"),
}

#: Only used when sampling (transformers warns when set with do_sample=False).
SAMPLING_ONLY = frozenset(
    {"temperature", "top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff",
     "eta_cutoff"}
)  # fmt: skip
#: Only used by beam search (transformers warns when set with num_beams=1).
BEAM_ONLY = frozenset({"early_stopping", "length_penalty"})
#: Only used with ``return_dict_in_generate=True``.
DICT_ONLY = ("output_scores", "output_logits", "output_hidden_states", "output_attentions")
#: Only used by encoder-decoder models (transformers ignores them for decoder-only ones).
# (encoder_repetition_penalty / encoder_no_repeat_ngram_size apply to the prompt ids of a
# decoder-only model, as in transformers)
ENCODER_DECODER_ONLY = frozenset({"decoder_start_token_id"})
