"""The Strategy protocol and the host-side ``Request`` every driver hands it.

A strategy is a frozen, hashable dataclass: its fields are the static settings that key
the compile cache (number of beams, draft length, ...). Four methods make a strategy::

    init(model, params, first_logits, loop, aux) -> DecodeState   # after the prefill
    step(model, params, state) -> DecodeState                     # one iteration, >= 1 token
    running(state) -> Bool[Array, ""]                             # the loop condition
    finalize(state, request) -> GenerateOutput                    # host side, one sync

Everything else has a default in ``Strategy`` below. The drivers (``generate`` in one
call, chunked for ``max_time`` / streaming, the engine) only ever call these methods,
so a strategy written outside the package works in every driver::

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Greedy(jaxgen.Strategy):
        def init(self, model, params, logits, loop, aux):
            return DecodeState(loop=advance(loop, logits, do_sample=False))
        def step(self, model, params, state):
            logits, cache = forward_last(params, state.loop)
            return DecodeState(loop=advance(state.loop.replace(cache=cache), logits, False))
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool

from jaxgen.decoding.output import GenerateOutput, host, score_steps
from jaxgen.decoding.past import past_of
from jaxgen.decoding.record import outputs
from jaxgen.decoding.state import DecodeState, Knobs, LoopState, all_done


@dataclasses.dataclass
class Request:
    """A validated, bucketed ``generate`` call: the host-side half every driver shares."""

    model: Any
    strategy: Any
    config: Any                 # the GenerationConfig in force
    input_ids: np.ndarray       # [rows, P] int32: expanded rows, left-padded to the bucket
    attention_mask: np.ndarray  # [rows, P]
    knobs: Knobs
    rng: Any                    # one typed key (split into row streams by the prefill)
    start: int                  # P - the caller's width (bucket padding)
    max_new_tokens: int
    new_slots: int              # buffer slots after the prompt bucket (a bucket)
    aux: Any = None             # arrays the strategy needs besides params (draft params)
    max_time: float | None = None   # host-side time limit (seconds)
    chunk: int = 8                  # steps per run_steps call when driven in chunks
    uses_clock: bool = False        # a processor reads ctx.elapsed: drive in chunks
    hosts: Any = None               # `jaxgen.distributed.Hosts` when the mesh spans processes
    record: tuple[str, ...] = ()    # outputs to record (`jaxgen.decoding.record`)
    past: Any = None                # `past.Carry` when continuing from past_key_values
    feed: int | None = None         # with ``past``: prompt slots the prefill feeds

    @property
    def prompt_end(self) -> int:
        return self.input_ids.shape[1]

    @property
    def fed(self) -> int:
        """The first prompt slot the prefill feeds (where step 0's outputs begin)."""
        return self.start if self.feed is None else self.prompt_end - self.feed

    @property
    def max_len(self) -> int:
        """The slot generation stops before (``P + max_new_tokens``)."""
        return self.prompt_end + self.max_new_tokens

    def own(self, x: Any) -> Any:
        """This process's rows of a global host result when each process passed its own
        rows (`jaxgen.distributed.Hosts.own`); else ``x``."""
        return x if self.hosts is None else self.hosts.own(x)


class Strategy:
    """Base class of strategies: defaults for everything but ``init`` and ``step``.

    Subclasses are ``@dataclasses.dataclass(frozen=True, kw_only=True)``.
    """

    #: tokens can be shown as they come (beam hypotheses change until the end)
    streamable: ClassVar[bool] = True
    #: ``LoopState.cur`` is per row ([rows]) instead of one slot for the batch
    cursor_per_row: ClassVar[bool] = False
    #: model outputs ``init`` needs from the prefill (then called with ``extras=``)
    needs: ClassVar[tuple[str, ...]] = ()
    #: what it can record: ``"logits"``, ``"hidden_states"``, ``"attentions"``
    outputs: ClassVar[frozenset[str]] = frozenset()
    #: it can start from ``past_key_values`` (else the whole prompt is prefilled)
    continues: ClassVar[bool] = True

    @property
    def tokens_per_step(self) -> int:
        """Most tokens one ``step`` writes per row (bounds the streaming window)."""
        return 1

    def check(self, request: Request) -> None:
        """Raise ValueError (naming the field) for settings this strategy cannot honour."""

    def rows_per_prompt(self, config: Any) -> int:
        """How many rows each prompt becomes (beams, sampled return sequences)."""
        return config.num_return_sequences or 1

    def buffer_slots(self, max_new_tokens: int) -> int:
        """Buffer slots needed after the prompt for ``max_new_tokens`` new tokens."""
        return max_new_tokens

    def init(self, model: Any, params: Any, first_logits: Any, loop: LoopState,
             aux: Any) -> DecodeState:
        raise NotImplementedError

    def step(self, model: Any, params: Any, state: DecodeState) -> DecodeState:
        raise NotImplementedError

    def running(self, state: DecodeState) -> Bool[Array, ""]:
        """True while some row is unfinished and has a slot left."""
        return ~all_done(state.loop)

    def time_up(self, state: DecodeState) -> DecodeState:
        """The state once ``max_time`` has passed: every row finished."""
        return state.replace_loop(done=jnp.ones_like(state.loop.done))

    def finalize(self, state: DecodeState, request: Request) -> GenerateOutput:
        """transformers' layout: each row's prompt and its tokens, padded at the end."""
        return finalize_rows(state, request)


def finalize_rows(state: DecodeState, request: Request, cache: Any = None,
                  **extra: Any) -> GenerateOutput:
    """Rows of the buffer from the caller's first slot to each row's cursor, padded with
    pad at the end (one cursor for the batch: no padding), plus the recorded scores and
    outputs and the cache to continue from (``cache`` replaces ``loop.cache``)."""
    loop = state.loop
    seqs = host(loop.sequences)
    cur = np.broadcast_to(host(loop.cur), (seqs.shape[0],))
    start, width = request.start, int(cur.max())
    out = seqs[:, start:width].copy()
    ends = cur[:, None] - start
    out[np.arange(width - start)[None, :] >= ends] = int(request.knobs.pad)
    steps = width - loop.prompt_end
    if request.config.return_dict_in_generate and request.hosts is None:
        extra["past_key_values"] = past_of(loop, start, out, cache)
    return GenerateOutput(sequences=out, scores=score_steps(loop.scores, steps),
                          **recorded(loop, request, steps), **extra)


def recorded(loop: LoopState, request: Request, steps: int) -> dict[str, Any]:
    """The recorded outputs of ``steps`` generation steps, as `GenerateOutput` fields."""
    return outputs(loop.trace, steps=steps, start=request.start, fed=request.fed,
                   prompt_end=loop.prompt_end)
