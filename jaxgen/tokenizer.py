"""A thin wrapper over `tokenizers.Tokenizer` producing left-padded numpy batches.

    tok = Tokenizer.from_file("path/to/hf_dir")          # or .../tokenizer.json
    tok = Tokenizer.from_gguf("model.gguf")              # vocabulary from the GGUF metadata
    batch = tok(["To be", "Once upon a time"])
    batch["input_ids"]        # int32 [2, t], left-padded with tok.pad_token_id
    batch["attention_mask"]   # int32 [2, t], 0 on padding
    tok.decode(batch["input_ids"][0], skip_special_tokens=True)
    tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)

Special tokens (bos/eos/pad) are read, first found wins, from: the keyword arguments of
`from_file`; ``tokenizer_config.json``; ``special_tokens_map.json``;
``generation_config.json``; ``config.json`` (all next to tokenizer.json). The pad id also
falls back to the tokenizer.json padding settings and finally to the eos id (the usual
choice for decoder-only models, whose pad positions are masked out anyway). The chat
template comes from ``chat_template.jinja`` or ``tokenizer_config.json`` (see
`jaxgen.chat_template`), and renders with the special token strings those files name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import tokenizers
from jaxtyping import Int

from jaxgen.chat_template import Message, load_chat_template, render_chat, select_template

if TYPE_CHECKING:
    from jaxgen.models.gguf import GGUFFile

_ID_SOURCES = ("generation_config.json", "config.json")
_TOKEN_SOURCES = ("tokenizer_config.json", "special_tokens_map.json")
# transformers' named special tokens (SPECIAL_TOKENS_ATTRIBUTES), seen by chat templates
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
                       "cls_token", "mask_token")


class Tokenizer:
    """Left-padding batch tokenizer with Hugging Face-style special token ids."""

    def __init__(self, tokenizer: tokenizers.Tokenizer, *, bos_token_id: int | None = None,
                 eos_token_id: int | None = None, pad_token_id: int | None = None,
                 special_tokens: dict[str, str] | None = None,
                 chat_template: str | dict[str, str] | None = None) -> None:
        # We pad (left) ourselves; tokenizer.json padding/truncation settings would fight it.
        self._tok = tokenizer
        self._tok.no_padding()
        self._tok.no_truncation()
        self._bos, self._eos = bos_token_id, eos_token_id
        self._pad = pad_token_id if pad_token_id is not None else eos_token_id
        self.special_tokens = dict(special_tokens or {})  # {"bos_token": "<s>", ...}
        self.chat_template = chat_template  # a template, {name: template}, or None

    @classmethod
    def from_file(cls, path: str | os.PathLike, *, bos_token: str | None = None,
                  eos_token: str | None = None, pad_token: str | None = None) -> Tokenizer:
        """Load ``tokenizer.json`` (a file path, or a directory holding it) and the special
        token ids from the config files beside it (see the module docstring)."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"tokenizer file {str(file)!r} does not exist")
        tok = tokenizers.Tokenizer.from_file(str(file))
        configs = {name: _read_json(file.parent / name) for name in _TOKEN_SOURCES + _ID_SOURCES}

        def resolve(key: str, explicit: str | None) -> int | None:
            if explicit is not None:
                return _token_id(tok, explicit, key)
            for name in _TOKEN_SOURCES:
                token = configs[name].get(key)
                if isinstance(token, dict):
                    token = token.get("content")
                if isinstance(token, str) and tok.token_to_id(token) is not None:
                    return tok.token_to_id(token)
            for name in _ID_SOURCES:
                value = configs[name].get(f"{key}_id")
                if isinstance(value, list):
                    value = value[0] if value else None
                if isinstance(value, int):
                    return value
            return None

        pad = resolve("pad_token", pad_token)
        if pad is None and tok.padding is not None:
            pad = tok.padding.get("pad_id")
        return cls(tok, bos_token_id=resolve("bos_token", bos_token),
                   eos_token_id=resolve("eos_token", eos_token), pad_token_id=pad,
                   special_tokens=_special_tokens(configs, bos=bos_token, eos=eos_token,
                                                  pad=pad_token),
                   chat_template=load_chat_template(file.parent))

    @classmethod
    def from_gguf(cls, file: str | os.PathLike | GGUFFile) -> Tokenizer:
        """The tokenizer of a GGUF file (a path or a parsed `jaxgen.models.gguf.GGUFFile`):
        vocabulary, special tokens and chat template from its metadata, built as
        transformers' ``AutoTokenizer.from_pretrained(dir, gguf_file=...)`` builds it."""
        from jaxgen.models.gguf import GGUFFile, read_gguf
        from jaxgen.tokenizer_gguf import tokenizer_from_gguf

        meta = (file if isinstance(file, GGUFFile) else read_gguf(file)).metadata
        tok, info = tokenizer_from_gguf(meta)
        return cls(tok, **info.ids, special_tokens=info.special_tokens,
                   chat_template=info.chat_template)

    # --------------------------------------------------------------------- properties

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The wrapped `tokenizers.Tokenizer`."""
        return self._tok

    @property
    def pad_token_id(self) -> int | None:
        return self._pad

    @property
    def eos_token_id(self) -> int | None:
        return self._eos

    @property
    def bos_token_id(self) -> int | None:
        return self._bos

    @property
    def vocab_size(self) -> int:
        """Vocabulary size including added tokens."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    # ----------------------------------------------------------------------- encoding

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of one text."""
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def __call__(self, texts: str | Sequence[str], add_special_tokens: bool = True
                 ) -> dict[str, Int[np.ndarray, "batch t"]]:
        """``{"input_ids", "attention_mask"}``, int32 ``[batch, t]``, left-padded with
        ``pad_token_id``. A single string gives a batch of one."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("texts is empty: pass a string or a non-empty list of strings")
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("texts must be a string or a list of strings")
        encoded = [e.ids for e in self._tok.encode_batch(texts,
                                                         add_special_tokens=add_special_tokens)]
        length = max(len(ids) for ids in encoded)
        if self._pad is None and any(len(ids) < length for ids in encoded):
            raise ValueError("padding needs a pad_token_id (or eos_token_id); pass pad_token= "
                             "to Tokenizer.from_file")
        pad = self._pad if self._pad is not None else 0
        input_ids = np.full((len(texts), length), pad, np.int32)
        mask = np.zeros((len(texts), length), np.int32)
        for row, ids in enumerate(encoded):
            if ids:
                input_ids[row, length - len(ids):] = ids
                mask[row, length - len(ids):] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    def apply_chat_template(self, conversation: Sequence[Message] | Sequence[Sequence[Message]],
                            *, tools: Sequence[dict[str, Any]] | None = None,
                            documents: Sequence[dict[str, Any]] | None = None,
                            chat_template: str | None = None,
                            add_generation_prompt: bool = False,
                            continue_final_message: bool | str = False,
                            tokenize: bool = True, return_dict: bool = True,
                            **kwargs: Any) -> Any:
        """Render a conversation (or a batch of them) with the chat template, as
        transformers' ``apply_chat_template`` does; extra keyword arguments reach the
        template.

        ``tokenize=False``: the text (a list of texts for a batch). ``tokenize=True``
        with ``return_dict=True`` (transformers' default): the left-padded batch of
        `__call__`, ``{"input_ids", "attention_mask"}`` int32 ``[batch, t]``, ready for
        ``lm.generate(**...)``; ``return_dict=False``: token ids, a list (or a list of
        lists for a batch). Special tokens come from the template text only (no BOS is
        added on top).
        """
        if not conversation:
            raise ValueError("cannot apply a chat template to an empty conversation")
        batched = isinstance(conversation[0], list | tuple)  # a batch of conversations
        conversations = list(conversation) if batched else [conversation]
        texts = render_chat(select_template(self.chat_template, chat_template, tools),
                            conversations, tools=tools, documents=documents,
                            add_generation_prompt=add_generation_prompt,
                            continue_final_message=continue_final_message,
                            special_tokens=self.special_tokens, **kwargs)
        if not tokenize:
            return texts if batched else texts[0]
        if return_dict:
            return self(texts, add_special_tokens=False)
        ids = [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]
        return ids if batched else ids[0]

    # ----------------------------------------------------------------------- decoding

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        """Text of one sequence of ids (list, numpy or jax array, or a scalar)."""
        ids = np.asarray(ids)
        if ids.ndim > 1:
            raise ValueError(f"decode takes one sequence, got shape {ids.shape}; use batch_decode")
        return self._tok.decode([int(i) for i in ids.reshape(-1)],
                                skip_special_tokens=skip_special_tokens)

    def batch_decode(self, sequences: Any, skip_special_tokens: bool = False) -> list[str]:
        """Texts of a batch of sequences (a 2-D array or a list of id lists)."""
        if isinstance(sequences, list | tuple):
            return [self.decode(s, skip_special_tokens) for s in sequences]
        arr = np.asarray(sequences)
        if arr.ndim != 2:
            raise ValueError(f"batch_decode takes [batch, t] ids, got shape {arr.shape}")
        return [self.decode(row, skip_special_tokens) for row in arr]

    def convert_ids_to_tokens(self, ids: int | Sequence[int] | Any
                              ) -> str | None | list[str | None]:
        """Token strings of ids (None for an unknown id); a scalar gives a single string."""
        arr = np.asarray(ids)
        if arr.ndim == 0:
            return self._tok.id_to_token(int(arr))
        return [self._tok.id_to_token(int(i)) for i in arr.reshape(-1)]

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, bos_token_id={self._bos}, "
                f"eos_token_id={self._eos}, pad_token_id={self._pad})")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def _special_tokens(configs: dict[str, dict[str, Any]], **explicit: str | None
                    ) -> dict[str, str]:
    """The special token strings the tokenizer config files name (first file wins), with
    model-specific ones (``extra_special_tokens``); explicit ``bos``/``eos``/``pad`` win."""
    out: dict[str, str] = {}
    for name in reversed(_TOKEN_SOURCES):
        config = configs[name]
        extra = config.get("extra_special_tokens")
        for key, token in [*(extra.items() if isinstance(extra, dict) else []),
                           *((k, config.get(k)) for k in SPECIAL_TOKEN_NAMES)]:
            token = token.get("content") if isinstance(token, dict) else token
            if isinstance(token, str):
                out[key] = token
    out |= {f"{k}_token": v for k, v in explicit.items() if v is not None}
    return out


def _token_id(tok: tokenizers.Tokenizer, token: str, what: str) -> int:
    token_id = tok.token_to_id(token)
    if token_id is None:
        raise ValueError(f"{what} {token!r} is not in the tokenizer vocabulary")
    return token_id
