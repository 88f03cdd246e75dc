"""Streaming: run the decode loop in chunks and yield text as it is produced."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from jaxgen.decoding import is_running, run_steps
from jaxgen.generate import prepare, start


def stream_tokens(lm: Any, inputs: dict[str, Any], *, chunk: int = 8, rng: Any = None,
                  **kwargs: Any) -> Iterator[str]:
    """Yield the text of row 0 piece by piece (batch of one prompt).

    Runs ``run_steps`` ``chunk`` tokens at a time; a piece is emitted only once it
    decodes to complete characters (no dangling UTF-8 replacement character).
    """
    prep = prepare(lm.model, inputs["input_ids"], inputs.get("attention_mask"),
                   config=lm.generation_config, rng=rng, **kwargs)
    if prep.input_ids.shape[0] != 1:
        raise ValueError("stream_tokens streams one sequence; got a batch of "
                         f"{prep.input_ids.shape[0]} rows (num_return_sequences must be 1)")
    state = start(prep, lm.params)
    shown = ""
    n = np.asarray(chunk, np.int32)
    while True:
        text = _text(lm, state)
        if not text.endswith("\ufffd") and len(text) > len(shown):
            yield text[len(shown):]
            shown = text
        if not bool(is_running(state)):
            break
        state = run_steps(prep.spec, lm.params, state, n)
    text = _text(lm, state)
    if len(text) > len(shown):
        yield text[len(shown):]


def _text(lm: Any, state: Any) -> str:
    # slice on the host: a device slice of a changing width would compile per width
    ids = np.asarray(state.sequences)[0, state.prompt_end:int(state.cur)]
    return lm.tokenizer.decode(ids, skip_special_tokens=True)
