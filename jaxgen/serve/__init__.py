"""An OpenAI-compatible HTTP server on the continuous-batching engine (``jaxgen serve``).

The names are re-exported lazily, so ``jaxgen --help`` does not import the web stack.
"""

from typing import Any

__all__ = ["create_app", "serve"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from jaxgen.serve.app import create_app

        return create_app
    if name == "serve":
        from jaxgen.serve.server import serve

        return serve
    raise AttributeError(f"module 'jaxgen.serve' has no attribute {name!r}")
