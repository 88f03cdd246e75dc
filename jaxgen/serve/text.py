"""A choice's text as its tokens arrive: token-aligned deltas with OpenAI's stop rule.

OpenAI returns the text *before* a stop sequence. The engine stops on the token that
completes a stop string, so the text is cut at the first stop string it holds; while
a choice runs, the last ``len(longest stop) - 1`` characters and incomplete UTF-8 are
held back, so a streamed delta never has to be taken back. Deltas end at token
boundaries, so each one carries exactly the logprobs of its tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the first stop string in ``text``, or None."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(hits) if hits else None


class ChoiceText:
    """Text of one choice (see the module docstring); ``advance`` returns each delta."""

    def __init__(self, tokenizer: Any, stops: Sequence[str], eos: Sequence[int] = ()):
        self.tok, self.stops, self.eos = tokenizer, list(stops), frozenset(eos)
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.ids: list[int] = []
        self.sent_tokens = 0          # tokens whose text was returned
        self.text = ""                # the text returned so far
        self.stopped = False          # a stop string was found: the choice is over

    def _upto(self, k: int) -> str:
        return self.tok.decode(self.ids[:k], skip_special_tokens=True)

    def advance(self, ids: Sequence[int], final: bool = False, eos: bool = False
                ) -> tuple[str, int, int]:
        """Add ``ids``; ``(new text, first token, end token)`` of what may be returned now
        (``final``: the choice ended; ``eos``: its last token is an eos, never shown)."""
        self.ids.extend(ids)
        start = self.sent_tokens
        if self.stopped:
            return "", start, start
        full = self._upto(len(self.ids))
        cut = first_stop(full, self.stops)
        if cut is not None:
            end = start
            while end < len(self.ids) and len(self._upto(end)) < cut:
                end += 1        # tokens that start before the stop string
            self.stopped, text = True, full[:cut]
        elif final:
            end, text = max(start, len(self.ids) - (1 if eos and self.ids else 0)), full
        else:
            end, limit = len(self.ids), len(full) - self.hold
            text = full
            while end > start and (len(text) > limit or text.endswith("\ufffd")
                                   or self.ids[end - 1] in self.eos):
                end -= 1
                text = self._upto(end)
            if end == start:
                return "", start, start
        delta = text[len(self.text):]
        self.text, self.sent_tokens = text, end
        return delta, start, end
