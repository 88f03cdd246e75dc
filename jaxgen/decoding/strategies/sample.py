"""Greedy decoding and multinomial sampling: one token per row per step.

Greedy is the argmax of the processed logits. Sampling runs the warpers and draws with
one random stream per row (``fold_in(row_key, step)``), so a row's sample does not
depend on the other rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from jaxgen.decoding.kernel import advance, feed
from jaxgen.decoding.protocol import Strategy
from jaxgen.decoding.record import FLAGS
from jaxgen.decoding.state import DecodeState, LoopState


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sample(Strategy):
    """Greedy (``do_sample=False``) or sampling (``do_sample=True``) decoding."""

    do_sample: bool = False
    outputs: ClassVar[frozenset[str]] = frozenset(FLAGS)

    def init(self, model: Any, params: Any, first_logits: Any, loop: LoopState,
             aux: Any) -> DecodeState:
        return DecodeState(loop=advance(loop, first_logits, self.do_sample))

    def step(self, model: Any, params: Any, state: DecodeState) -> DecodeState:
        logits, loop, _ = feed(params, state.loop)
        return DecodeState(loop=advance(loop, logits, self.do_sample))
