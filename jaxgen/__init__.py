"""jaxgen: text generation for JAX/Flax with the Hugging Face ``generate()`` vocabulary."""

from jaxgen import models, processors, stopping
from jaxgen.chat import ChatSession
from jaxgen.config import GenerationConfig
from jaxgen.decoding import (
    DecodeState,
    DisjunctiveConstraint,
    LoopState,
    PhrasalConstraint,
    Strategy,
    prefill,
    run_steps,
)
from jaxgen.engine import Engine, Handle, Result, generate_batch
from jaxgen.generate import GenerateOutput, compute_transition_scores, generate
from jaxgen.lm import LM, load, load_draft
from jaxgen.stream import TextStreamer, stream

__version__ = "0.1.0"

__all__ = [
    "LM", "ChatSession", "DecodeState", "DisjunctiveConstraint", "GenerateOutput",
    "GenerationConfig", "LoopState", "PhrasalConstraint", "Strategy",
    "compute_transition_scores", "generate", "load", "load_draft", "models", "prefill",
    "processors", "run_steps", "stopping", "stream", "TextStreamer",
    "Engine", "Handle", "Result", "generate_batch",
]
