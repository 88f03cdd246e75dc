"""OpenAI response bodies: choices, logprobs, usage, stream chunks."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Sequence
from typing import Any

#: Logprob reported for a token the engine scored -inf (JSON has no infinity).
_FLOOR = -9999.0


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def head(kind: str, rid: str, model: str) -> dict[str, Any]:
    """The fields every response / chunk starts with."""
    return {"id": rid, "object": kind, "created": int(time.time()), "model": model}


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _lp(x: float) -> float:
    return x if math.isfinite(x) else _FLOOR


def _token(tok: Any, i: int) -> str:
    return tok.decode([i], skip_special_tokens=False)


def _alternatives(top: Sequence[tuple[int, float]], n: int) -> list[tuple[int, float]]:
    return [(i, lp) for i, lp in top[:n] if math.isfinite(lp)]


def completion_logprobs(tok: Any, tokens: Sequence[int], lps: Sequence[float],
                        tops: Sequence[Sequence[tuple[int, float]]], n: int, offset: int
                        ) -> dict[str, Any]:
    """The legacy ``logprobs`` object: tokens, token_logprobs, top_logprobs, text_offset
    (``offset``: where the first token's text starts in the returned text)."""
    strs = [_token(tok, t) for t in tokens]
    offsets = []
    for s in strs:
        offsets.append(offset)
        offset += len(s)
    top = [{_token(tok, i): _lp(lp) for i, lp in _alternatives(t, n)} for t in tops] \
        if n else None
    return {"tokens": strs, "token_logprobs": [_lp(x) for x in lps], "top_logprobs": top,
            "text_offset": offsets}


def _entry(tok: Any, i: int, lp: float) -> dict[str, Any]:
    s = _token(tok, i)
    return {"token": s, "logprob": _lp(lp), "bytes": list(s.encode("utf-8"))}


def chat_logprobs(tok: Any, tokens: Sequence[int], lps: Sequence[float],
                  tops: Sequence[Sequence[tuple[int, float]]], n: int) -> dict[str, Any]:
    """The chat ``logprobs`` object: ``{"content": [{token, logprob, bytes,
    top_logprobs}], "refusal": None}``."""
    content = [{**_entry(tok, t, lp), "top_logprobs": [_entry(tok, i, x) for i, x in
                                                         _alternatives(top, n)]}
               for t, lp, top in zip(tokens, lps, tops, strict=True)]
    return {"content": content, "refusal": None}


def sse(data: dict[str, Any] | str) -> str:
    """One server-sent event."""
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"
