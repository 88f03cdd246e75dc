"""``jaxgen.Engine``: continuous batching over a fixed set of decode slots.

    engine = jaxgen.Engine(lm, max_slots=16, max_length=1024)
    h = engine.submit("Once upon a time", max_new_tokens=64, do_sample=True, seed=3)
    print(h.result().text)

A fixed number of slots share one paged KV cache (`jaxgen.models.paged`); the state is
one ``DecodeState`` over the slots, each with its own cursor, limits, rng stream and
settings (`jaxgen.engine.settings`). `Engine.step` is one host round of the
`jaxgen.engine.scheduler`: prefill and insert waiting requests, then up to
``steps_per_round`` decode steps in one jitted ``run_steps`` of `SlotSample`, then
stream the new tokens and evict finished requests. Requests come and go without
recompiles: one compile per prompt-chunk width, one for the decode round, one for insert.

Threads: ``submit``, ``cancel`` and reading handles are safe from any thread; one thread
drives the engine, either `start` (a background loop) or whoever waits on a handle.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from jaxgen.decoding.loop import run_steps
from jaxgen.decoding.output import host
from jaxgen.engine import device
from jaxgen.engine.blocks import BlockManager
from jaxgen.engine.handle import Handle, Result
from jaxgen.engine.requests import Prepared, fit, prepare
from jaxgen.engine.scheduler import Chunk, Running, Scheduler
from jaxgen.engine.settings import Limits
from jaxgen.engine.strategy import FINISH_REASONS, SlotSample
from jaxgen.inputs import max_positions
from jaxgen.models.paged import block_bytes
from jaxgen.ops import bucket, is_int
from jaxgen.stopping import StopStringMatcher


def _count(name: str, value: Any, minimum: int = 1) -> int:
    if not is_int(value) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _stop_table(lm: Any, limits: Limits) -> tuple[np.ndarray, np.ndarray] | None:
    """The tokenizer's byte table for stop strings (once per engine), or None."""
    if not limits.max_stop_strings or lm.tokenizer is None:
        return None
    m = StopStringMatcher.create(["x"], lm.tokenizer)
    return m.table, m.lengths


def _pairs(top: tuple[np.ndarray, np.ndarray], slot: int, n: int
           ) -> list[list[tuple[int, float]]]:
    """The first ``n`` tokens' best ``(token id, logprob)`` of one slot (host arrays
    ``[slots, width, n_top]``)."""
    values, ids = top
    return [list(zip(ids[slot, i].tolist(), values[slot, i].tolist(), strict=True))
            for i in range(n)]


