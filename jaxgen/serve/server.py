"""Run the app with uvicorn: ``jaxgen serve`` and `serve`.

SIGTERM / Ctrl-C: uvicorn stops accepting connections and waits for the responses in
flight (streams included) to finish, then the engine's loop is stopped and the
process exits 0.
"""

from __future__ import annotations

import argparse
import signal
import threading
from typing import Any


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``jaxgen serve`` flags."""
    p.add_argument("--model", default=None,
                   help="Hugging Face layout directory or GGUF file (default: the bundled model)")
    p.add_argument("--model-name", default=None,
                   help="the name clients pass as `model` (default: the model's directory name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: localhost "
                   "only; 0.0.0.0 listens on every interface)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-slots", type=int, default=16, help="requests decoded at once")
    p.add_argument("--max-length", type=int, default=None,
                   help="prompt + new tokens of one request (default: the model's maximum)")
    p.add_argument("--api-key", default=None,
                   help="require `Authorization: Bearer KEY` on /v1 requests")
    p.add_argument("--log-level", default="info")


def build(lm: Any, *, max_slots: int = 16, max_length: int | None = None) -> Any:
    """The serving engine: logprobs (and top-20 logprobs) recorded for every request."""
    from jaxgen.engine import Engine

    return Engine(lm, max_slots=max_slots, max_length=max_length, logprobs=True)


def serve(lm: Any, *, host: str = "127.0.0.1", port: int = 8000, max_slots: int = 16,
          max_length: int | None = None, api_key: str | None = None,
          model_name: str | None = None, log_level: str = "info") -> int:
    """Serve ``lm`` until SIGTERM / SIGINT, then drain the requests in flight; 0."""
    import uvicorn

    from jaxgen.serve.app import create_app

    engine = build(lm, max_slots=max_slots, max_length=max_length).start()
    name = model_name or getattr(getattr(lm, "path", None), "name", None) or "jaxgen"
    app = create_app(lm, engine, model_name=str(name), api_key=api_key)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                           timeout_graceful_shutdown=None))
    # uvicorn re-raises the signal it shut down on with the handler it found: make that
    # one a no-op, so a drained shutdown exits 0 instead of dying by the signal
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: None)
    try:
        server.run()
    finally:
        engine.stop()
    return 0


def run(args: argparse.Namespace, lm: Any) -> int:
    """``jaxgen serve`` with parsed ``args`` and the loaded model."""
    return serve(lm, host=args.host, port=args.port, max_slots=args.max_slots,
                 max_length=args.max_length, api_key=args.api_key, model_name=args.model_name,
                 log_level=args.log_level)
