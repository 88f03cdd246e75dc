"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from pydantic import ValidationError

#: OpenAI request fields jaxgen serve knows but does not implement (a clearer message
#: than "unknown field").
UNSUPPORTED = frozenset({
    "suffix", "best_of", "tools", "tool_choice", "functions", "function_call",
    "parallel_tool_calls", "response_format", "audio", "modalities", "prediction",
    "reasoning_effort", "service_tier", "store", "metadata", "web_search_options",
})  # fmt: skip
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          500: "server_error"}


class APIError(Exception):
    """An error answered as OpenAI error JSON with HTTP ``status``."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


_TYPE_NAMES = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _param(loc: tuple[Any, ...]) -> str | None:
    """``("messages", 0, "content")`` -> ``"messages[0].content"`` (union branch tags such
    as ``list[int]`` or ``constrained-str`` dropped)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif not any(c in part for c in "[-") and part not in _TYPE_NAMES:
            out += f".{part}" if out else part
    return out or None


def from_validation(e: ValidationError) -> APIError:
    """A pydantic error as a 400 naming its field: the first one that is not a union
    branch of the wrong type (``stop=[5 strings]`` reports the list's length)."""
    errors = e.errors(include_url=False)
    err = next((x for x in errors if not x["type"].endswith("_type")), errors[0])
    param = _param(tuple(err["loc"]))
    name = str(err["loc"][-1]) if err["loc"] else ""
    if err["type"] == "extra_forbidden":
        why = "is not supported by jaxgen serve" if name in UNSUPPORTED else "is not a known field"
        return APIError(400, f"{param}: {why}", param=param, code="unsupported_parameter"
                        if name in UNSUPPORTED else "unknown_parameter")
    return APIError(400, f"{param}: {err['msg']}" if param else err["msg"], param=param,
                    code="invalid_value")
