"""A `tokenizers.Tokenizer` from a GGUF file's ``tokenizer.ggml.*`` metadata.

Built the way transformers builds it from the same file (its GGUF tokenizer converters,
``integrations/gguf/gguf_tokenizer_mapping.py``), without importing transformers::

    backend, info = tokenizer_from_gguf(read_gguf("model.gguf").metadata)
    info.special_tokens      # {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", ...}
    info.chat_template       # the Jinja template, or None

Three vocabularies (``tokenizer.ggml.model``): ``gpt2`` (byte-level BPE with the file's
merges and, for known ``tokenizer.ggml.pre`` values, the model's split regex),
``llama`` (SentencePiece BPE with byte fallback; merges rebuilt from the scores), and
``llama`` on a Gemma architecture (Gemma's normalizer, merges rebuilt from the token
order). Control tokens (type 3) become special added tokens, user-defined ones (type 4)
plain added tokens, so neither is cut into pieces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    normalizers,
    pre_tokenizers,
    processors,
)
from tokenizers.models import BPE

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types
_SPACE = "\u2581"
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
           r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
          r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN35 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
           r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
           r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
           r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT4O = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
          r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
          r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# tokenizer.ggml.pre -> the split regex its merges were learned with (transformers' table)
SPLITS = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral",
                     "midm-2.0", "lfm2", "jina-v5-nano", "dbrx", "smaug-bpe"), _LLAMA3),
    "tekken": _TEKKEN, "qwen35": _QWEN35,
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2),
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O),
}
_GEMMA_ARCHS = ("gemma", "gemma2", "gemma3")
_NAMED = {"bos_token": "bos", "eos_token": "eos", "unk_token": "unknown",
          "pad_token": "padding"}


@dataclasses.dataclass(frozen=True)
class GGUFTokenizerInfo:
    """What a GGUF file says about its tokenizer besides the vocabulary."""

    special_tokens: dict[str, str]  # bos_token/eos_token/unk_token/pad_token -> token
    ids: dict[str, int]  # bos_token_id/eos_token_id/pad_token_id -> id
    chat_template: str | dict[str, str] | None  # dict: named templates ("default", ...)
    add_bos_token: bool
    add_eos_token: bool


def tokenizer_from_gguf(meta: dict[str, Any]) -> tuple[Tokenizer, GGUFTokenizerInfo]:
    """The backend tokenizer and `GGUFTokenizerInfo` of GGUF metadata ``meta``; ValueError
    for a file without a vocabulary or of an unsupported ``tokenizer.ggml.model``."""
    kind = meta.get("tokenizer.ggml.model")
    if "tokenizer.ggml.tokens" not in meta:
        raise ValueError("the GGUF file holds no tokenizer (no tokenizer.ggml.tokens)")
    arch = meta.get("general.architecture")
    builders: dict[str, Callable[[dict[str, Any]], Tokenizer]] = {
        "gpt2": _byte_level, "llama": _gemma if arch in _GEMMA_ARCHS else _sentencepiece}
    if kind not in builders:
        raise ValueError(f"GGUF tokenizer model {kind!r} is not supported; supported: "
                         f"{sorted(builders)}")
    tok = builders[kind](meta)
    info = _info(meta, kind)
    _add_tokens(tok, meta, kind == "gpt2", list(info.special_tokens.values()))
    _set_post_processor(tok, info)
    return tok, info


def _info(meta: dict[str, Any], kind: str) -> GGUFTokenizerInfo:
    tokens = meta["tokenizer.ggml.tokens"]
    ids = {name: meta[f"tokenizer.ggml.{key}_token_id"] for name, key in _NAMED.items()
           if f"tokenizer.ggml.{key}_token_id" in meta}
    templates = {name: meta[f"tokenizer.chat_template.{name}"]
                 for name in meta.get("tokenizer.chat_templates", [])
                 if f"tokenizer.chat_template.{name}" in meta}
    template = meta.get("tokenizer.chat_template")
    if templates:
        template = {**({"default": template} if template else {}), **templates}
    # llama.cpp adds BOS to a SentencePiece vocabulary unless the file says otherwise
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", kind == "llama"))
    return GGUFTokenizerInfo(
        special_tokens={name: tokens[i] for name, i in ids.items() if 0 <= i < len(tokens)},
        ids={f"{name}_id": i for name, i in ids.items() if name != "unk_token"},
        chat_template=template, add_bos_token=add_bos,
        add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)))


# ----------------------------------------------------------------------- vocabularies


def _byte_level(meta: dict[str, Any]) -> Tokenizer:
    """GPT-2-style byte-level BPE (transformers' GPT2Tokenizer)."""
    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab = {t if set(t) <= alphabet else "".join(spelling[b] for b in t.encode("utf-8")): i
             for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    tok = Tokenizer(BPE(vocab=vocab, merges=_merges(meta, vocab), dropout=None,
                        continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    split = SPLITS.get(meta.get("tokenizer.ggml.pre"))
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def _sentencepiece(meta: dict[str, Any]) -> Tokenizer:
    """SentencePiece BPE with byte fallback (transformers' LlamaTokenizer, which adds the
    prefix space to the first word only)."""
    vocab = {t: i for i, t in enumerate(meta["tokenizer.ggml.tokens"])}
    scores = dict(zip(meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.scores", []),
                      strict=False))
    tok = Tokenizer(BPE(vocab=vocab, merges=_merges(meta, vocab, scores), fuse_unk=True,
                        byte_fallback=True, dropout=None))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="first",
                                                 split=False)
    tok.decoder = decoders.Sequence([decoders.Replace(_SPACE, " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(content=" ", left=1)])
    return tok


def _gemma(meta: dict[str, Any]) -> Tokenizer:
    """Gemma's SentencePiece BPE (transformers' GemmaTokenizer). Whitespace tokens with a
    space are stored with real spaces: respelled with ``▁``; the file has no merges, and
    they are rebuilt in the order the tokens appear (Gemma's scores do not follow it)."""
    tokens = [_SPACE * len(t) if " " in t and not t.strip() else t
              for t in meta["tokenizer.ggml.tokens"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    positions = {t: -i for i, t in enumerate(tokens)}
    tok = Tokenizer(BPE(vocab=vocab, merges=_merges(meta, vocab, positions), fuse_unk=True,
                        unk_token="<unk>", dropout=None, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", _SPACE)
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous",
                                             invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace(_SPACE, " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    return tok


def _merges(meta: dict[str, Any], vocab: dict[str, int],
            scores: dict[str, float] | None = None) -> list[tuple[str, str]]:
    """The file's merges, else the ones the vocabulary implies (transformers'
    ``generate_merges``: every split of a token into two tokens, best score first)."""
    if "tokenizer.ggml.merges" in meta:
        return [tuple(m.split(" ")) for m in meta["tokenizer.ggml.merges"]]  # type: ignore
    if scores is None:
        scores = dict(zip(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"],
                          strict=True))
    merges = []
    for token, score in scores.items():
        local = [(token[:i], token[i:], score) for i in range(1, len(token))
                 if token[:i] in vocab and token[i:] in vocab]
        merges += sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(a, b) for a, b, _ in merges]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in bs]
    return dict(zip(bs + extra, map(chr, bs + [256 + n for n in range(len(extra))]),
                    strict=True))


# ------------------------------------------------------------------- special handling


def _add_tokens(tok: Tokenizer, meta: dict[str, Any], byte_level: bool,
                named: list[str]) -> None:
    """Control tokens -> special added tokens; user-defined ones in the vocabulary -> plain
    added tokens. A byte-level 'control' token written outside the byte alphabet is a
    llama.cpp mislabel and is skipped (as transformers does)."""
    tokens, types = meta["tokenizer.ggml.tokens"], meta.get("tokenizer.ggml.token_type") or []
    alphabet = set(pre_tokenizers.ByteLevel.alphabet()) if byte_level else None
    control = [t for t, kind in zip(tokens, types, strict=False) if kind == _CONTROL
               and (alphabet is None or set(t) <= alphabet)]
    vocab = tok.get_vocab()
    special = list(dict.fromkeys(control + [t for t in named if t in vocab]))
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in special])
    vocab = tok.get_vocab(with_added_tokens=True)
    tok.add_tokens([AddedToken(t, normalized=False, special=False)
                    for t, kind in zip(tokens, types, strict=False)
                    if kind == _USER_DEFINED and t in vocab])


def _set_post_processor(tok: Tokenizer, info: GGUFTokenizerInfo) -> None:
    """BOS/EOS around each sequence as the file asks (transformers' update_post_processor)."""
    bos, eos = info.special_tokens.get("bos_token"), info.special_tokens.get("eos_token")
    add_bos, add_eos = info.add_bos_token and bos is not None, \
        info.add_eos_token and eos is not None
    single = f"{f'{bos}:0 ' if add_bos else ''}$A:0{f' {eos}:0' if add_eos else ''}"
    pair = f"{single}{f' {bos}:1' if add_bos else ''} $B:1{f' {eos}:1' if add_eos else ''}"
    specials = [(t, tok.token_to_id(t)) for t, on in ((bos, add_bos), (eos, add_eos)) if on]
    tok.post_processor = processors.TemplateProcessing(single=single, pair=pair,
                                                       special_tokens=specials)
