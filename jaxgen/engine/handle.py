"""What a caller holds for a submitted request: a `Handle` streaming a `Result`.

A handle is written by the thread that drives the engine and read from any thread::

    h = engine.submit("Once upon a time", max_new_tokens=32)
    for token in h:            # blocks for the next token (drives the engine itself when
        ...                    # no background loop runs, see Engine.start)
    h.result().text            # waits until the request is finished
    h.cancel()                 # any thread: the slot is freed at the next round
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

_END = object()


@dataclasses.dataclass
class Result:
    """One finished request.

    tokens: the new token ids (ending with the eos or the stop-string token, if any).
    text: their text (skip_special_tokens) when the prompt was text, else None.
    finish_reason: "eos", "length", "stop", "cancelled" or "error".
    logprobs: per-token log-probabilities when ``output_scores`` was set, else None.
    error: the message when ``finish_reason == "error"`` (the request never ran).
    top_logprobs: per token, the engine's ``top_logprobs`` best ``(token id, logprob)``
    (best first) when it was built with them, else None.
    """

    tokens: list[int]
    text: str | None
    finish_reason: str
    logprobs: list[float] | None = None
    prompt_tokens: int = 0
    error: str | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None


class Handle:
    """A submitted request: iterate for its tokens, ``result()`` for the whole output,
    ``cancel()`` to stop it. ``on_tokens(list[int])`` (optional) is called from the
    engine's thread with each round's new tokens."""

    def __init__(self, engine: Any, request: Any, on_tokens: Callable[[list[int]], Any] | None):
        self.engine, self.request = engine, request
        self.on_tokens = on_tokens
        self.tokens: list[int] = []
        self.logprobs: list[float] = []
        self.top_logprobs: list[list[tuple[int, float]]] = []
        self._queue: queue.Queue = queue.Queue()
        self._done = threading.Event()
        self._result: Result | None = None
        self.cancelled = False

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Ask the engine to stop this request (thread-safe; takes effect next round)."""
        self.cancelled = True
        self.engine._wake()

    def _push(self, tokens: list[int], logprobs: list[float] | None,
              top: list[list[tuple[int, float]]] | None = None) -> None:
        if logprobs is not None:
            self.logprobs.extend(logprobs)
        if top is not None:
            self.top_logprobs.extend(top)
        self.tokens.extend(tokens)      # last: a reader seeing a token sees its logprobs
        for t in tokens:
            self._queue.put(t)
        if self.on_tokens is not None and tokens:
            self.on_tokens(tokens)

    def _finish(self, result: Result) -> None:
        self._result = result
        self._queue.put(_END)
        self._done.set()

    def __iter__(self) -> Iterator[int]:
        while True:
            try:
                item = self._queue.get(timeout=0.05) if self.engine.background \
                    else self._queue.get_nowait()
            except queue.Empty:
                self.engine._pump()
                continue
            if item is _END:
                return
            yield item

    def result(self, timeout: float | None = None) -> Result:
        """The finished request. Without a background loop (`Engine.start`) the calling
        thread drives the engine until then; with one it waits (``timeout`` seconds)."""
        if self.engine.background:
            if not self._done.wait(timeout):
                raise TimeoutError("the request is not finished yet")
        while not self._done.is_set():
            self.engine._pump()
        assert self._result is not None
        return self._result
