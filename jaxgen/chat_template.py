"""Chat templates: a model's Jinja template rendered exactly as transformers renders it.

    template = load_chat_template("path/to/hf_dir")      # str, {name: str}, or None
    texts = render_chat(select_template(template), [[{"role": "user", "content": "Hi"}]],
                        add_generation_prompt=True, special_tokens={"bos_token": "<s>"})

The environment is transformers' (``utils/chat_template_utils.py``): a sandboxed
``ImmutableSandboxedEnvironment`` with ``trim_blocks``, ``lstrip_blocks``, the
``loopcontrols`` extension and a ``{% generation %}`` tag; ``raise_exception``,
``strftime_now``, a safe ``dict`` and ``namespace`` as globals; ``tojson`` without HTML
escaping. The template sees ``messages``, ``tools``, ``documents``,
``add_generation_prompt``, the special tokens (``bos_token``, ``eos_token``, ...) and any
extra keyword arguments, all rebuilt from plain JSON types first.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

Message = Mapping[str, Any]
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")
_CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def load_chat_template(path: str | Path) -> str | dict[str, str] | None:
    """The chat template(s) of a Hugging Face directory: ``chat_template.jinja`` and
    ``additional_chat_templates/*.jinja`` first, else ``tokenizer_config.json``'s
    ``chat_template`` (a string, or a list of ``{"name", "template"}``); None if none."""
    path = Path(path)
    templates = {}
    if (path / "chat_template.jinja").is_file():
        templates["default"] = (path / "chat_template.jinja").read_text(encoding="utf-8")
    for file in sorted((path / "additional_chat_templates").glob("*.jinja")):
        templates[file.stem] = file.read_text(encoding="utf-8")
    if not templates and (path / "tokenizer_config.json").is_file():
        found = json.loads((path / "tokenizer_config.json").read_text()).get("chat_template")
        if isinstance(found, list):
            return {t["name"]: t["template"] for t in found}
        return found
    if list(templates) == ["default"]:
        return templates["default"]
    return templates or None


def select_template(templates: str | Mapping[str, str] | None, chat_template: str | None = None,
                    tools: Any = None) -> str:
    """The template to render (transformers' ``get_chat_template``): ``chat_template`` (a
    template, or the name of one of ``templates``), else the model's ("tool_use" when
    tools are given and it has one, else "default"). ValueError when there is none."""
    if isinstance(templates, Mapping):
        if chat_template is not None:
            return templates.get(chat_template, chat_template)
        if tools is not None and "tool_use" in templates:
            return templates["tool_use"]
        if "default" in templates:
            return templates["default"]
        raise ValueError(f"the model has several chat templates and no default; pass "
                         f"chat_template= one of {sorted(templates)}")
    if chat_template is not None:
        return chat_template
    if templates is None:
        raise ValueError("this tokenizer has no chat template (none in tokenizer_config.json, "
                         "chat_template.jinja or the GGUF metadata); pass chat_template=")
    return templates


def render_chat(template: str, conversations: Sequence[Sequence[Message]], *,
                tools: Sequence[Mapping[str, Any]] | None = None,
                documents: Sequence[Mapping[str, Any]] | None = None,
                add_generation_prompt: bool = False,
                continue_final_message: bool | str = False,
                special_tokens: Mapping[str, str] | None = None, **kwargs: Any) -> list[str]:
    """Render each conversation (transformers' ``render_jinja_template``). Extra keyword
    arguments reach the template and override special tokens of the same name."""
    if continue_final_message and add_generation_prompt:
        raise ValueError("continue_final_message and add_generation_prompt are not compatible")
    if tools is not None and not all(isinstance(t, Mapping) for t in tools):
        raise ValueError("tools must be JSON schemas (dicts); functions are not converted here")
    compiled = compile_template(template)
    context = _plain({**(special_tokens or {}), **kwargs})
    rendered = []
    for messages in conversations:
        chat = _alias_reasoning(_plain(_normalize(messages)))
        final = None
        if continue_final_message:
            final = _tag_final_message(chat, continue_final_message, template)
        text = compiled.render(messages=chat, tools=_plain(tools), documents=_plain(documents),
                               add_generation_prompt=add_generation_prompt, **context)
        rendered.append(text if final is None else _cut_at_tag(text, final))
    return rendered


# -------------------------------------------------------------------------- environment


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}`` renders its body (transformers tracks the
    assistant's spans with it; the text is the same)."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body
                                      ).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


class _TemplateDict:
    """``dict(...)`` for templates, without attribute access to the type."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return dict.fromkeys(*args, **kwargs)


class _Namespace(jinja2.utils.Namespace):
    """jinja's namespace, refusing underscore-prefixed attribute names."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # noqa: N805 (jinja's signature trick)
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"chat templates cannot store underscore-prefixed attributes on a namespace, "
                f"got {name!r}")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@functools.lru_cache(maxsize=32)
def compile_template(template: str) -> jinja2.Template:
    """The compiled template, in transformers' sandboxed environment (cached)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now,
                       dict=_TemplateDict(), namespace=_Namespace)
    return env.from_string(template)


# ----------------------------------------------------------------------------- inputs


def _normalize(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages as dicts (dataclasses and pydantic models converted), None values dropped."""
    out = []
    for message in messages:
        if dataclasses.is_dataclass(message) and not isinstance(message, type):
            message = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
        elif callable(getattr(message, "model_dump", None)):
            message = message.model_dump()  # type: ignore[union-attr]
        if not isinstance(message, Mapping):
            raise TypeError(f"chat messages must be dicts, got {message!r}")
        out.append({k: v for k, v in message.items() if v is not None})
    return out


def _plain(value: Any) -> Any:
    """``value`` rebuilt from plain JSON types (what a sandboxed template may touch);
    anything else becomes a placeholder naming its type, e.g. ``"<ndarray>"``."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for base, plain in ((str, str.__str__), (int, int.__int__), (float, float.__float__)):
        if isinstance(value, base):  # subclasses (enums, numpy scalars) back to the base
            return plain(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return _plain(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain(value.model_dump())
    return f"<{type(value).__name__}>"


def _alias_reasoning(chat: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A message's reasoning under any of its names also fills ``reasoning_content`` and
    ``thinking`` (what templates read)."""
    out = []
    for message in chat:
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None),
                         None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def _tag_final_message(chat: list[dict[str, Any]], field: bool | str, template: str) -> str:
    """Mark the end of the last message's ``field`` (``content`` for True), so the render
    can be cut there; returns the original text."""
    if not chat:
        raise ValueError("continue_final_message is set but the conversation is empty")
    field = field if isinstance(field, str) else "content"
    final = chat[-1].get(field)
    if final is None:
        raise ValueError(f"continue_final_message is set but the final message has no "
                         f"{field!r} to continue")
    fields = [f for f in _REASONING_FIELDS if chat[-1].get(f) == final] \
        if field in _REASONING_FIELDS else [field]
    if not any(f in template for f in fields):
        raise ValueError(f"continue_final_message={field!r} is not a field the chat template "
                         f"reads")
    if isinstance(final, list | tuple):
        for block in reversed(final):
            if "text" in block:
                final, block["text"] = block["text"], block["text"] + _CONTINUE_TAG
                return final
        raise ValueError("continue_final_message is set but the final message has no text")
    for f in fields:
        chat[-1][f] = chat[-1][f] + _CONTINUE_TAG
    return final


def _cut_at_tag(text: str, final: str) -> str:
    if final.strip() not in text or _CONTINUE_TAG.strip() not in text:
        raise ValueError("continue_final_message is set but the final message does not appear "
                         "in the rendered chat (the template changes it)")
    at = text.rindex(_CONTINUE_TAG.strip())
    return text[:at] if text[at:at + len(_CONTINUE_TAG)] == _CONTINUE_TAG else text[:at].rstrip()
