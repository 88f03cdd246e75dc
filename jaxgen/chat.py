"""Multi-turn chat: ``ChatSession`` and the ``jaxgen chat`` terminal loop.

    chat = jaxgen.ChatSession(lm, system="You are terse.", max_new_tokens=128)
    chat.send("Hello")                      # the reply, as text
    for piece in chat.stream("And then?"):  # the next reply, piece by piece
        print(piece, end="")
    chat.reset()                            # back to the system prompt alone

Every turn renders the whole conversation with the model's chat template
(``lm.tokenizer.apply_chat_template``) and generates until the model's end-of-turn
token (its eos ids) or ``max_new_tokens``. The cache is carried between turns: the new
tokens are the rendered conversation after its longest common prefix with what the cache
holds (``chat.cache_tokens``), and only they are prefilled (``chat.prefilled``), so a
turn costs what the new turn costs, not the conversation.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any, TextIO

import numpy as np

from jaxgen.decoding.past import Past, reusable
from jaxgen.stream import stream


class ChatSession:
    """A conversation with ``lm``: messages in, replies out (see the module docstring).

    generate_kwargs: ``GenerationConfig`` fields used on every turn (the model's own
    generation_config is the base, as in ``lm.generate``).
    """

    def __init__(self, lm: Any, system: str | None = None, **generate_kwargs: Any):
        if lm.tokenizer is None or getattr(lm.tokenizer, "chat_template", None) is None:
            raise ValueError("ChatSession needs a model whose tokenizer has a chat template "
                             "(tokenizer_config.json, chat_template.jinja or GGUF metadata)")
        self.lm, self.system, self.kwargs = lm, system, generate_kwargs
        self.messages: list[dict[str, str]] = []
        self.past: Past | None = None   # the cache of the conversation so far
        self.prefilled = 0              # tokens the last turn prefilled
        self.reset()

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.messages = [] if self.system is None else [
            {"role": "system", "content": self.system}]
        self.past = None

    @property
    def cache_tokens(self) -> int:
        """Tokens of the conversation the carried cache holds."""
        return 0 if self.past is None else self.past.get_seq_length()

    def _past_for(self, ids: list[int]) -> Past | None:
        """The carried cache cut to its longest common prefix with ``ids`` (at least one
        token of ``ids`` left to prefill), or None."""
        if self.past is None or not reusable(self.past):
            return None
        held = self.past.tokens[0]
        n = min(len(held), len(ids) - 1)
        same = np.asarray(held[:n]) == np.asarray(ids[:n])
        n = int(np.argmin(same)) if not same.all() else n
        return self.past.crop(n) if n > 0 else None

    def stream(self, text: str, **kwargs: Any) -> Iterator[str]:
        """Send ``text`` as the user's turn; yield the reply in pieces as it is generated."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("a chat message must be a non-empty string")
        messages = [*self.messages, {"role": "user", "content": text}]
        ids = self.lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                    return_dict=False)
        past = self._past_for(ids)
        self.prefilled = len(ids) - (0 if past is None else past.get_seq_length())
        inputs = {"input_ids": np.asarray([ids], np.int32),
                  "attention_mask": np.ones((1, len(ids)), np.int32)}
        done: list[Any] = []
        reply = []
        for piece in stream(self.lm, inputs, past_key_values=past, on_finish=done.append,
                            **{**self.kwargs, **kwargs, "return_dict_in_generate": True}):
            reply.append(piece)
            yield piece
        self.past = done[0].past_key_values if done else None
        self.messages = [*messages, {"role": "assistant", "content": "".join(reply).strip()}]

    def send(self, text: str, **kwargs: Any) -> str:
        """Send ``text``; return the whole reply."""
        return "".join(self.stream(text, **kwargs)).strip()

    @property
    def turns(self) -> int:
        """Replies so far."""
        return sum(m["role"] == "assistant" for m in self.messages)


HELP = "commands: /reset (forget the conversation), /exit (leave)"


def repl(session: ChatSession, *, read: Any = input, out: TextIO = sys.stdout) -> int:
    """The ``jaxgen chat`` loop: read a line, stream the reply; ``/reset``, ``/exit``."""
    print(f"jaxgen chat. {HELP}", file=out, flush=True)
    while True:
        try:
            line = read("> ")
        except (EOFError, KeyboardInterrupt):
            print(file=out)
            return 0
        line = line.strip()
        if not line:
            continue
        if line == "/exit":
            return 0
        if line == "/reset":
            session.reset()
            print("(conversation cleared)", file=out, flush=True)
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]}; {HELP}", file=out, flush=True)
            continue
        for piece in session.stream(line):
            print(piece, end="", file=out, flush=True)
        print(file=out, flush=True)


def add_arguments(parser: Any) -> None:
    """``jaxgen chat`` options."""
    parser.add_argument("--model", default=None,
                        help="Hugging Face directory or GGUF file (default: the bundled model)")
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default=None, help="float32 (default) or bfloat16")


def run(args: Any) -> int:
    """Load the model of ``args`` and chat in the terminal (see ``add_arguments``)."""
    import jaxgen

    lm = jaxgen.load(args.model, dtype=args.dtype)
    kwargs: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "rng": args.seed}
    if args.greedy:
        kwargs["do_sample"] = False
    if args.temperature is not None:
        kwargs.update(do_sample=True, temperature=args.temperature)
    try:
        session = ChatSession(lm, system=args.system, **kwargs)
    except ValueError as e:
        raise SystemExit(f"jaxgen chat: {e}") from e
    return repl(session)
