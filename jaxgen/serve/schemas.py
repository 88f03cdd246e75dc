"""Request bodies of ``/v1/completions`` and ``/v1/chat/completions`` (pydantic).

OpenAI's fields with OpenAI's ranges, plus the transformers knobs vLLM takes in the
body (``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``, ``num_beams``), which
are checked again by ``GenerationConfig`` when the request is prepared. Unknown fields
are refused (``extra="forbid"``), so a typo never silently changes nothing.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Most stop strings per request (OpenAI's limit, the engine's ``max_stop_strings``).
MAX_STOP = 4
#: Most ``top_logprobs`` (OpenAI's limit; the engine records this many).
MAX_TOP_LOGPROBS = 20

NonEmpty = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    include_usage: bool = False


class Sampling(_Strict):
    """The fields both endpoints share."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stop: NonEmpty | Annotated[list[NonEmpty], Field(max_length=MAX_STOP)] | None = None
    seed: int | None = Field(None, ge=0, lt=2**31)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # transformers knobs, as vLLM's extra parameters (GenerationConfig checks them too)
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    min_tokens: int | None = Field(None, ge=0)
    num_beams: int | None = Field(None, ge=1)

    def stops(self) -> list[str]:
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) \
            else list(self.stop)


class CompletionRequest(Sampling):
    """``POST /v1/completions``: a prompt (text, token ids, or a list of either)."""

    prompt: NonEmpty | list[NonEmpty] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(Sampling):
    """``POST /v1/chat/completions``: messages rendered with the model's chat template."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
