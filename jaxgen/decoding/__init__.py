"""Decoding strategies as jit-compiled functions over fixed-shape state pytrees."""

from jaxgen.decoding.loop import DecodeSpec, is_running, prefill, run_steps
from jaxgen.decoding.state import DecodeState, Knobs

__all__ = ["DecodeSpec", "DecodeState", "Knobs", "is_running", "prefill", "run_steps"]
