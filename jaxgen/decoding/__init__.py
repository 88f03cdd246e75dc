"""Decoding strategies as jit-compiled functions over fixed-shape state pytrees."""

from jaxgen.decoding import kernel
from jaxgen.decoding.loop import prefill, run_steps
from jaxgen.decoding.output import GenerateOutput
from jaxgen.decoding.past import Past
from jaxgen.decoding.protocol import Request, Strategy
from jaxgen.decoding.state import DecodeState, Knobs, LoopState
from jaxgen.decoding.strategies import (
    BeamSearch,
    ConstrainedBeamSearch,
    ContrastiveSearch,
    DisjunctiveConstraint,
    DoLa,
    GroupBeamSearch,
    PhrasalConstraint,
    Sample,
    Speculative,
    strategy_for,
)

__all__ = [
    "BeamSearch", "ConstrainedBeamSearch", "ContrastiveSearch", "DecodeState",
    "DisjunctiveConstraint", "DoLa", "GenerateOutput", "GroupBeamSearch", "Knobs", "LoopState",
    "Past", "PhrasalConstraint", "Request", "Sample", "Speculative", "Strategy", "kernel",
    "prefill", "run_steps", "strategy_for",
]
