"""The front door: validate, pad to buckets, build the processor chain, run the loop.

Everything a user may get wrong is checked here in plain Python, before anything is
traced or compiled. Compiled functions are cached by jit on their static spec and the
bucketed shapes; every tunable number travels as a fixed-dtype array leaf.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen import stopping
from jaxgen.chains import build_knobs
from jaxgen.config import GenerationConfig
from jaxgen.decoding import DecodeSpec, DecodeState, Knobs, prefill, run_steps
from jaxgen.decoding.beam import BeamState
from jaxgen.decoding.diverse import GroupBeamState, finalize_groups
from jaxgen.decoding.speculative import SpecSpec, SpecState, spec_prefill, spec_run
from jaxgen.processors.base import processors_of

MIN_PROMPT_BUCKET = 16
MIN_NEW_BUCKET = 16


@dataclasses.dataclass
class GenerateOutput:
    """What ``generate(..., return_dict_in_generate=True)`` returns (transformers layout).

    sequences: int32 [batch * num_return_sequences, prompt_len + new_len]
    scores: tuple of new_len arrays [batch * num_return_sequences, vocab] (processed
        scores) when ``output_scores=True``, else None.
    """

    sequences: np.ndarray
    scores: tuple[np.ndarray, ...] | None = None
    sequences_scores: np.ndarray | None = None
    beam_indices: np.ndarray | None = None
    speculative: dict[str, Any] | None = None   # statistics of speculative decoding

    def __getitem__(self, key: str) -> Any:
        return getattr(self, key)


def bucket(n: int, minimum: int) -> int:
    """The next power of two >= n (at least ``minimum``): a compile-cache bucket."""
    return max(minimum, 1 << max(0, n - 1).bit_length())


def split_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keep the GenerationConfig fields of ``kwargs``; anything else is an error."""
    fields = {f.name for f in dataclasses.fields(GenerationConfig)}
    unknown = sorted(set(kwargs) - fields)
    if unknown:
        import difflib

        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, fields, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise TypeError(f"generate() got unknown arguments: {', '.join(hints)}; pass "
                        f"GenerationConfig field names, or logits_processor=, "
                        f"stopping_criteria=, rng=")
    return kwargs


def _as_2d_ids(input_ids: Any, vocab_size: int) -> np.ndarray:
    if isinstance(input_ids, (str, bytes)):
        raise TypeError("input_ids must be token ids (int array [batch, length]), got a "
                        "string; tokenize first, e.g. lm.tokenizer([text])")
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        raise ValueError(f"input_ids must be 2-D [batch, length], got shape {ids.shape}; "
                         f"wrap a single prompt as [ids]")
    if ids.ndim != 2:
        raise ValueError(f"input_ids must be 2-D [batch, length], got shape {ids.shape}")
    if ids.shape[0] == 0:
        raise ValueError("input_ids is an empty batch (shape[0] == 0); give at least one row")
    if ids.shape[1] == 0:
        raise ValueError("input_ids has no tokens (shape[1] == 0); give at least one token")
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"input_ids must hold integers, got dtype {ids.dtype}")
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"input_ids holds token id {bad}, outside the vocabulary "
                         f"[0, {vocab_size})")
    return ids.astype(np.int32)


def _as_mask(attention_mask: Any, ids: np.ndarray, cfg: GenerationConfig,
             eos: Sequence[int]) -> np.ndarray:
    if attention_mask is None:
        # transformers' inference: mask pads only if pad is in the ids and is not an eos
        pad = cfg.pad_token_id
        if pad is not None and (ids == pad).any() and pad not in eos:
            return (ids != pad).astype(np.int32)
        return np.ones_like(ids)
    mask = np.asarray(attention_mask)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask has shape {mask.shape} but input_ids has shape "
                         f"{ids.shape}; they must be equal")
    if not np.isin(mask, (0, 1)).all():
        raise ValueError("attention_mask must hold only 0 and 1")
    if (mask[:, -1] == 0).any():
        row = int(np.argmax(mask[:, -1] == 0))
        raise ValueError(f"attention_mask row {row} ends with padding: jaxgen needs "
                         f"left-padded prompts (tokenizer(..., padding_side='left'))")
    return mask.astype(np.int32)


