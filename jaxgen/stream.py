"""Streaming: run the decode loop in chunks and yield text as it is produced.

``stream(lm, "Once upon a time", max_new_tokens=50)`` yields ``str`` pieces; for a batch
(a list of prompts or tokenized inputs with several rows) it yields one ``list[str]`` per
chunk, a piece per row ("" when a row has nothing new). Pieces follow transformers'
``TextStreamer``: text is released at word boundaries, at newlines and at CJK characters,
never in the middle of a UTF-8 character; the concatenated pieces of a row equal the
decoded output of ``generate`` for the same config and seed.
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from jaxgen.drivers import Frontier, chunks
from jaxgen.generate import finish, prepare, start


def _is_cjk(cp: int) -> bool:
    return any(lo <= cp <= hi for lo, hi in (
        (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
        (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)))


class TextStreamer:
    """transformers' ``TextStreamer`` protocol (``put(ids)``, ``end()``) for one row.

    Pass it as ``generate(..., streamer=TextStreamer(tok))`` to print text as it comes;
    subclass ``on_finalized_text`` to do something else with the pieces.
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, **decode_kwargs: Any):
        self.tokenizer, self.skip_prompt = tokenizer, skip_prompt
        self.decode_kwargs = decode_kwargs
        self.token_cache: list[int] = []
        self.print_len = 0
        self.next_tokens_are_prompt = True

    def put(self, value: Any) -> None:
        value = np.asarray(value)
        if value.ndim > 1 and value.shape[0] > 1:
            raise ValueError("TextStreamer streams one row; use jaxgen.stream for batches")
        value = value.reshape(-1)
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.on_finalized_text(self._push(value.tolist()))

    def _push(self, ids: list[int]) -> str:
        self.token_cache.extend(ids)
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if text.endswith("\ufffd"):           # an incomplete UTF-8 character: wait
            return ""
        if text.endswith("\n"):
            out = text[self.print_len:]
            self.token_cache = self.token_cache[-1:]
            self.print_len = len(self.tokenizer.decode(self.token_cache, **self.decode_kwargs))
        elif text and _is_cjk(ord(text[-1])):
            out = text[self.print_len:]
            self.print_len += len(out)
        elif all(c.isspace() or unicodedata.category(c)[0] in "LMN"
                 for c in text[self.print_len:]) and text[self.print_len:].endswith(" "):
            out = text[self.print_len:]
            self.print_len += len(out)
        else:
            out = text[self.print_len:text.rfind(" ") + 1]
            self.print_len += len(out)
        return out

    def _flush(self) -> str:
        out = ""
        if self.token_cache:
            out = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)[self.print_len:]
        self.token_cache, self.print_len = [], 0
        self.next_tokens_are_prompt = True
        return out

    def end(self) -> None:
        self.on_finalized_text(self._flush(), stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        print(text, flush=True, end="" if not stream_end else None)


def stream(lm: Any, prompt_or_inputs: Any, *, chunk: int = 8, rng: Any = None,
           skip_special_tokens: bool = True, on_finish: Callable[[Any], None] | None = None,
           **kwargs: Any) -> Iterator[str | list[str]]:
    """Yield generated text as it is produced (see the module docstring).

    prompt_or_inputs: a string, a list of strings, or ``lm.tokenizer(...)`` output.
    chunk: strategy steps per jitted ``run_steps`` call (the only host interaction).
    kwargs: ``GenerationConfig`` fields and ``generate`` options (not ``num_beams > 1``).
    on_finish: called once at the end with what ``generate`` would return (a
    ``GenerateOutput`` with ``return_dict_in_generate=True``, e.g. for its cache).
    On a mesh spanning processes, each process passes its own prompts and gets the
    pieces of its rows (see `jaxgen.distributed`).
    """
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1, got {chunk!r}")
    single = isinstance(prompt_or_inputs, str)
    if isinstance(prompt_or_inputs, (str, list, tuple)):
        if lm.tokenizer is None:
            raise ValueError("stream() with text needs a model with a tokenizer")
        inputs = lm.tokenizer([prompt_or_inputs] if single else list(prompt_or_inputs))
    else:
        inputs = prompt_or_inputs
    t0 = time.perf_counter()
    kwargs.setdefault("tokenizer", lm.tokenizer)
    request = prepare(lm.model, inputs["input_ids"], inputs.get("attention_mask"),
                      config=lm.generation_config, rng=rng, strict=False, params=lm.params,
                      **kwargs)
    if not request.strategy.streamable:
        raise ValueError("stream() works with greedy decoding, sampling and speculative "
                         "decoding, not with num_beams > 1 (as in transformers)")
    request.chunk = chunk
    rows = request.own(request.input_ids).shape[0]  # this process's rows (multi-host)
    single = single or rows == 1
    decoders = [TextStreamer(lm.tokenizer, skip_special_tokens=skip_special_tokens)
                for _ in range(rows)]
    first = start(request, lm.params)
    frontier = Frontier(request, first)
    state = first
    for state in _with_first(first, chunks(request, lm.params, first, t0)):
        new = request.own(frontier.new_tokens(state))
        if new.shape[1]:
            pieces = [d._push(new[r].tolist()) for r, d in enumerate(decoders)]
            if any(pieces):
                yield pieces[0] if single else pieces
    pieces = [d._flush() for d in decoders]
    if on_finish is not None:
        on_finish(finish(request, state))
    if any(pieces):
        yield pieces[0] if single else pieces


def _with_first(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest
