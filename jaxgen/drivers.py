"""Drivers of the decode loop, generic over strategies: one call, chunks, streaming.

``run_to_end`` finishes a prefilled state in one ``run_steps`` call, or in chunks when a
time limit, a clock-reading processor or a streamer needs the host between steps.
``chunks`` is the only host interaction of a chunked run (one ``run_steps`` per chunk);
``Frontier`` copies only the new tokens of each chunk to the host.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.decoding.loop import run_steps, window
from jaxgen.decoding.output import host
from jaxgen.decoding.protocol import Request
from jaxgen.decoding.state import DecodeState


@partial(jax.jit, static_argnums=0)
def _running(strategy: Any, state: DecodeState) -> jax.Array:
    return strategy.running(state)


def running(strategy: Any, state: DecodeState) -> bool:
    """``strategy.running(state)`` on the host (one small jitted call)."""
    return bool(host(_running(strategy, state)))


def chunks(request: Request, params: Any, state: DecodeState, t0: float
           ) -> Iterator[DecodeState]:
    """Run the loop ``request.chunk`` steps at a time, yielding the state after each chunk.

    Between chunks the host sets ``loop.elapsed`` (seconds since ``t0``) and, once
    ``max_time`` has passed, applies ``strategy.time_up`` (no more tokens for greedy /
    sampling, one last step where every candidate counts as stopped for beams:
    transformers' ``MaxTimeCriteria``). On a mesh spanning processes they all use the
    largest elapsed time, so they stop at the same chunk.
    """
    strategy = request.strategy
    n = np.asarray(request.chunk, np.int32)
    while running(strategy, state):
        elapsed = time.perf_counter() - t0
        if request.hosts is not None and (request.max_time is not None or request.uses_clock):
            elapsed = request.hosts.seconds(elapsed)
        if request.max_time is not None and elapsed > request.max_time:
            state = strategy.time_up(state)
            if not running(strategy, state):
                break
        state = run_steps(strategy, params,
                          state.replace_loop(elapsed=jnp.asarray(elapsed, jnp.float32)), n)
        yield state
    yield state


class Frontier:
    """The tokens every row has settled since the last call, ``[rows, n]``.

    A row's tokens are settled up to its cursor; a finished row is padded after it (as
    in the final output), so all rows move together up to the slowest unfinished one.
    Only a window of ``chunk * tokens_per_step`` slots is copied per chunk.
    """

    def __init__(self, request: Request, state: DecodeState):
        self.shown = state.loop.prompt_end
        self.width = max(1, request.chunk * request.strategy.tokens_per_step)

    def _edge(self, state: DecodeState) -> int:
        loop = state.loop
        cur = np.broadcast_to(host(loop.cur), (loop.rows,))
        done = host(loop.done) | (cur >= int(host(loop.max_len)))
        return int(cur.max() if done.all() else cur[~done].min())

    def new_tokens(self, state: DecodeState) -> np.ndarray:
        edge = self._edge(state)
        parts = []
        while self.shown < edge:
            win = host(window(state.loop.sequences, jnp.int32(self.shown), self.width))
            take = min(self.width, edge - self.shown)
            parts.append(win[:, :take])
            self.shown += take
        if not parts:
            return np.zeros((state.loop.rows, 0), np.int32)
        return np.concatenate(parts, axis=1)


def run_to_end(request: Request, params: Any, state: DecodeState, t0: float,
               streamer: Any = None) -> DecodeState:
    """Finish the loop (see the module docstring); ``streamer`` gets transformers' calls:
    ``put(prompt ids)``, ``put(new tokens [rows, n])`` per chunk, ``end()``."""
    strategy = request.strategy
    if request.max_time is None and not request.uses_clock and streamer is None:
        return run_steps(strategy, params, state, np.asarray(request.max_new_tokens, np.int32))
    frontier = Frontier(request, state)
    if streamer is not None:
        streamer.put(request.own(request.input_ids[:, request.start:]))
        streamer.put(request.own(frontier.new_tokens(state)))
    last = state
    for last in chunks(request, params, state, t0):
        if streamer is not None:
            new = request.own(frontier.new_tokens(last))
            if new.shape[1]:
                streamer.put(new)
    if streamer is not None:
        streamer.end()
    return last
