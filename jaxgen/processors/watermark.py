"""Green-list watermarking (Kirchenbauer et al. 2023) and its detector, jittable.

``Watermark`` mirrors transformers' ``WatermarkLogitsProcessor``: before each token, a
seed derived from the preceding token(s) picks a "green list" of
``floor(vocab_size * greenlist_ratio)`` tokens whose logits get ``+ bias``.
``watermark_score`` / ``detect_watermark`` recompute the green lists from the text
alone and return a z-score per row (high for watermarked text).

Seeding schemes (as transformers documents them):

- ``"lefthash"``: the green list for position ``j`` depends on the ``context_width``
  tokens before it: ``seed = hashing_key * sum(window)`` (the original repo's
  additive PRF; for the default ``context_width=1`` this is transformers'
  ``hashing_key * last_token``).
- ``"selfhash"``: the green list depends on the candidate token itself and the
  ``context_width - 1`` tokens before it: ``seed = min_i(hashing_key * h(w_i) * h(c))``
  over the window ``w`` that ends with the candidate ``c`` (anchored min-hash); only
  candidates among the 40 best that fall in their own green list get the bias.

Differences from transformers (on purpose, documented):

- Green lists are NOT transformers' lists: transformers draws them with
  ``torch.Generator.manual_seed(seed)`` + ``torch.randperm``, which JAX cannot
  reproduce. Here the same seeds (computed in uint32 arithmetic; ``h`` is a keyed
  integer hash instead of transformers' ``torch.randperm`` table) key a pseudo-random
  permutation ``pi`` of ``[0, vocab_size)``: a keyed bijective integer mixer on
  ``2**ceil(log2(vocab_size))`` values with cycle-walking. Token ``t`` is green iff
  ``pi(t) < greenlist_size``, so a green list has exactly ``greenlist_size`` tokens and
  membership of one token costs a few integer ops (no sort, no ``[vocab]`` shuffle).
  Text watermarked by transformers is therefore not detected here, and vice versa.
- transformers' ``lefthash`` code seeds from the last token only, whatever
  ``context_width`` says; here the whole window is used, as the argument documents.
- transformers skips the bias while the sequence is shorter than ``context_width``;
  here the bias starts as soon as the window exists (``context_width`` tokens for
  lefthash, ``context_width - 1`` for selfhash), which is exactly the set of tokens
  the detector scores.
- No ``device`` argument (arrays live where the logits are).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxgen.ops import as_column, as_leaf, check_int, check_number, is_int, set_leaves
from jaxgen.processors.base import Context, LogitsProcessor, pytree_dataclass

_SCHEMES = ("lefthash", "selfhash")
_SELFHASH_CANDIDATES = 40      # transformers' rejection-sampling width
_ROUNDS = 4
_GOLDEN = 0x9E3779B9


def _u32(x: int) -> Array:
    return jnp.asarray(np.uint32(x & 0xFFFFFFFF))


def _mix32(x: Array) -> Array:
    """A bijective uint32 mixer (``lowbias32``)."""
    x = x ^ (x >> 16)
    x = x * _u32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * _u32(0x846CA68B)
    return x ^ (x >> 16)


@pytree_dataclass
class Watermark(LogitsProcessor):
    """Add ``bias`` to the logits of the green-list tokens (transformers'
    ``WatermarkLogitsProcessor`` without ``device``; see the module docstring).

    vocab_size: the tokenizer's vocabulary size (static; the logits may be wider, e.g.
        padded embeddings: extra ids are never green).
    greenlist_ratio: in (0, 1); ``floor(vocab_size * greenlist_ratio)`` green tokens.
    bias: added to green logits. hashing_key: the secret key (taken mod 2**32).
    seeding_scheme: ``"lefthash"`` or ``"selfhash"`` (static).
    context_width: how many tokens seed the green list (static, >= 1).

    Not a sampling warper: it reads token ids. Stateless (reads ``ctx.sequences``).
    """

    vocab_size: int = struct.field(pytree_node=False, default=0)
    greenlist_ratio: Any = 0.25
    bias: Any = 2.0
    hashing_key: Any = 15485863
    seeding_scheme: str = struct.field(pytree_node=False, default="lefthash")
    context_width: int = struct.field(pytree_node=False, default=1)

    def __post_init__(self):
        if isinstance(self.greenlist_ratio, str):
            raise TypeError("Watermark has no `device` argument (transformers' second "
                            "positional argument); pass greenlist_ratio= etc. by keyword")
        check_int("Watermark.vocab_size", self.vocab_size, 2, static=True)
        check_number("Watermark.greenlist_ratio", self.greenlist_ratio,
                     lambda r: (r > 0) & (r < 1), "in (0, 1)", per_row=False)
        if self.seeding_scheme not in _SCHEMES:
            raise ValueError(f"Watermark.seeding_scheme must be one of {list(_SCHEMES)}, "
                             f"got {self.seeding_scheme!r}")
        check_int("Watermark.context_width", self.context_width, 1, static=True)
        key = self.hashing_key
        if is_int(key):
            key = int(key) & 0xFFFFFFFF
        object.__setattr__(self, "vocab_size", int(self.vocab_size))
        set_leaves(self, jnp.float32, "greenlist_ratio", "bias")
        object.__setattr__(self, "hashing_key", as_leaf(key, jnp.uint32))

    # --- the keyed hashing scheme ------------------------------------------------------

    @property
    def context_tokens(self) -> int:
        """How many tokens before a position its green list depends on."""
        return self.context_width - (self.seeding_scheme == "selfhash")

    def greenlist_size(self) -> Int[Array, ""]:
        """``floor(vocab_size * greenlist_ratio)``, traced."""
        return jnp.floor(self.vocab_size * self.greenlist_ratio).astype(jnp.int32)

    def _key(self) -> Array:
        return jnp.asarray(self.hashing_key, jnp.uint32)

    def _token_hash(self, tokens: Array) -> Array:
        """``h(t)``: a keyed odd (non-zero) uint32 per token (transformers'
        ``fixed_table[t] + 1``)."""
        return _mix32(tokens.astype(jnp.uint32) ^ _mix32(self._key() ^ _u32(_GOLDEN))) | 1

    def seeds(self, window: Int[Array, "*dims w"]) -> Array:
        """The uint32 seed of each window of ``context_width`` tokens.

        lefthash: ``window`` = the tokens before the position; selfhash: the window ends
        with the candidate token itself.
        """
        key = self._key()
        if self.seeding_scheme == "lefthash":
            return key * jnp.sum(window.astype(jnp.uint32), axis=-1, dtype=jnp.uint32)
        hashed = self._token_hash(window)                            # [..., w]
        return jnp.min(key * hashed * hashed[..., -1:], axis=-1)

    def permute(self, seed: Array, tokens: Int[Array, "*dims"]) -> Int[Array, "*dims"]:
        """``pi_seed(tokens)``: a pseudo-random permutation of ``[0, vocab_size)``
        (broadcasting ``seed`` against ``tokens``; ids outside the range map to
        ``vocab_size``, never green)."""
        v = self.vocab_size
        bits = max(1, math.ceil(math.log2(v)))
        mask, shift = _u32((1 << bits) - 1), _u32(max(1, bits // 2))
        seed = seed.astype(jnp.uint32)
        keys = [_mix32(seed ^ _u32(_GOLDEN * (r + 1))) for r in range(_ROUNDS)]
        mults = [_mix32(k) | 1 for k in keys]                        # odd: invertible

        def rounds(x):                                               # bijection on 2**bits
            for k, m in zip(keys, mults, strict=True):
                x = ((x + k) * m) & mask
                x = x ^ (x >> shift)
            return x

        x = tokens.astype(jnp.uint32)
        inside = x < v
        x = jnp.broadcast_to(rounds(jnp.where(inside, x, 0)),
                             jnp.broadcast_shapes(seed.shape, x.shape))
        # cycle-walk back into [0, v): the cycle of a t < v returns to [0, v)
        x = jax.lax.while_loop(lambda x: jnp.any(x >= v),
                               lambda x: jnp.where(x >= v, rounds(x), x), x)
        return jnp.where(inside, x, v).astype(jnp.int32)

    def is_green(self, seed: Array, tokens: Int[Array, "*dims"]) -> Bool[Array, "*dims"]:
        """Whether each token is in the green list of its seed."""
        return self.permute(seed, tokens) < self.greenlist_size()

    # --- the processor -----------------------------------------------------------------

    def __call__(self, logits: Float[Array, "batch vocab"], state: Any,
                 ctx: Context) -> tuple[Float[Array, "batch vocab"], Any]:
        ids = jnp.broadcast_to(jnp.arange(logits.shape[1], dtype=jnp.int32), logits.shape)
        return self.on_candidates(logits, ids, ctx), state

    def on_candidates(self, values: Float[Array, "batch n"], ids: Int[Array, "batch n"],
                      ctx: Context) -> Float[Array, "batch n"]:
        """The bias on the columns of ``values`` whose token ids are ``ids``.

        With ``ids = arange(vocab)`` this is ``__call__``; with ``TopK.candidates``
        (``[batch, k_max]``) it is ``__call__`` on the full row restricted to them, so
        the watermark can follow the sampling warpers, as in transformers >= 4.47,
        without leaving the sampler's candidate space.
        """
        b, n = values.shape
        c = self.context_tokens
        if ctx.sequences.shape[1] < c:                  # a one-shot call on a short prompt
            return values
        prev = ctx.tail(c)                                                         # [b, c]
        if self.seeding_scheme == "lefthash":
            green = self.is_green(self.seeds(prev)[:, None], ids)                  # [b, n]
        else:
            pos = jax.lax.top_k(values, min(_SELFHASH_CANDIDATES, n))[1]          # [b, m]
            cands = jnp.take_along_axis(ids, pos, axis=1)
            window = jnp.concatenate(
                [jnp.broadcast_to(prev[:, None, :], cands.shape + (c,)), cands[..., None]],
                axis=-1)                                                           # [b, m, w]
            ok = self.is_green(self.seeds(window), cands)                          # [b, m]
            green = jnp.zeros((b, n), bool).at[jnp.arange(b)[:, None], pos].set(ok)
        green = green & as_column(ctx.cur_len >= c)
        return values + jnp.where(green, self.bias, 0.0).astype(values.dtype)


# --- detection ---------------------------------------------------------------------------

@struct.dataclass
class WatermarkDetectorOutput:
    """Per-row detection results (transformers' ``WatermarkDetectorOutput`` fields).

    All fields are [batch] arrays. ``z_score`` is NaN for a row with nothing to score.
    """

    num_tokens_scored: Int[Array, " batch"]
    num_green_tokens: Int[Array, " batch"]
    green_fraction: Float[Array, " batch"]
    z_score: Float[Array, " batch"]
    p_value: Float[Array, " batch"]
    prediction: Bool[Array, " batch"]
    confidence: Float[Array, " batch"]


def green_tokens(watermark: Watermark, input_ids: Int[Array, "batch length"],
                 prompt_length: int | Array = 0, attention_mask: Any = None,
                 ignore_repeated_ngrams: bool = False
                 ) -> tuple[Bool[Array, "batch length"], Bool[Array, "batch length"]]:
    """``(green, scored)`` per position of ``input_ids``.

    A position ``j`` is scored iff its seeding window lies inside ``input_ids``
    (``j >= context_width``, or ``context_width - 1`` for selfhash), ``j >=
    prompt_length``, ``attention_mask[j] == 1`` (when given) and, with
    ``ignore_repeated_ngrams``, its n-gram (window + token, as transformers) did not
    occur at an earlier scored position.
    """
    ids = jnp.asarray(input_ids, jnp.int32)
    b, n = ids.shape
    c = watermark.context_tokens
    # windows[:, j] = ids[:, j - c : j] (+ the token itself for selfhash)   [b, n, w]
    padded = jnp.concatenate([jnp.zeros((b, c), jnp.int32), ids], axis=1)
    cols = [padded[:, i:i + n] for i in range(c)]
    ngrams = jnp.stack(cols + [ids], axis=-1)                           # [b, n, c + 1]
    window = ngrams if watermark.seeding_scheme == "selfhash" else ngrams[..., :c]
    green = watermark.is_green(watermark.seeds(window), ids)
    pos = jnp.arange(n)[None, :]
    scored = jnp.broadcast_to((pos >= c) & (pos >= prompt_length), (b, n))
    if attention_mask is not None:
        scored = scored & (jnp.asarray(attention_mask) == 1)
    if ignore_repeated_ngrams:
        same = jnp.all(ngrams[:, :, None, :] == ngrams[:, None, :, :], axis=-1)  # [b, n, n]
        earlier = jnp.tril(jnp.ones((n, n), bool), k=-1)[None]          # [., j, i]: i < j
        seen = jnp.any(same & earlier & scored[:, None, :], axis=-1)
        scored = scored & ~seen
    return green, scored


def detect_watermark(watermark: Watermark, input_ids: Int[Array, "batch length"],
                     prompt_length: int | Array = 0, attention_mask: Any = None,
                     z_threshold: float | Array = 3.0,
                     ignore_repeated_ngrams: bool = False) -> WatermarkDetectorOutput:
    """Score rows for ``watermark`` (pure, jittable with ``ignore_repeated_ngrams``
    static). z = (green - ratio * n) / sqrt(n * ratio * (1 - ratio)) over the scored
    tokens (see ``green_tokens``); ``prediction = z > z_threshold``.

    Pass ``prompt_length`` (the prompt's width in ``input_ids``) to score only the
    generated tokens, as transformers advises (it strips only a leading BOS).
    """
    green, scored = green_tokens(watermark, input_ids, prompt_length, attention_mask,
                                 ignore_repeated_ngrams)
    total = jnp.sum(scored, axis=-1)
    hits = jnp.sum(green & scored, axis=-1)
    ratio = jnp.asarray(watermark.greenlist_ratio, jnp.float32)
    nf = total.astype(jnp.float32)
    z = (hits - ratio * nf) / jnp.sqrt(nf * ratio * (1.0 - ratio))
    p_value = 0.5 * jax.scipy.special.erfc(z / math.sqrt(2.0))
    return WatermarkDetectorOutput(
        num_tokens_scored=total, num_green_tokens=hits, green_fraction=hits / nf,
        z_score=z, p_value=p_value, prediction=z > z_threshold, confidence=1.0 - p_value)


def watermark_score(watermark: Watermark, input_ids: Int[Array, "batch length"],
                    prompt_length: int | Array = 0,
                    attention_mask: Any = None) -> Float[Array, " batch"]:
    """The z-score of each row (see ``detect_watermark``); > 4 is strong evidence.

    Example::

        z = watermark_score(Watermark(vocab_size=500), sequences, prompt_length=8)
    """
    return detect_watermark(watermark, input_ids, prompt_length, attention_mask).z_score
