"""OpenAI request -> engine requests: prompt ids, GenerationConfig fields, seeds.

Fields map to ``GenerationConfig`` names (``max_tokens`` -> ``max_new_tokens``, ``stop``
-> ``stop_strings``, ``min_tokens`` -> ``min_new_tokens``, ``logprobs`` ->
``output_scores``); ``temperature=0`` means greedy; fields left out keep the model's
``generation_config``. Everything is checked here, on the host, with the engine's own
``prepare`` (`jaxgen.Engine.prepare`), before anything is submitted.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
from typing import Any

from jaxgen.serve.errors import APIError
from jaxgen.serve.schemas import ChatRequest, CompletionRequest, Sampling

#: GenerationConfig name -> the request field that sets it (for ``error.param``).
_REQUEST_NAME = {"max_new_tokens": "max_tokens", "max_length": "max_tokens",
                 "stop_strings": "stop", "min_new_tokens": "min_tokens",
                 "output_scores": "logprobs", "do_sample": "temperature"}
_DIRECT = ("top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
           "frequency_penalty")


@dataclasses.dataclass
class Plan:
    """What one HTTP request becomes: per prompt its ids, per choice an engine request."""

    prompts: list[list[int]]          # token ids of each prompt
    prepared: list[Any]               # `jaxgen.engine.Prepared`, prompt-major, n per prompt
    n: int
    stops: list[str]
    top_logprobs: int | None          # None: no logprobs; else how many alternatives


def generation_fields(req: Sampling, max_new: int, logprobs: bool) -> dict[str, Any]:
    """The ``GenerationConfig`` fields a request sets."""
    if req.num_beams is not None and req.num_beams > 1:
        raise APIError(400, f"num_beams={req.num_beams}: the serving engine has no beam search; "
                       f"allowed: 1", param="num_beams", code="unsupported_value")
    fields: dict[str, Any] = {"max_new_tokens": max_new}
    if req.temperature is not None:
        fields.update({"do_sample": False} if req.temperature == 0 else
                      {"do_sample": True, "temperature": req.temperature})
    fields.update({k: getattr(req, k) for k in _DIRECT if getattr(req, k) is not None})
    if req.stops():
        fields["stop_strings"] = req.stops()
    if req.logit_bias:
        fields["logit_bias"] = _logit_bias(req.logit_bias)
    if req.min_tokens:
        fields["min_new_tokens"] = req.min_tokens
    if logprobs:
        fields["output_scores"] = True
    return fields


def _logit_bias(bias: dict[str, float]) -> dict[int, float]:
    try:
        return {int(k): float(v) for k, v in bias.items()}
    except ValueError:
        raise APIError(400, "logit_bias keys must be token ids (integers as strings)",
                       param="logit_bias", code="invalid_value") from None


def param_of(message: str, fields: dict[str, Any]) -> str | None:
    """The request field an engine error message is about."""
    for name in re.findall(r"[a-z_]+", message):
        if name in fields or name in _REQUEST_NAME:
            return _REQUEST_NAME.get(name, name)
    return None


def check_common(req: Sampling, model_name: str) -> None:
    """Checks that need no tokenizer: the model name, stream options, seeds."""
    if req.model != model_name:
        raise APIError(400, f"model {req.model!r} is not served here; this server serves "
                       f"{model_name!r}", param="model", code="model_not_found")
    if req.stream_options is not None and not req.stream:
        raise APIError(400, "stream_options is only allowed when stream is true",
                       param="stream_options", code="invalid_value")
    if req.seed is not None and req.seed + req.n - 1 >= 2**31:
        raise APIError(400, "seed + n - 1 must be < 2**31 (choice i uses seed + i)",
                       param="seed", code="invalid_value")


def prepare_all(engine: Any, req: Sampling, prompts: list[list[int]], *, default_max: int | None,
                logprobs: bool, prompt_param: str) -> list[Any]:
    """One `Prepared` per (prompt, choice), seeds ``seed, seed + 1, ...`` (random without
    a seed). Raises `APIError` 400 naming the field."""
    out = []
    for ids in prompts:
        max_new = req.max_tokens or default_max or engine.max_length - len(ids)
        if len(ids) + max_new > engine.max_length:
            raise APIError(400, f"this model's maximum context length is {engine.max_length} "
                           f"tokens; the request asks for {len(ids) + max_new} ({len(ids)} in "
                           f"the prompt, {max_new} for the completion)",
                           param=prompt_param if len(ids) >= engine.max_length else "max_tokens",
                           code="context_length_exceeded")
        fields = generation_fields(req, max_new, logprobs)
        base = req.seed if req.seed is not None else secrets.randbelow(2**31 - req.n)
        for i in range(req.n):
            try:
                out.append(engine.prepare(ids, seed=base + i, **fields))
            except (ValueError, TypeError) as e:
                raise APIError(400, str(e), param=param_of(str(e), fields),
                               code="invalid_value") from None
    return out


def prompt_list(prompt: Any) -> list[Any]:
    """The prompts of a completions request: texts or token-id lists."""
    return [prompt] if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)) \
        else list(prompt)


def completion_plan(lm: Any, engine: Any, req: CompletionRequest) -> Plan:
    """The `Plan` of a ``/v1/completions`` request."""
    if req.echo and req.logprobs is not None:
        raise APIError(400, "echo with logprobs needs prompt logprobs, which the engine does "
                       "not compute", param="echo", code="unsupported_value")
    texts = prompt_list(req.prompt)
    if not texts:
        raise APIError(400, "prompt is empty", param="prompt", code="invalid_value")
    prompts = [lm.tokenizer.encode(t) if isinstance(t, str) else list(t) for t in texts]
    vocab = lm.model.vocab_size
    for ids in prompts:
        if not ids or min(ids) < 0 or max(ids) >= vocab:
            raise APIError(400, f"a prompt must hold at least one token, ids in [0, {vocab})",
                           param="prompt", code="invalid_value")
    prepared = prepare_all(engine, req, prompts, default_max=16, prompt_param="prompt",
                           logprobs=req.logprobs is not None)
    return Plan(prompts, prepared, req.n, req.stops(), req.logprobs)


def chat_plan(lm: Any, engine: Any, req: ChatRequest) -> Plan:
    """The `Plan` of a ``/v1/chat/completions`` request (the chat template renders the
    messages; the default ``max_tokens`` is what the engine's ``max_length`` leaves)."""
    if req.top_logprobs and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs=true", param="top_logprobs",
                       code="invalid_value")
    if req.max_tokens is not None and req.max_completion_tokens is not None:
        raise APIError(400, "give max_tokens or max_completion_tokens, not both",
                       param="max_completion_tokens", code="invalid_value")
    if req.max_completion_tokens is not None:
        req = req.model_copy(update={"max_tokens": req.max_completion_tokens})
    if lm.tokenizer is None or getattr(lm.tokenizer, "chat_template", None) is None:
        raise APIError(400, "this model's tokenizer has no chat template; use /v1/completions",
                       param="messages", code="no_chat_template")
    messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
                for m in req.messages]
    try:
        ids = list(lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                    tokenize=True, return_dict=False))
    except Exception as e:     # a template's raise_exception(), or a render error
        raise APIError(400, f"the chat template refused the messages: {e}", param="messages",
                       code="invalid_value") from None
    prepared = prepare_all(engine, req, [ids], default_max=None, prompt_param="messages",
                           logprobs=req.logprobs)
    top = (req.top_logprobs or 0) if req.logprobs else None
    return Plan([ids], prepared, req.n, req.stops(), top)
