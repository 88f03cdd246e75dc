"""``jaxgen.generate_batch``: many prompts through one `Engine`, results in input order.

    results = jaxgen.generate_batch(lm, prompts, max_new_tokens=128)
    results[i].tokens, results[i].text, results[i].finish_reason

Every request is checked first (a bad one gets ``finish_reason="error"`` and its message,
the others run); the engine is then sized to fit them all (``max_length``, eos and stop
string slots, ``k_max``; the penalty processors only when a request uses one), so nothing
is refused for size and nothing unused runs in the decode step.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxgen import distributed, sharding
from jaxgen.config import GenerationConfig
from jaxgen.engine.engine import Engine
from jaxgen.engine.handle import Result
from jaxgen.engine.requests import Prepared, prepare
from jaxgen.inputs import split_kwargs
from jaxgen.ops import bucket, is_int
from jaxgen.processors.sampling import bucket_k

#: Default number of slots (rounded down to the number of requests, as a power of two).
DEFAULT_SLOTS = 16


def _request(entry: Any, config: GenerationConfig | None, kwargs: dict[str, Any],
             seed: int) -> tuple[GenerationConfig | None, dict[str, Any], int]:
    """``(config, fields, seed)`` of one request from its ``configs`` entry."""
    if entry is None:
        return config, kwargs, seed
    if isinstance(entry, GenerationConfig):
        return entry, kwargs, seed
    if isinstance(entry, Mapping):
        fields = {**kwargs, **entry}
        return config, fields, fields.pop("seed", seed)
    raise TypeError(f"configs entries must be GenerationConfig, dict or None, got "
                    f"{type(entry).__name__}")


def _sizes(preps: list[Prepared]) -> dict[str, Any]:
    """Engine sizes that fit every request."""
    cfgs = [p.config for p in preps]
    strings = [[s] if isinstance(s, str) else list(s) for s in
               (c.stop_strings for c in cfgs) if s is not None]
    top_k = [c.top_k for c in cfgs if c.do_sample]
    penalties = any(getattr(c, n) != d for c in cfgs for n, d in (
        ("repetition_penalty", 1.0), ("presence_penalty", 0.0), ("frequency_penalty", 0.0)))
    return {"max_length": -(-max(p.total for p in preps) // 64) * 64, "penalties": penalties,
            "k_max": max([64] + [bucket_k(k) for k in top_k]),
            "max_eos": max([4] + [bucket(len(c.eos_token_ids()), 4) for c in cfgs]),
            "max_stop_strings": max([0] + [len(s) for s in strings]),
            "max_stop_bytes": max([8] + [len(x.encode()) for s in strings for x in s]),
            "logprobs": any(c.output_scores for c in cfgs)}


def generate_batch(lm: Any, inputs: Sequence[Any], config: GenerationConfig | None = None, *,
                   configs: Sequence[Any] | None = None, max_slots: int | None = None,
                   progress: bool = True, seed: int = 0,
                   engine_options: Mapping[str, Any] | None = None,
                   **kwargs: Any) -> list[Result]:
    """Generate for every input with continuous batching; a `Result` per input, in order.

    inputs: strings, token-id lists or chat-message lists.
    config / kwargs: as ``lm.generate`` (the model's generation_config merged with
        ``kwargs`` when ``config`` is None). configs: one entry per input: a
        GenerationConfig (replaces ``config``), a dict of fields (and ``"seed"``) on top
        of ``kwargs``, or None.
    seed: request ``i`` samples with seed ``seed + i`` unless its dict gives one; it then
        gets the tokens of ``lm.generate(prompt alone, rng=that seed)``.
    max_slots: decode slots (default: 16, fewer for fewer inputs).
    progress: a tqdm bar of requests done and tokens/s. engine_options: more `Engine`
        arguments (block_size, prefill_chunk, steps_per_round, prefix_caching, ...).
    On a mesh spanning processes every process passes the same inputs and settings
    (checked by `jaxgen.distributed.agree`) and gets every result.
    """
    results: list[Result | None] = [None] * len(inputs)

    def keep(i: int, r: Result) -> None:
        results[i] = r

    run_requests(lm, inputs, config, configs=configs, max_slots=max_slots, progress=progress,
                 seed=seed, engine_options=engine_options, on_result=keep, **kwargs)
    return [r for r in results if r is not None]


def run_requests(lm: Any, inputs: Sequence[Any], config: GenerationConfig | None = None, *,
                 configs: Sequence[Any] | None = None, max_slots: int | None = None,
                 progress: bool = True, seed: int = 0,
                 engine_options: Mapping[str, Any] | None = None,
                 on_result: Callable[[int, Result], Any], labels: Sequence[str] | None = None,
                 **kwargs: Any) -> Engine | None:
    """`generate_batch` calling ``on_result(i, result)`` as each request finishes (bad
    requests first; their errors start with ``labels[i]``, default ``"request i"``);
    returns the engine it used (None if no request was valid)."""
    if max_slots is not None and (not is_int(max_slots) or max_slots < 1):
        raise ValueError(f"max_slots must be an int >= 1, got {max_slots!r}")
    split_kwargs(kwargs)                                       # unknown names: TypeError
    if distributed.spans_processes(sharding.params_mesh(lm.params)):  # same call everywhere
        distributed.agree({"inputs": list(inputs), "config": config, "configs": configs,
                           "max_slots": max_slots, "seed": seed, "kwargs": kwargs,
                           "engine_options": engine_options})
    if configs is not None and len(configs) != len(inputs):
        raise ValueError(f"configs has {len(configs)} entries for {len(inputs)} inputs")
    preps: dict[int, Prepared] = {}
    for i, prompt in enumerate(inputs):
        entry = None if configs is None else configs[i]
        try:
            cfg, fields, s = _request(entry, config, kwargs, seed + i)
            preps[i] = prepare(lm, prompt, cfg, seed=s, **fields)
        except (ValueError, TypeError) as e:
            label = f"request {i}" if labels is None else labels[i]
            on_result(i, Result(tokens=[], text=None, finish_reason="error",
                                error=f"{label}: {e}"))
    if not preps:
        return None
    slots = max_slots or min(DEFAULT_SLOTS, bucket(len(preps), 1))
    engine = Engine(lm, max_slots=slots, **{**_sizes(list(preps.values())),
                                            **(engine_options or {})})
    # longest first: the last requests to start are the shortest, so the tail of the run
    # (slots idle while the last requests finish) and the chunks a step reads shrink together
    order = sorted(preps, key=lambda i: -preps[i].total)
    handles = {i: engine.submit(engine.prepare(preps[i])) for i in order}
    _drive(engine, handles, progress, on_result)
    return engine


def _drive(engine: Engine, handles: dict[int, Any], progress: bool,
           on_result: Callable[[int, Result], Any]) -> None:
    """Run the engine until every handle is done, with a progress bar."""
    from tqdm.auto import tqdm

    t0, pending = time.perf_counter(), dict(handles)
    with tqdm(total=len(handles), unit="req", disable=not progress, desc="generate") as bar:
        while pending:
            busy = engine.step()
            for i in [i for i, h in pending.items() if h.done]:
                on_result(i, pending.pop(i).result())
                bar.update(1)
            rate = engine.counters["tokens"] / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix_str(f"{rate:.0f} tok/s", refresh=False)
            if not busy and pending:
                raise RuntimeError("the engine stopped with requests unfinished")


def result_dict(r: Result) -> dict[str, Any]:
    """A `Result` as a JSON-ready dict (None fields dropped)."""
    return {k: v for k, v in dataclasses.asdict(r).items() if v is not None}
