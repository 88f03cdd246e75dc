"""The front door: validate, pad to buckets, build the processor chain, pick a strategy, run.

Everything a user may get wrong is checked here in plain Python, before anything is
traced or compiled. Compiled functions are cached by jit on the (hashable) strategy and
the bucketed shapes; every tunable number travels as a fixed-dtype array leaf. No code
here looks at which strategy runs: the strategy's methods do the rest.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from jaxgen import distributed, sharding, stopping
from jaxgen.chains import build_knobs
from jaxgen.config import GenerationConfig
from jaxgen.decoding.loop import prefill
from jaxgen.decoding.output import GenerateOutput, compute_transition_scores
from jaxgen.decoding.past import continuation, feed_slots
from jaxgen.decoding.protocol import Request
from jaxgen.decoding.state import DecodeState
from jaxgen.decoding.strategies import strategy_for
from jaxgen.decoding.strategies.healing import heal
from jaxgen.drivers import chunks, run_to_end
from jaxgen.inputs import (
    as_2d_ids,
    as_key,
    as_mask,
    assistant,
    max_positions,
    recordable,
    split_kwargs,
)
from jaxgen.models.early_exit import early_exit_draft
from jaxgen.ops import bucket
from jaxgen.processors.base import processors_of

__all__ = ["GenerateOutput", "compute_transition_scores", "chunks", "finish", "generate",
           "prepare", "start"]

MIN_PROMPT_BUCKET = 16
MIN_NEW_BUCKET = 16


def _config(model: Any, config: Any, kwargs: dict[str, Any], strict: bool,
            stopping_criteria: Any, tokenizer: Any) -> tuple[GenerationConfig, Any]:
    """The config in force and the merged stopping criteria.

    ``strict=False``: ``config`` comes from the model's files; its settings that the
    caller's arguments make irrelevant are dropped quietly (``GenerationConfig.merged``).
    """
    cfg = config if config is not None else GenerationConfig()
    if not isinstance(cfg, GenerationConfig):
        raise TypeError(f"config must be a jaxgen.GenerationConfig, got {type(cfg).__name__}")
    kwargs = split_kwargs(kwargs)
    if not strict and hasattr(cfg, "merged"):
        cfg = cfg.merged(kwargs)
    elif kwargs:
        cfg = cfg.replace(**kwargs)
    crit = stopping.merge(stopping_criteria, stop_strings=cfg.stop_strings,
                          tokenizer=tokenizer, max_time=cfg.max_time)
    if crit.eos_token_id is not None:    # a custom criterion of a built-in type wins
        cfg = cfg.replace(eos_token_id=crit.eos_token_id)
    if crit.max_length is not None:
        cfg = cfg.replace(max_length=crit.max_length, max_new_tokens=None)
    if crit.max_new_tokens is not None:
        cfg = cfg.replace(max_new_tokens=crit.max_new_tokens)
    cfg.validate(vocab_size=model.vocab_size, strict=strict)
    return cfg, crit


def prepare(model: Any, input_ids: Any, attention_mask: Any = None, **kwargs: Any) -> Request:
    """Validate everything and build the arrays for ``prefill`` (no compilation); keyword
    arguments as `generate`'s (and ``params=``).

    On a mesh spanning processes (``params`` placed on it), every process checks that all
    of them passed the same arguments and gathers their rows (`jaxgen.distributed.prepare`).
    """
    fn = functools.partial(_prepare, model)
    if distributed.spans_processes(sharding.params_mesh(kwargs.get("params"))):
        return distributed.prepare(fn, input_ids, attention_mask, **kwargs)
    return fn(input_ids, attention_mask, **kwargs)


def _prepare(model: Any, input_ids: Any, attention_mask: Any = None, *,
             config: GenerationConfig | None = None,
             logits_processor: Sequence[Any] | None = None,
             stopping_criteria: Sequence[Any] | None = None, rng: Any = None,
             strict: bool = True, params: Any = None,
             prefix_allowed_tokens_fn: Callable[..., Any] | None = None,
             negative_prompt_ids: Any = None, negative_prompt_attention_mask: Any = None,
             tokenizer: Any = None, assistant_model: Any = None, strategy: Any = None,
             past_key_values: Any = None, **kwargs: Any) -> Request:
    """`prepare` in one process: validate and build the arrays.

    strict: settings without effect (e.g. ``temperature`` with greedy decoding) raise;
    ``False`` makes them warnings, for configs that come from a model's files.
    strategy: a user ``Strategy`` instead of the one the config asks for.
    past_key_values: a `jaxgen.decoding.past.Past` holding a prefix of ``input_ids``.
    """
    cfg, crit = _config(model, config, kwargs, strict, stopping_criteria, tokenizer)
    draft_model, draft_params = assistant(assistant_model, model)
    if cfg.assistant_early_exit is not None:
        if draft_model is not None:
            raise ValueError("give either assistant_model or GenerationConfig."
                             "assistant_early_exit (the model's first layers as the draft), "
                             "not both")
        draft_model, draft_params = early_exit_draft(model, params, cfg.assistant_early_exit)
    eos = list(cfg.eos_token_ids())
    ids = as_2d_ids(input_ids, model.vocab_size)
    mask = as_mask(attention_mask, ids, cfg, eos)
    if cfg.token_healing:
        ids, mask = heal(model, params, ids, mask, tokenizer, pad=cfg.pad_token_id)
    width = ids.shape[1]
    max_new = cfg.effective_max_length(width, max_position_embeddings=max_positions(model))
    max_new -= width  # effective_max_length raised if nothing is left to generate
    if strategy is None:
        strategy = strategy_for(cfg, draft=draft_model, n_eos=len(eos), model=model)
    record = recordable(cfg, strategy, model)
    knobs = build_knobs(cfg, prompt_ids=ids, max_length=width + max_new,
                        user=processors_of(logits_processor), model=model, params=params,
                        prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
                        negative_prompt_ids=negative_prompt_ids,
                        negative_prompt_attention_mask=negative_prompt_attention_mask)
    knobs = knobs.replace(stopping=crit.in_loop, confidence=None if draft_model is None
                          else np.asarray(cfg.assistant_confidence_threshold or 0.0, np.float32))
    extra = bucket(width, MIN_PROMPT_BUCKET) - width
    past, feed = None, None
    if past_key_values is not None:
        past, cached = continuation(past_key_values, model, ids, mask,
                                    strategy.rows_per_prompt(cfg), extra)
        feed = feed_slots(width, cached, width + extra)
        if not strategy.continues:        # checked, then the whole prompt is prefilled
            past, feed = None, None
    # rows repeated like transformers: [a, b] -> [a, a, b, b] (beams, or sampled sequences)
    repeat = strategy.rows_per_prompt(cfg)
    if repeat > 1:
        ids, mask = np.repeat(ids, repeat, axis=0), np.repeat(mask, repeat, axis=0)
    ids = np.concatenate([np.full((ids.shape[0], extra), knobs.pad, np.int32), ids], 1)
    mask = np.concatenate([np.zeros((mask.shape[0], extra), np.int32), mask], 1)
    clock = any(getattr(x, "uses_clock", False)
                for x in (*knobs.processors.processors, *knobs.warpers.processors))
    request = Request(model=model, strategy=strategy, config=cfg, input_ids=ids,
                      attention_mask=mask, knobs=knobs, rng=as_key(rng), start=extra,
                      max_new_tokens=max_new,
                      new_slots=bucket(strategy.buffer_slots(max_new), MIN_NEW_BUCKET),
                      aux=draft_params, max_time=crit.max_time, chunk=crit.chunk,
                      uses_clock=clock, record=record, past=past, feed=feed)
    strategy.check(request)
    return request


def start(request: Request, params: Any) -> DecodeState:
    """Prefill and choose the first token (prompt rows split over the params' mesh, if any)."""
    ids, mask = sharding.place_prompt(request, params)
    return prefill(request.strategy, request.model, params, ids, mask, request.knobs,
                   request.rng, np.asarray(request.start, np.int32),
                   np.asarray(request.max_len, np.int32), request.aux, request.past,
                   new_slots=request.new_slots, output_scores=bool(request.config.output_scores),
                   record=request.record, feed=request.feed)


def finish(request: Request, state: DecodeState) -> GenerateOutput | np.ndarray:
    """transformers' layout (one host sync): a ``GenerateOutput``, or only the sequences
    when ``return_dict_in_generate`` is False."""
    out = request.own(request.strategy.finalize(state, request))  # rows of this process
    return out if request.config.return_dict_in_generate else out.sequences


def generate(model: Any, params: Any, input_ids: Any, attention_mask: Any = None, *,
             config: GenerationConfig | None = None,
             logits_processor: Sequence[Any] | None = None,
             stopping_criteria: Sequence[Any] | None = None, rng: Any = None,
             strict: bool = True, prefix_allowed_tokens_fn: Callable[..., Any] | None = None,
             negative_prompt_ids: Any = None, negative_prompt_attention_mask: Any = None,
             tokenizer: Any = None, streamer: Any = None, assistant_model: Any = None,
             strategy: Any = None, past_key_values: Any = None,
             **kwargs: Any) -> GenerateOutput | np.ndarray:
    """Generate like transformers' ``model.generate``.

    input_ids: int [batch, length], left-padded; attention_mask: same shape, or None.
    config: base GenerationConfig; keyword arguments override its fields.
    strict: False turns settings without effect into warnings (see ``prepare``).
    prefix_allowed_tokens_fn: jittable ``fn(batch_id [rows], ctx) -> allowed [rows, vocab]``
        (see ``processors.PrefixConstrained``).
    negative_prompt_ids / negative_prompt_attention_mask: the unconditional prompt of
        classifier-free guidance (``guidance_scale``).
    stopping_criteria: ``jaxgen.stopping`` criteria, merged like transformers.
    tokenizer: needed for ``stop_strings``.
    assistant_model: a draft ``LM`` (or ``(model, params)``) sharing the tokenizer:
        speculative decoding (``num_assistant_tokens`` per step); ``prompt_lookup_num_tokens``
        does the same with candidates copied from the prompt.
    streamer: an object with ``put(ids)`` / ``end()`` (transformers' streamer protocol):
        it gets the prompt ids, then the new tokens ``[rows, n]`` after every chunk.
    strategy: a ``jaxgen.Strategy`` instance to run instead of the built-in choice (see
        ``docs/strategies.md``).
    past_key_values: ``out.past_key_values`` of an earlier call whose tokens are a prefix
        of ``input_ids``: only the rest is prefilled (`jaxgen.decoding.past`).
    Returns numpy int32 sequences [batch * num_return_sequences, length + new], or a
    ``GenerateOutput`` when ``return_dict_in_generate=True``.
    """
    t0 = time.perf_counter()
    request = prepare(model, input_ids, attention_mask, config=config,
                      logits_processor=logits_processor, stopping_criteria=stopping_criteria,
                      rng=rng, strict=strict, params=params,
                      prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
                      negative_prompt_ids=negative_prompt_ids,
                      negative_prompt_attention_mask=negative_prompt_attention_mask,
                      tokenizer=tokenizer, assistant_model=assistant_model, strategy=strategy,
                      past_key_values=past_key_values, **kwargs)
    if streamer is not None and not request.strategy.streamable:
        raise ValueError(f"streamer= works with greedy decoding, sampling and speculative "
                         f"decoding, not with {type(request.strategy).__name__} "
                         f"(num_beams > 1, as in transformers)")
    state = start(request, params)
    return finish(request, run_to_end(request, params, state, t0, streamer))