def _max_positions(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def _as_key(rng: Any) -> jax.Array:
    """A typed PRNG key from None (seed 0), an int seed, a typed key or a legacy key."""
    if rng is None:
        return jax.random.key(0)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return jax.random.key(int(rng))
    if isinstance(rng, jax.Array) and jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
        if rng.shape != ():
            raise ValueError(f"rng must be a single key, got shape {rng.shape}")
        return rng
    arr = np.asarray(rng)
    if arr.shape == (2,) and arr.dtype == np.uint32:
        return jax.random.wrap_key_data(jnp.asarray(arr))
    raise TypeError(f"rng must be None, an int seed or a jax.random.key, got "
                    f"{type(rng).__name__}")


@dataclasses.dataclass
class Prepared:
    """A validated, bucketed request: the host-side half of ``generate``."""

    spec: DecodeSpec
    input_ids: np.ndarray        # [batch * nrs, P] int32, left-padded to the bucket
    attention_mask: np.ndarray   # [batch * nrs, P]
    knobs: Knobs
    rng: jax.Array
    start: np.ndarray            # int32 scalar: P - caller's width
    max_len: np.ndarray          # int32 scalar: last slot + 1
    max_new_tokens: int
    config: GenerationConfig
    max_time: float | None = None   # host-side time limit (seconds)
    chunk: int = 8                  # tokens per run_steps call when driven in chunks
    uses_clock: bool = False        # a processor reads ctx.elapsed: drive in chunks
    speculative: Any = None         # SpecSpec for assisted / prompt lookup decoding
    draft_params: Any = None


def prepare(model: Any, input_ids: Any, attention_mask: Any = None, *,
            config: GenerationConfig | None = None, logits_processor: Sequence[Any] | None = None,
            stopping_criteria: Sequence[Any] | None = None, rng: Any = None,
            strict: bool = True, params: Any = None,
            prefix_allowed_tokens_fn: Callable[..., Any] | None = None,
            negative_prompt_ids: Any = None, negative_prompt_attention_mask: Any = None,
            tokenizer: Any = None, assistant_model: Any = None,
            **kwargs: Any) -> Prepared:
    """Validate everything and build the arrays for ``prefill`` (no compilation).

    strict: settings without effect (e.g. ``temperature`` with greedy decoding) raise;
    ``False`` makes them warnings, for configs that come from a model's files.
    """
    cfg = config if config is not None else GenerationConfig()
    if not isinstance(cfg, GenerationConfig):
        raise TypeError(f"config must be a jaxgen.GenerationConfig, got {type(cfg).__name__}")
    if kwargs:
        cfg = cfg.replace(**split_kwargs(kwargs))
    crit = stopping.merge(stopping_criteria, stop_strings=cfg.stop_strings,
                          tokenizer=tokenizer, max_time=cfg.max_time)
    if crit.eos_token_id is not None:    # a custom criterion of a built-in type wins
        cfg = cfg.replace(eos_token_id=crit.eos_token_id)
    if crit.max_length is not None:
        cfg = cfg.replace(max_length=crit.max_length, max_new_tokens=None)
    if crit.max_new_tokens is not None:
        cfg = cfg.replace(max_new_tokens=crit.max_new_tokens)
    cfg.validate(vocab_size=model.vocab_size, strict=strict)
    if crit.in_loop and cfg.num_beam_groups > 1:
        raise ValueError("stopping_criteria / stop_strings are not supported with "
                         "num_beam_groups > 1 (diverse beam search); allowed: None")
    user = processors_of(logits_processor)
    draft_model, draft_params = _assistant(assistant_model, model)
    speculative = draft_model is not None or cfg.prompt_lookup_num_tokens is not None
    eos = list(cfg.eos_token_ids())
    ids = _as_2d_ids(input_ids, model.vocab_size)
    mask = _as_mask(attention_mask, ids, cfg, eos)
    width = ids.shape[1]
    max_new = cfg.effective_max_length(width, max_position_embeddings=_max_positions(model))
    max_new -= width  # effective_max_length raised if nothing is left to generate
    prompt_ids = ids
    beams = cfg.num_beams
    # rows repeated like transformers: [a, b] -> [a, a, b, b] (beams, or sampled sequences)
    repeat = beams if beams > 1 else (cfg.num_return_sequences or 1)
    if repeat > 1:
        ids, mask = np.repeat(ids, repeat, axis=0), np.repeat(mask, repeat, axis=0)
    knobs = build_knobs(cfg, prompt_ids=prompt_ids, max_length=width + max_new, user=user,
                        model=model, params=params,
                        prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
                        negative_prompt_ids=negative_prompt_ids,
                        negative_prompt_attention_mask=negative_prompt_attention_mask)
    knobs = knobs.replace(stopping=crit.in_loop)
    k_spec = 0
    if speculative:
        k_spec = _check_speculative(cfg, knobs, crit, draft_model)
        # worst case: every iteration writes K + 1 slots for one token of some row
        max_slots = max_new + k_spec + 1 if ids.shape[0] == 1 else max_new * (k_spec + 1) + 1
    p = bucket(width, MIN_PROMPT_BUCKET)
    extra = p - width
    ids = np.concatenate([np.full((ids.shape[0], extra), knobs.pad, np.int32), ids], 1)
    mask = np.concatenate([np.zeros((mask.shape[0], extra), np.int32), mask], 1)
    spec = DecodeSpec(model=model, do_sample=bool(cfg.do_sample),
                      output_scores=bool(cfg.output_scores),
                      new_bucket=bucket(max_slots if speculative else max_new,
                                        MIN_NEW_BUCKET), num_beams=beams,
                      early_stopping=cfg.early_stopping if beams > 1 else False,
                      n_keep=max(2, 1 + len(eos)) * beams if beams > 1 else 0,
                      num_beam_groups=cfg.num_beam_groups if beams > 1 else 1,
                      n_eos=len(eos) if beams > 1 else 0)  # shapes only for beams
    sspec = None
    if speculative:
        sspec = SpecSpec(base=spec, draft=draft_model, k=k_spec,
                         ngram=int(cfg.max_matching_ngram_size or 2))
    return Prepared(spec=spec, input_ids=ids, attention_mask=mask, knobs=knobs,
                    speculative=sspec, draft_params=draft_params,
                    rng=_as_key(rng), start=np.asarray(extra, np.int32),
                    max_len=np.asarray(p + max_new, np.int32), max_new_tokens=max_new,
                    config=cfg, max_time=crit.max_time, chunk=crit.chunk,
                    uses_clock=any(getattr(x, "uses_clock", False)
                                   for x in (*knobs.processors.processors,
                                             *knobs.warpers.processors)))


def _assistant(assistant_model: Any, model: Any) -> tuple[Any, Any]:
    """(draft model, draft params) from an ``LM``, a ``(model, params)`` pair or None."""
    if assistant_model is None:
        return None, None
    if hasattr(assistant_model, "model") and hasattr(assistant_model, "params"):
        draft, params = assistant_model.model, assistant_model.params
    elif isinstance(assistant_model, (tuple, list)) and len(assistant_model) == 2:
        draft, params = assistant_model
    else:
        raise TypeError("assistant_model must be a jaxgen LM (jaxgen.load(...)) or a "
                        f"(model, params) pair, got {type(assistant_model).__name__}")
    if draft.vocab_size != model.vocab_size:
        raise ValueError(f"assistant_model has a vocabulary of {draft.vocab_size} tokens, the "
                         f"model {model.vocab_size}; they must share the tokenizer")
    return draft, params


def _check_speculative(cfg: GenerationConfig, knobs: Knobs, crit: Any, draft: Any) -> int:
    """Speculative decoding's limits, checked before compiling; returns K."""
    what = "assistant_model" if draft is not None else "prompt_lookup_num_tokens"
    if cfg.num_beams > 1:
        raise ValueError(f"{what} works with greedy decoding and sampling; allowed: "
                         f"num_beams=1 (got {cfg.num_beams})")
    if knobs.processors.processors:
        names = ", ".join(type(p).__name__ for p in knobs.processors.processors)
        raise ValueError(f"{what} supports the sampling warpers (temperature, top_k, top_p, "
                         f"...) but not these logits processors yet: {names}; allowed: none")
    if crit.max_time is not None:
        raise ValueError(f"{what} does not support max_time yet; allowed: None")
    if draft is not None and cfg.prompt_lookup_num_tokens is not None:
        raise ValueError("give either assistant_model or prompt_lookup_num_tokens, not both")
    if cfg.num_assistant_tokens_schedule != "constant":
        raise ValueError("num_assistant_tokens_schedule: only 'constant' is supported; "
                         "allowed: 'constant'")
    k = cfg.num_assistant_tokens if draft is not None else cfg.prompt_lookup_num_tokens
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        field = "num_assistant_tokens" if draft is not None else "prompt_lookup_num_tokens"
        raise ValueError(f"GenerationConfig.{field} must be an int >= 1, got {k!r}")
    return k


def start(prep: Prepared, params: Any) -> Any:
    """Prefill and choose the first token (prompt rows split over the params' mesh, if any)."""
    from jaxgen.sharding import place_prompt

    ids, mask = place_prompt(prep, params)
    if prep.speculative is not None:
        return spec_prefill(prep.speculative, params, prep.draft_params, ids, mask,
                            prep.knobs, prep.rng, prep.start, prep.max_len)
    return prefill(prep.spec, params, ids, mask, prep.knobs, prep.rng, prep.start,
                   prep.max_len)


def chunks(prep: Prepared, params: Any, state: Any, t0: float) -> Iterator[Any]:
    """Run the loop ``prep.chunk`` tokens at a time, yielding the state after each chunk.

    Between chunks the host sets ``state.elapsed`` (seconds since ``t0``) and, once
    ``max_time`` has passed, ends generation: no more tokens for greedy / sampling, one
    last step for beam strategies where every candidate counts as stopped (transformers'
    ``MaxTimeCriteria``). This is the only host interaction: one call per chunk.
    """
    n = np.asarray(prep.chunk, np.int32)
    while bool(state.running()):
        elapsed = time.perf_counter() - t0
        if prep.max_time is not None and elapsed > prep.max_time:
            last = state.cur if isinstance(state, DecodeState) else state.cur + 1
            state = state.replace(max_len=jnp.minimum(state.max_len, last))
            if not bool(state.running()):
                break
        state = run_steps(prep.spec, params,
                          state.replace(elapsed=jnp.asarray(elapsed, jnp.float32)), n)
        yield state
    yield state


def run_to_end(prep: Prepared, params: Any, state: Any, t0: float,
               streamer: Any = None) -> Any:
    """Finish the loop: one ``run_steps`` call, or chunks when a time limit, a clock-reading
    processor or a streamer needs the host between steps."""
    if prep.speculative is not None:
        if streamer is not None:
            raise ValueError("streamer= is not supported with speculative decoding yet")
        return spec_run(prep.speculative, params, state,
                        np.asarray(prep.max_new_tokens, np.int32))
    if prep.max_time is None and not prep.uses_clock and streamer is None:
        # prefill chose the first token; the loop writes the remaining max_new_tokens - 1
        return run_steps(prep.spec, params, state,
                         np.asarray(prep.max_new_tokens - 1, np.int32))
    shown = state.prompt_end
    if streamer is not None:
        streamer.put(np.asarray(prep.input_ids)[:, int(prep.start):])
        streamer.put(np.asarray(state.sequences)[:, shown:int(state.cur)])
        shown = int(state.cur)
    last = state
    for last in chunks(prep, params, state, t0):
        if streamer is not None and int(last.cur) > shown:
            streamer.put(np.asarray(last.sequences)[:, shown:int(last.cur)])
            shown = int(last.cur)
    if streamer is not None:
        streamer.end()
    return last


def finish(prep: Prepared,
           state: DecodeState | BeamState | GroupBeamState) -> GenerateOutput | np.ndarray:
    """Slice the buffer back to transformers' layout (one host sync)."""
    if isinstance(state, BeamState):
        return _finish_beams(prep, state)
    if isinstance(state, GroupBeamState):
        return _finish_groups(prep, state)
    if isinstance(state, SpecState):
        return _finish_speculative(prep, state)
    cur = int(state.cur)
    # slice on the host: a device slice of a data-dependent width would compile per width
    seqs = np.asarray(state.sequences)[:, int(prep.start):cur]
    cfg = prep.config
    if not cfg.return_dict_in_generate:
        return seqs
    scores = None
    if cfg.output_scores:
        all_scores = np.asarray(state.scores)
        scores = tuple(all_scores[:, i] for i in range(cur - state.prompt_end))
    return GenerateOutput(sequences=seqs, scores=scores)


def _finish_beams(prep: Prepared, state: BeamState) -> GenerateOutput | np.ndarray:
    """transformers' beam outputs: the best ``num_return_sequences`` finished hypotheses
    per row, cut to the longest of them; ``beam_indices`` padded with -1."""
    cfg, nrs = prep.config, prep.config.num_return_sequences
    seqs = np.asarray(state.done_sequences)[:, :nrs]           # [B, nrs, buffer]
    beams = np.asarray(state.done_beams)[:, :nrs]              # [B, nrs, new]
    seqs, beams = seqs.reshape(-1, seqs.shape[-1]), beams.reshape(-1, beams.shape[-1])
    n_new = int((beams != -1).sum(axis=1).max())
    seqs = seqs[:, int(prep.start):state.prompt_end + n_new]
    if not cfg.return_dict_in_generate:
        return seqs
    scores = seq_scores = None
    if cfg.output_scores:
        seq_scores = np.asarray(state.done_scores)[:, :nrs].reshape(-1)
        all_scores = np.asarray(state.scores)
        scores = tuple(all_scores[:, i] for i in range(int(state.cur) - state.prompt_end))
    return GenerateOutput(sequences=seqs, scores=scores, sequences_scores=seq_scores,
                          beam_indices=beams[:, :n_new])


def _finish_speculative(prep: Prepared, state: SpecState) -> GenerateOutput | np.ndarray:
    """Drop the holes: each row's prompt, then its generated tokens, padded at the end."""
    seqs = np.asarray(state.sequences)
    mask = np.asarray(state.attention_mask)
    start, p, cur = int(prep.start), state.prompt_end, int(state.cur)
    rows = [seqs[r, p:cur][mask[r, p:cur] > 0] for r in range(seqs.shape[0])]
    width = max(len(r) for r in rows)
    out = np.full((seqs.shape[0], p - start + width), int(prep.knobs.pad), np.int32)
    out[:, :p - start] = seqs[:, start:p]
    for r, toks in enumerate(rows):
        out[r, p - start:p - start + len(toks)] = toks
    if not prep.config.return_dict_in_generate:
        return out
    passes = int(state.passes)
    accepted = np.asarray(state.accepted)
    return GenerateOutput(sequences=out, speculative={
        "target_passes": passes, "accepted_draft_tokens": accepted,
        "mean_tokens_per_pass": float((accepted.sum() + passes * len(rows)) /
                                      max(1, passes * len(rows)))})


def _finish_groups(prep: Prepared, state: GroupBeamState) -> GenerateOutput | np.ndarray:
    """transformers 4.x group beam search outputs (``beam_indices`` are not tracked)."""
    cfg = prep.config
    seqs, seq_scores = finalize_groups(
        state, num_return_sequences=cfg.num_return_sequences, pad=int(prep.knobs.pad),
        eos=list(cfg.eos_token_ids()) or [int(prep.knobs.pad)], start=int(prep.start),
        max_length_slot=int(prep.max_len), length_penalty=float(cfg.length_penalty))
    if not cfg.return_dict_in_generate:
        return seqs
    scores = None
    if cfg.output_scores:
        all_scores = np.asarray(state.scores)
        scores = tuple(all_scores[:, i] for i in range(int(state.cur) - state.prompt_end))
    return GenerateOutput(sequences=seqs, scores=scores,
                          sequences_scores=seq_scores if cfg.output_scores else None)


def compute_transition_scores(sequences: Any, scores: Sequence[Any],
                              beam_indices: Any = None,
                              normalize_logits: bool = False) -> np.ndarray:
    """Per-token scores of the generated tokens, like transformers' method of that name.

    sequences: [rows, prompt + new]; scores: ``new`` arrays [batch * beams, vocab];
    beam_indices: [rows, new] (-1 padded) for beam outputs, None otherwise.
    Returns float32 [rows, new] (0 where ``beam_indices`` is -1).
    """
    seqs = np.asarray(sequences)
    stacked = np.stack([np.asarray(x, np.float32) for x in scores])   # [new, beams, vocab]
    steps, n_beams, vocab = stacked.shape
    if normalize_logits:
        stacked = np.asarray(jax.nn.log_softmax(stacked, axis=-1))
    if beam_indices is None:
        beam_indices = np.broadcast_to(np.arange(n_beams)[:, None], (n_beams, steps))
    beam_indices = np.asarray(beam_indices)
    pad = beam_indices < 0
    width = int((~pad).sum(-1).max())
    beam = np.where(pad, 0, beam_indices)[:, :width]
    tokens = seqs[:, seqs.shape[1] - width:]
    step = np.arange(width)[None, :]
    out = stacked[step, beam, tokens]
    return np.where(pad[:, :width], 0.0, out).astype(np.float32)


def generate(model: Any, params: Any, input_ids: Any, attention_mask: Any = None, *,
             config: GenerationConfig | None = None,
             logits_processor: Sequence[Any] | None = None,
             stopping_criteria: Sequence[Any] | None = None, rng: Any = None,
             strict: bool = True, prefix_allowed_tokens_fn: Callable[..., Any] | None = None,
             negative_prompt_ids: Any = None, negative_prompt_attention_mask: Any = None,
             tokenizer: Any = None, streamer: Any = None, assistant_model: Any = None,
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
    Returns numpy int32 sequences [batch * num_return_sequences, length + new], or a
    ``GenerateOutput`` when ``return_dict_in_generate=True``.
    """
    t0 = time.perf_counter()
    if streamer is not None and (kwargs.get("num_beams") or 1) > 1:
        raise ValueError("streamer= works with greedy decoding and sampling, not with "
                         "num_beams > 1 (as in transformers)")
    prep = prepare(model, input_ids, attention_mask, config=config,
                   logits_processor=logits_processor, stopping_criteria=stopping_criteria,
                   rng=rng, strict=strict, params=params,
                   prefix_allowed_tokens_fn=prefix_allowed_tokens_fn,
                   negative_prompt_ids=negative_prompt_ids,
                   negative_prompt_attention_mask=negative_prompt_attention_mask,
                   tokenizer=tokenizer, assistant_model=assistant_model, **kwargs)
    if streamer is not None and prep.spec.num_beams > 1:
        raise ValueError("streamer= works with greedy decoding and sampling, not with "
                         "num_beams > 1 (as in transformers)")
    state = start(prep, params)
    return finish(prep, run_to_end(prep, params, state, t0, streamer))
