"""The FastAPI app: ``create_app(lm, engine, model_name=...)``.

Every choice of every request is one request of the running `jaxgen.Engine`, so
concurrent requests decode together. The engine's thread wakes a request's coroutine
(``on_tokens``); a streamed choice whose client goes away is cancelled, and its slot is
freed at the engine's next round. The app does not start or stop the engine (see
`jaxgen.serve.server.serve`), so several apps may share one.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError

from jaxgen.serve import responses as R
from jaxgen.serve.convert import Plan, chat_plan, check_common, completion_plan, prompt_list
from jaxgen.serve.errors import APIError, from_validation
from jaxgen.serve.schemas import ChatRequest, CompletionRequest
from jaxgen.serve.text import ChoiceText

log = logging.getLogger("jaxgen.serve")
Endpoint = Callable[[Request], Awaitable[Any]]


def _finish_reason(engine_reason: str, stopped: bool) -> str:
    return "stop" if stopped or engine_reason in ("eos", "stop") else "length"


class Run:
    """The engine handles of one HTTP request, and an event the engine's thread sets
    when any of them has new tokens."""

    def __init__(self, engine: Any, plan: Plan):
        loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

        def wake(_tokens: list[int]) -> None:
            loop.call_soon_threadsafe(self.event.set)

        self.plan = plan
        self.handles = [engine.submit(p, on_tokens=wake) for p in plan.prepared]

    async def wait(self) -> None:
        """Until new tokens arrive (or 20 ms: finishing sends no tokens)."""
        try:
            await asyncio.wait_for(self.event.wait(), 0.02)
        except asyncio.TimeoutError:
            pass
        self.event.clear()

    async def results(self) -> list[Any]:
        """The finished results (the engine stops each choice at its stop strings)."""
        while not all(h.done for h in self.handles):
            await self.wait()
        out = [h.result() for h in self.handles]
        for r in out:
            if r.finish_reason == "error":
                raise APIError(500, f"the engine could not run the request: {r.error}",
                               code="engine_error")
        return out

    def cancel(self) -> None:
        for h in self.handles:
            if not h.done:
                h.cancel()


class EventStream(StreamingResponse):
    """``text/event-stream`` that cancels its run however the response ends."""

    def __init__(self, content: AsyncIterator[str], run: Run):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache"})
        self.run = run

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.cancel()


class Server:
    """What the endpoints share: the model, the engine, the name and the key."""

    def __init__(self, lm: Any, engine: Any, model_name: str, api_key: str | None):
        self.lm, self.engine, self.model_name, self.api_key = lm, engine, model_name, api_key
        self.tok = lm.tokenizer
        self.eos = tuple(lm.generation_config.eos_token_ids())

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise APIError(401, "missing or wrong API key (Authorization: Bearer ...)",
                           code="invalid_api_key")

    async def parse(self, request: Request, model: type[BaseModel]) -> Any:
        self.authorize(request)
        try:
            data = json.loads(await request.body())
        except ValueError as e:
            raise APIError(400, f"malformed JSON body: {e}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "the body must be a JSON object", code="invalid_json")
        try:
            req = model.model_validate(data)
        except ValidationError as e:
            raise from_validation(e) from None
        check_common(req, self.model_name)
        return req

    def choice_text(self, plan: Plan) -> ChoiceText:
        return ChoiceText(self.tok, plan.stops, self.eos)

    # ---------------------------------------------------------------- one choice

    def logprobs(self, chat: bool, plan: Plan, tokens: list[int], lps: list[float],
                 tops: list[Any] | None, offset: int) -> dict[str, Any] | None:
        if plan.top_logprobs is None:
            return None
        tops = tops if tops is not None else [[] for _ in tokens]
        if chat:
            return R.chat_logprobs(self.tok, tokens, lps, tops, plan.top_logprobs)
        return R.completion_logprobs(self.tok, tokens, lps, tops, plan.top_logprobs, offset)

    def choice(self, chat: bool, plan: Plan, index: int, result: Any, echo: str
               ) -> dict[str, Any]:
        """One finished choice of a non-streamed response."""
        text = self.choice_text(plan)
        body, s, e = text.advance(result.tokens, final=True,
                                  eos=result.finish_reason == "eos")
        lp = self.logprobs(chat, plan, result.tokens[s:e], (result.logprobs or [])[s:e],
                           None if result.top_logprobs is None else result.top_logprobs[s:e],
                           len(echo))
        reason = _finish_reason(result.finish_reason, text.stopped)
        if chat:
            return {"index": index, "message": {"role": "assistant", "content": body},
                    "logprobs": lp, "finish_reason": reason}
        return {"index": index, "text": echo + body, "logprobs": lp, "finish_reason": reason}

    # ---------------------------------------------------------------- streaming

    def _delta(self, chat: bool, run: Run, i: int, text: ChoiceText, seen: list[int],
               offset: int) -> tuple[str, Any, str | None] | None:
        """What choice ``i`` may send now: ``(text, logprobs, finish_reason or None)``,
        or None when nothing is new."""
        h = run.handles[i]
        res = h.result() if h.done else None
        if res is not None and res.finish_reason == "error":
            raise APIError(500, f"the engine could not run the request: {res.error}",
                           code="engine_error")
        tokens = res.tokens if res is not None else h.tokens[:]
        lps = res.logprobs if res is not None else h.logprobs
        tops = res.top_logprobs if res is not None else (h.top_logprobs or None)
        new, seen[i] = tokens[seen[i]:], len(tokens)
        delta, s, e = text.advance(new, final=res is not None,
                                   eos=res is not None and res.finish_reason == "eos")
        if text.stopped and res is None:
            h.cancel()                       # cut at a stop string: free the slot
        finished = res is not None or text.stopped
        if not delta and s == e and not finished:
            return None
        lp = self.logprobs(chat, run.plan, text.ids[s:e], (lps or [])[s:e],
                           None if tops is None else tops[s:e], offset)
        reason = _finish_reason("stop" if res is None else res.finish_reason, text.stopped)
        return delta, lp, reason if finished else None

    async def events(self, chat: bool, run: Run, rid: str, echoes: list[str],
                     include_usage: bool) -> AsyncIterator[str]:
        """The server-sent events of a streamed response, ``data: [DONE]`` last."""
        kind = "chat.completion.chunk" if chat else "text_completion"
        n = len(run.handles)
        texts = [self.choice_text(run.plan) for _ in range(n)]
        seen, live = [0] * n, set(range(n))

        def chunk(i: int, delta: str | dict[str, Any], lp: Any, reason: str | None) -> str:
            if chat and isinstance(delta, str):
                delta = {"content": delta} if delta else {}
            c = {"index": i, ("delta" if chat else "text"): delta, "logprobs": lp,
                 "finish_reason": reason}
            return R.sse({**R.head(kind, rid, self.model_name), "choices": [c]})

        try:
            for i in range(n):
                if chat or echoes[i]:
                    yield chunk(i, {"role": "assistant", "content": ""} if chat else echoes[i],
                                None, None)
            while live:
                for i in sorted(live):
                    out = self._delta(chat, run, i, texts[i], seen,
                                      len(echoes[i]) + len(texts[i].text))
                    if out is not None:
                        yield chunk(i, *out)
                        if out[2] is not None:
                            live.discard(i)
                if live:
                    await run.wait()
            if include_usage:
                prompt = sum(len(p) for p in run.plan.prompts)
                yield R.sse({**R.head(kind, rid, self.model_name), "choices": [],
                             "usage": R.usage(prompt, sum(seen))})
        except APIError as e:
            yield R.sse(e.body())
        except Exception as e:   # the response has started: report in the stream
            log.exception("streamed request failed")
            yield R.sse(APIError(500, f"internal server error: {type(e).__name__}: {e}").body())
        finally:
            run.cancel()
        yield R.sse("[DONE]")

    # ---------------------------------------------------------------- endpoints

    async def respond(self, chat: bool, req: Any, plan: Plan, echoes: list[str]) -> Any:
        run = Run(self.engine, plan)
        rid = R.new_id("chatcmpl" if chat else "cmpl")
        if req.stream:
            usage = req.stream_options is not None and req.stream_options.include_usage
            return EventStream(self.events(chat, run, rid, echoes, usage), run)
        try:
            results = await run.results()
        finally:
            run.cancel()
        kind = "chat.completion" if chat else "text_completion"
        choices = [self.choice(chat, plan, i, r, echoes[i]) for i, r in enumerate(results)]
        return JSONResponse({**R.head(kind, rid, self.model_name), "choices": choices,
                             "usage": R.usage(sum(len(p) for p in plan.prompts),
                                              sum(len(r.tokens) for r in results))})

    async def completions(self, request: Request) -> Any:
        req = await self.parse(request, CompletionRequest)
        plan = completion_plan(self.lm, self.engine, req)
        echoes = [""] * len(plan.prepared)
        if req.echo:
            echoes = [t if isinstance(t, str) else self.tok.decode(ids)
                      for t, ids in zip(prompt_list(req.prompt), plan.prompts, strict=True)
                      for _ in range(req.n)]
        return await self.respond(False, req, plan, echoes)

    async def chat(self, request: Request) -> Any:
        req = await self.parse(request, ChatRequest)
        plan = chat_plan(self.lm, self.engine, req)
        return await self.respond(True, req, plan, [""] * len(plan.prepared))

    async def models(self, request: Request) -> Any:
        self.authorize(request)
        return {"object": "list", "data": [{
            "id": self.model_name, "object": "model", "created": 0, "owned_by": "jaxgen",
            "max_model_len": self.engine.max_length}]}

    async def health(self, request: Request) -> Any:
        return {"status": "ok", "engine_running": self.engine.background}


def _guard(fn: Endpoint) -> Endpoint:
    """OpenAI error JSON for `APIError`, 500 for anything else (the server keeps serving)."""
    @functools.wraps(fn)
    async def endpoint(request: Request) -> Any:
        try:
            return await fn(request)
        except APIError as e:
            return e.response()
        except Exception as e:
            log.exception("request failed")
            return APIError(500, f"internal server error: {type(e).__name__}: {e}").response()
    return endpoint


def create_app(lm: Any, engine: Any, *, model_name: str, api_key: str | None = None
               ) -> FastAPI:
    """The OpenAI-compatible app on ``engine`` (already started, or started by the
    caller): ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``, ``POST
    /v1/chat/completions``. With ``api_key``, /v1 requests need ``Authorization: Bearer``."""
    server = Server(lm, engine, model_name, api_key)
    app = FastAPI(title="jaxgen", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.add_api_route("/health", _guard(server.health), methods=["GET"])
    app.add_api_route("/v1/models", _guard(server.models), methods=["GET"])
    app.add_api_route("/v1/completions", _guard(server.completions), methods=["POST"])
    app.add_api_route("/v1/chat/completions", _guard(server.chat), methods=["POST"])

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return APIError(404, f"no route {request.method} {request.url.path}",
                        code="not_found").response()

    return app