class Engine:
    """Continuous batching for ``lm`` (see the module docstring).

    max_slots: requests decoded at once. max_length: prompt + new tokens of one request
    (default: the model's max_position_embeddings, else 2048), rounded up to a block.
    block_size / num_blocks: the paged cache (default: enough blocks for every slot at
    max_length, so memory never blocks admission; fewer make requests wait).
    prefill_chunk: widest prompt chunk (narrower chunks are powers of two >= 16).
    prefill_budget: prompt tokens prefilled per round while other slots decode.
    steps_per_round: decode steps between host rounds. prefix_caching: share the blocks
    of equal prompt prefixes. logprobs: record per-token logprobs (``output_scores``)
    and, when ``top_logprobs`` > 0, that many best ``(token, logprob)`` per token
    (`Result.top_logprobs`, the OpenAI server's ``top_logprobs``). k_max, max_eos,
    max_stop_strings, max_stop_bytes, penalties, max_logit_bias: see `Limits`.
    """

    def __init__(self, lm: Any, *, max_slots: int = 16, max_length: int | None = None,
                 block_size: int = 16, num_blocks: int | None = None,
                 prefill_chunk: int = 256, prefill_budget: int | None = None,
                 steps_per_round: int = 16, prefix_caching: bool = True, logprobs: bool = False,
                 k_max: int = 64, max_eos: int = 4, max_stop_strings: int = 4,
                 max_stop_bytes: int = 32, penalties: bool = True, top_logprobs: int = 20,
                 max_logit_bias: int = 300):
        self.lm, self.slots = lm, _count("max_slots", max_slots)
        self.block_size = _count("block_size", block_size)
        default = max_positions(lm.model) or 2048
        length = _count("max_length", max_length if max_length is not None else default, 2)
        self.max_length = -(-length // block_size) * block_size
        max_blocks = self.max_length // block_size
        blocks = _count("num_blocks", num_blocks, 2) if num_blocks is not None \
            else self.slots * max_blocks + 1
        self.chunk = _count("prefill_chunk", prefill_chunk)
        self.steps = _count("steps_per_round", steps_per_round)
        budget = _count("prefill_budget", prefill_budget) if prefill_budget is not None \
            else 4 * self.chunk
        self.limits = Limits(k_max=k_max, max_eos=max_eos, max_stop_strings=max_stop_strings,
                             max_stop_bytes=max_stop_bytes, penalties=penalties,
                             max_logit_bias=max_logit_bias)
        self.logprobs = bool(logprobs)
        self.top_logprobs = _count("top_logprobs", top_logprobs, 0) if self.logprobs else 0
        self.strategy = SlotSample(logprobs=self.logprobs)
        gen = lm.generation_config
        self.pad = int(gen.pad_token_id if gen.pad_token_id is not None else
                       (gen.eos_token_ids() or (0,))[0])
        self.state = device.empty_state(
            lm.model, slots=self.slots, length=self.max_length, blocks=blocks,
            block_size=block_size, limits=self.limits, stop_table=_stop_table(lm, self.limits),
            pad=self.pad, logprobs=self.logprobs, top_logprobs=self.top_logprobs)
        self.scheduler = Scheduler(self.slots, BlockManager(blocks, block_size,
                                                            prefix_caching=prefix_caching),
                                   max_blocks=max_blocks, chunk=self.chunk, budget=budget)
        self._lock = threading.RLock()             # one driver at a time
        self._inbox: list[Handle] = []             # submitted, not yet seen by a round
        self._inbox_lock = threading.Lock()
        self._event = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.block_bytes = block_bytes(self.state.loop.cache)
        self.counters = {"rounds": 0, "decode_steps": 0, "tokens": 0, "prefill_tokens": 0}

    # ------------------------------------------------------------------ requests

    def prepare(self, prompt: Any, config: Any = None, *, seed: int = 0, **fields: Any
                ) -> Prepared:
        """Check one request against this engine (ValueError / TypeError naming the
        problem); no device work. ``prompt`` may be a `Prepared` (then it is only fitted)."""
        prep = prompt if isinstance(prompt, Prepared) else prepare(
            self.lm, prompt, config, seed=seed, **fields)
        if prep.config.output_scores and not self.logprobs:
            raise ValueError("GenerationConfig.output_scores=True needs an engine built with "
                             "logprobs=True")
        return fit(prep, self.limits, self.max_length)

    def submit(self, prompt: Any, config: Any = None, *, seed: int = 0,
               on_tokens: Callable[[list[int]], Any] | None = None, **fields: Any) -> Handle:
        """Queue a request (a string, token ids or chat messages) with ``config`` /
        GenerationConfig ``fields`` and its ``seed``; returns its `Handle`. Raises at once
        for a bad request; the engine and other requests are untouched."""
        prep = self.prepare(prompt, config, seed=seed, **fields)
        handle = Handle(self, prep, on_tokens)
        with self._inbox_lock:
            self._inbox.append(handle)
        self._wake()
        return handle

    # ------------------------------------------------------------------ driving

    def step(self) -> bool:
        """One host round (see `jaxgen.engine.scheduler`); False when there is nothing
        to do."""
        with self._lock:
            sched = self.scheduler
            with self._inbox_lock:
                new, self._inbox = self._inbox, []
            sched.waiting.extend((h, h.request) for h in new)
            dropped, gone = sched.cancelled()
            for h in dropped:
                self._finish(h, "cancelled")
            stop = np.zeros((self.slots,), bool)
            for r in gone:
                stop[r.slot] = True
                self._finish(r.handle, "cancelled")
            plan = sched.prefill_plan()
            self._prefill(plan)
            for item in plan:      # a slot freed above and refilled now must not stop
                if isinstance(item, Running):
                    stop[item.slot] = False
            for h, message in sched.rejected:
                self._finish(h, "error", error=message)
            sched.rejected.clear()
            if not sched.live():
                return sched.busy
            self._decode(stop)
            return True

    def _prefill(self, plan: list[Chunk | Running]) -> None:
        lm, sched = self.lm, self.scheduler
        for item in plan:
            if isinstance(item, Chunk):
                r = item.running
                width = min(bucket(item.n, 16), self.chunk)
                tokens = np.full((1, width), self.pad, np.int32)
                tokens[0, :item.n] = r.prepared.ids[item.start:item.start + item.n]
                cache = device.prefill_chunk(lm.model, lm.params, self.state.loop.cache,
                                             sched.row_table(item.running), tokens,
                                             np.int32(item.start), np.int32(item.n))
                self.state = self.state.replace_loop(cache=cache)
                self.counters["prefill_tokens"] += item.n
            else:
                self._insert(item)

    def _insert(self, r: Running) -> None:
        prep = r.prepared
        tokens = np.full((self.max_length,), self.pad, np.int32)
        tokens[:len(prep.ids)] = prep.ids
        self.state = device.insert(self.state, np.int32(r.slot), tokens,
                                   np.int32(prep.total), prep.row, jax.random.key(prep.seed),
                                   limits=self.limits)

    def _decode(self, stop: np.ndarray) -> None:
        sched = self.scheduler
        live = sched.live()
        active = np.zeros((self.slots,), bool)
        first = np.zeros((self.slots,), np.int32)
        for r in live:
            active[r.slot], first[r.slot] = True, r.cur
        # with requests waiting, end the round when a slot frees so it is refilled soon
        self.state = device.schedule(self.state, sched.table.copy(), stop, active,
                                     np.bool_(bool(sched.waiting)))
        self.state = run_steps(self.strategy, self.lm.params, self.state,
                               np.asarray(self.steps, np.int32))
        tokens, logprobs, top, cur, done, reason = jax.tree.map(  # multi-host: gathered
            host, device.readback(self.state, first, width=self.steps))
        self.counters["rounds"] += 1
        self.counters["decode_steps"] += int((cur - first)[active].max(initial=0))
        for r in live:
            n = int(cur[r.slot]) - r.cur
            r.cur += n
            self.counters["tokens"] += n
            r.handle._push(tokens[r.slot, :n].tolist(),
                           None if logprobs is None else logprobs[r.slot, :n].tolist(),
                           None if top is None else _pairs(top, r.slot, n))
            if done[r.slot]:
                sched.evict(r)
                self._finish(r.handle, FINISH_REASONS.get(int(reason[r.slot]), "length"))

    def _finish(self, handle: Handle, reason: str, error: str | None = None) -> None:
        prep = handle.request
        text = None
        if prep.text and self.lm.tokenizer is not None and reason != "error":
            text = self.lm.tokenizer.decode(handle.tokens, skip_special_tokens=True)
        handle._finish(Result(tokens=list(handle.tokens), text=text, finish_reason=reason,
                              logprobs=list(handle.logprobs) if self.logprobs else None,
                              prompt_tokens=len(prep.ids), error=error,
                              top_logprobs=list(handle.top_logprobs) if self.top_logprobs
                              else None))

    def run(self) -> None:
        """Drive the engine until every submitted request is finished."""
        while self.step():
            pass

    def _pump(self) -> None:
        """Make progress for a waiting reader: a round, or a short sleep when a
        background loop drives the engine."""
        if self.background:
            time.sleep(0.005)
        elif not self.step():
            raise RuntimeError("the engine has nothing to do but a handle is not finished")

    # ------------------------------------------------------------------ background loop

    @property
    def background(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _wake(self) -> None:
        self._event.set()

    def start(self) -> Engine:
        """Drive the engine from a background thread (a server loop) until `stop`."""
        if not self.background:
            self._stopping = False
            self._thread = threading.Thread(target=self._serve, name="jaxgen-engine",
                                            daemon=True)
            self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._stopping:
            if not self.step():
                self._event.wait(0.05)
                self._event.clear()

    def stop(self) -> None:
        """Stop the background loop (requests in flight stay queued)."""
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join()
        self._thread = None

    def __enter__(self) -> Engine:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ figures

    def memory(self) -> dict[str, int]:
        """Cache bytes: the pool, its peak in use, and the contiguous layout's
        ``max_slots x max_length`` for comparison."""
        blocks = self.scheduler.blocks
        per_slot = self.block_bytes // self.block_size
        return {"pool_bytes": len(blocks.refs) * self.block_bytes,
                "peak_bytes": blocks.peak * self.block_bytes,
                "contiguous_bytes": self.slots * self.max_length * per_slot,
                "prefix_cached_tokens": blocks.cached_tokens}
