"""Token healing (``token_healing=True``): transformers 5.24 ``GenerationMixin.heal_tokens``.

A prompt that ends mid-word ("The quick bro") ends with a token the model rarely saw
there. Per row, on the host, before generation:

1. decode the row (special tokens skipped), strip whitespace, re-tokenize; bos -> pad;
2. the tail token's text (spaces written as the tokenizer's space token) is a prefix of
   the "extensions": every vocabulary token that starts with it;
3. if there are others than the tail itself, the tail is trimmed and regrown: one greedy
   step on the trimmed prompt with a bias of +10 on every extension (+11 on the tail).

All rows that heal share one batched forward pass. Differences from transformers: each
row heals its own last token (transformers re-pads the batch on the right and heals a
shorter row's padding), the step is always greedy (transformers' inherits the model's
``generation_config``, so it samples when that does), and a tail whose text is no
vocabulary token's prefix is left alone (transformers then skips it or fails).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxgen.models.base import forward
from jaxgen.ops import bucket

BIAS, TAIL_BIAS = 10.0, 1.0   # transformers' sequence_bias of the alternatives, the tail's extra


def retokenize(tokenizer: Any, ids: np.ndarray) -> list[int]:
    """A row's ids decoded, stripped and encoded again, bos replaced by pad."""
    text = tokenizer.decode(ids, skip_special_tokens=True).strip()
    out = tokenizer.encode(text) if text else []
    bos, pad = tokenizer.bos_token_id, tokenizer.pad_token_id
    return [pad if (t == bos and bos is not None and pad is not None) else t for t in out]


def alternatives(tokenizer: Any, tail: int) -> list[int]:
    """Ids of the vocabulary tokens that extend the ``tail`` token's text (the tail first);
    empty when the text is no token's prefix."""
    backend = tokenizer.backend
    space = backend.token_to_id(" ")
    text = tokenizer.decode([tail])
    if space is not None:
        text = text.replace(" ", backend.id_to_token(space)[0])
    ext = [i for tok, i in backend.get_vocab().items() if tok.startswith(text) and tok]
    if not text or tail not in ext:
        return []
    return [tail] + sorted(set(ext) - {tail})


def heal(model: Any, params: Any, ids: np.ndarray, mask: np.ndarray, tokenizer: Any, *,
         pad: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Healed, left-padded ``(ids, mask)`` (see the module docstring); the width may change
    with the re-tokenization."""
    if tokenizer is None:
        raise ValueError("GenerationConfig.token_healing=True needs the tokenizer: pass "
                         "tokenizer= to generate() (lm.generate passes its own)")
    rows = [retokenize(tokenizer, r[m == 1]) for r, m in zip(ids, mask, strict=True)]
    plans = [(i, alternatives(tokenizer, r[-1])) for i, r in enumerate(rows) if len(r) > 1]
    plans = [(i, alts) for i, alts in plans if len(alts) > 1]
    if plans:
        width = bucket(max(len(rows[i]) - 1 for i, _ in plans), 16)
        trimmed = np.zeros((len(plans), width), np.int32)
        tmask = np.zeros_like(trimmed)
        bias = np.zeros((len(plans), model.vocab_size), np.float32)
        for j, (i, alts) in enumerate(plans):
            head = rows[i][:-1]
            trimmed[j, width - len(head):], tmask[j, width - len(head):] = head, 1
            bias[j, alts] = BIAS
            bias[j, alts[0]] += TAIL_BIAS
        logits = np.asarray(forward(model, params, trimmed, tmask)[0][:, -1])
        for j, (i, _) in enumerate(plans):
            rows[i] = rows[i][:-1] + [int(np.argmax(logits[j] + bias[j]))]
    return _left_pad(rows, 0 if pad is None else pad)


def _left_pad(rows: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    if any(not r for r in rows):
        raise ValueError("token_healing: a prompt is empty after stripping its whitespace")
    width = max(map(len, rows))
    ids = np.full((len(rows), width), pad, np.int32)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
    return ids, mask
