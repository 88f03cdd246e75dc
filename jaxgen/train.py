"""A small optax trainer for `Llama` (used to build the bundled default model).

    jaxgen train --data tinyshakespeare.txt --out DIR --steps 3000 --d-model 256 --layers 6

What it does, in order:

1. splits the text by characters: the first ``1 - holdout`` for training, the rest held
   out (never trained on, also not by the tokenizer);
2. trains a byte-level BPE tokenizer on the training part (``<|endoftext|>`` is id 0 and
   the bos/eos/pad token; digits are always split into single-digit tokens), or, with
   ``--tokenizer DIR``, reuses ``DIR/tokenizer.json`` (e.g. to train a draft model for a
   model that shares its vocabulary; ``--vocab-size`` is then ignored);
3. trains a Llama (tied embeddings) with AdamW, linear warmup + cosine decay and
   global-norm clipping on random contiguous windows of the training tokens; the forward
   pass is `Llama.apply` itself (a cache as long as the window);
4. every ``eval_every`` steps evaluates the whole held-out part (see `evaluate_nll`) and
   writes the best checkpoint so far (Hugging Face layout: config.json,
   model.safetensors, tokenizer.json, tokenizer_config.json, generation_config.json)
   plus ``train_metrics.json``.

The same seed gives the same tokenizer, the same batches and the same loss curve.
Token streams start with ``<|endoftext|>`` (a document start), so the first real token of
a text is also predicted and the total NLL covers every character.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jaxtyping import Array, Float, Int

from jaxgen.models.checkpoint import load_checkpoint, resolve_dtype, save_checkpoint
from jaxgen.models.llama import Llama, LlamaConfig

EOS = "<|endoftext|>"

#: Sampling defaults written to generation_config.json (transformers' names and meaning).
GENERATION_DEFAULTS: dict[str, Any] = {
    "do_sample": True, "temperature": 0.8, "top_k": 50, "top_p": 0.95, "max_new_tokens": 200,
}


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSize:
    """Architecture knobs of the trained Llama; the vocabulary comes from the tokenizer.

    ``intermediate_size=None``: 8/3 of ``d_model`` rounded up to a multiple of 64 (SwiGLU).
    """

    d_model: int = 256
    layers: int = 6
    heads: int = 8
    kv_heads: int = 2
    intermediate_size: int | None = None
    rope_theta: float = 10000.0

    def llama_config(self, vocab_size: int, eos_id: int, max_positions: int) -> LlamaConfig:
        inter = self.intermediate_size or 64 * math.ceil(8 * self.d_model / 3 / 64)
        return LlamaConfig(vocab_size=vocab_size, hidden_size=self.d_model,
                           intermediate_size=inter, num_hidden_layers=self.layers,
                           num_attention_heads=self.heads, num_key_value_heads=self.kv_heads,
                           rms_norm_eps=1e-5, rope_theta=self.rope_theta,
                           max_position_embeddings=max_positions, tie_word_embeddings=True,
                           bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Optimisation and bookkeeping knobs (the CLI flags of ``jaxgen train``)."""

    steps: int = 2000
    batch_size: int = 32
    seq_len: int = 256
    lr: float = 1e-3  # peak learning rate, reached after warmup_steps
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # the cosine decays to lr * min_lr_ratio at the last step
    weight_decay: float = 0.1  # on matrices only (not norms)
    beta1: float = 0.9
    beta2: float = 0.95
    clip_norm: float = 1.0  # global gradient norm
    eval_every: int = 250
    patience: int | None = None  # stop after this many evaluations without improvement
    eval_batch_size: int = 16
    vocab_size: int = 2048
    holdout: float = 0.1  # the last fraction of the characters is held out
    tokenizer: str | None = None  # reuse DIR/tokenizer.json instead of training one
    seed: int = 0
    dtype: str = "float32"  # dtype of the saved weights (training is always float32)
    log_every: int = 10

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "eval_every", "eval_batch_size",
                     "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.holdout < 1:
            raise ValueError(f"holdout must be in (0, 1), got {self.holdout}")
        resolve_dtype(self.dtype)


# ------------------------------------------------------------------------ data + tokenizer


def split_text(text: str, holdout: float = 0.1) -> tuple[str, str]:
    """``(train, heldout)``: the first ``1 - holdout`` of the characters, and the rest."""
    n = int(len(text) * (1 - holdout))
    return text[:n], text[n:]


def train_tokenizer(text: str, vocab_size: int = 2048) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` trained on ``text``.

    ``<|endoftext|>`` is id 0; all 256 bytes are in the alphabet; digits are pre-split one
    by one, so "0".."9" are single tokens and never merged.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([text], trainer=trainer)
    return tok


def save_tokenizer(tok: Any, out: str | os.PathLike, model_max_length: int) -> None:
    """Write ``tokenizer.json`` and a ``tokenizer_config.json`` that jaxgen and
    transformers' ``AutoTokenizer`` both read (bos = eos = pad = ``<|endoftext|>``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS, "eos_token": EOS,
              "pad_token": EOS, "unk_token": None, "add_bos_token": False,
              "add_eos_token": False, "clean_up_tokenization_spaces": False,
              "model_max_length": model_max_length}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def load_tokenizer(directory: str | os.PathLike) -> Any:
    """The `tokenizers.Tokenizer` of ``directory/tokenizer.json``; it must contain
    ``<|endoftext|>`` (the document start and eos token)."""
    from tokenizers import Tokenizer

    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"--tokenizer {directory}: no tokenizer.json there")
    tok = Tokenizer.from_file(str(path))
    if tok.token_to_id(EOS) is None:
        raise ValueError(f"--tokenizer {directory}: the tokenizer has no {EOS} token")
    return tok


def encode(tok: Any, text: str) -> np.ndarray:
    """int32 ids of ``text`` behind the document-start token (``[eos] + ids``).

    ``tok``: a `tokenizers.Tokenizer` or a `jaxgen.tokenizer.Tokenizer`."""
    ids = tok.encode(text)
    ids = getattr(ids, "ids", ids)
    eos = tok.token_to_id(EOS) if hasattr(tok, "token_to_id") else tok.eos_token_id
    return np.asarray([eos, *ids], np.int32)


# ------------------------------------------------------------------------------- model


def init_params(model: Llama, rng: jax.Array) -> dict[str, Any]:
    """`Llama.init_params`, with the residual output projections (``o_proj``,
    ``down_proj``) scaled by ``1/sqrt(2 * layers)`` (GPT-2's init)."""
    params = model.init_params(rng)
    scale = (2 * model.config.num_hidden_layers) ** -0.5

    def rescale(path, x):
        names = {getattr(k, "key", None) for k in path}
        return x * scale if names & {"o_proj", "down_proj"} else x

    return jax.tree_util.tree_map_with_path(rescale, params)


def token_nll(model: Llama, params: Any, tokens: Int[Array, "batch t1"]
              ) -> Float[Array, "batch t"]:
    """Per-token NLL (nats) of ``tokens[:, 1:]`` given ``tokens[:, :-1]``, through
    `Llama.apply` with a cache as long as the window (positions 0..t-1, no padding)."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    b, t = inputs.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    logits, _ = model.apply(params, inputs, positions, model.init_cache(b, t),
                            jnp.ones((b, t), jnp.int32))
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets)


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


# ------------------------------------------------------------------------------ training


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """Clip by global norm, then AdamW (decay on >= 2-D parameters) with linear warmup
    to ``lr`` and cosine decay to ``lr * min_lr_ratio`` at ``steps``."""
    warmup = min(cfg.warmup_steps, max(cfg.steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
        decay_steps=max(cfg.steps, warmup + 1), end_value=cfg.lr * cfg.min_lr_ratio)
    return optax.chain(
        optax.clip_by_global_norm(cfg.clip_norm),
        optax.adamw(schedule, b1=cfg.beta1, b2=cfg.beta2, weight_decay=cfg.weight_decay,
                    mask=lambda p: jax.tree.map(lambda x: x.ndim >= 2, p)))


def random_windows(data: Int[Array, " n"], key: jax.Array, batch: int, length: int
                   ) -> Int[Array, "batch length"]:
    """``batch`` random contiguous windows of ``length`` tokens from ``data``."""
    starts = jax.random.randint(key, (batch,), 0, data.shape[0] - length + 1)
    return jax.vmap(lambda s: lax.dynamic_slice(data, (s,), (length,)))(starts)


def make_train_step(model: Llama, tx: optax.GradientTransformation, batch: int,
                    seq_len: int) -> Callable[..., tuple[Any, Any, Array, Array]]:
    """Jitted ``step(params, opt_state, data, key, step) -> (params, opt_state, loss,
    grad_norm)``; params and opt_state are donated. The batch is drawn inside the step
    from ``fold_in(key, step)``."""

    def step_fn(params, opt_state, data, key, step):
        tokens = random_windows(data, jax.random.fold_in(key, step), batch, seq_len + 1)
        loss, grads = jax.value_and_grad(
            lambda p: token_nll(model, p, tokens).mean())(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, optax.tree.norm(grads)

    return jax.jit(step_fn, donate_argnums=(0, 1))


# ---------------------------------------------------------------------------- evaluation


def eval_windows(ids: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping windows covering every target of ``ids`` exactly once.

    Window ``w`` is ``ids[w*T : w*T + T + 1]`` (right-padded), so its T targets are
    ``ids[w*T+1 : w*T+T+1]``. Returns ``tokens [n, T+1]`` and ``weights [n, T]`` (0 on
    padding)."""
    n_targets = len(ids) - 1
    n = max(1, math.ceil(n_targets / seq_len))
    tokens = np.full((n, seq_len + 1), ids[0], np.int32)
    weights = np.zeros((n, seq_len), np.float32)
    for w in range(n):
        chunk = ids[w * seq_len: w * seq_len + seq_len + 1]
        tokens[w, :len(chunk)] = chunk
        weights[w, :len(chunk) - 1] = 1.0
    return tokens, weights


_nll_sum = jax.jit(lambda model, params, tokens, weights:
                   (token_nll(model, params, tokens) * weights).sum(), static_argnums=0)


def evaluate_nll(model: Llama, params: Any, ids: np.ndarray, seq_len: int,
                 batch_size: int = 16) -> tuple[float, int]:
    """``(total NLL in nats, number of predicted tokens)`` of ``ids[1:]`` (see
    `eval_windows`), in batches of a fixed shape (one compile)."""
    tokens, weights = eval_windows(ids, seq_len)
    n = tokens.shape[0]
    pad = (-n) % batch_size
    tokens = np.concatenate([tokens, np.repeat(tokens[:1], pad, 0)])
    weights = np.concatenate([weights, np.zeros((pad, seq_len), np.float32)])
    total = 0.0
    for i in range(0, tokens.shape[0], batch_size):
        total += float(_nll_sum(model, params, tokens[i:i + batch_size],
                                weights[i:i + batch_size]))
    return total, int(weights.sum())


def nats_per_char(model: Llama, params: Any, tok: Any, text: str, seq_len: int,
                  batch_size: int = 16) -> dict[str, float]:
    """Total NLL of ``text`` (behind a document start, in non-overlapping windows of
    ``seq_len`` tokens) per character and per token.

    Returns ``{"nats_per_char", "loss_per_token", "tokens", "chars"}``."""
    ids = encode(tok, text)
    total, n = evaluate_nll(model, params, ids, seq_len, batch_size)
    return {"nats_per_char": total / len(text), "loss_per_token": total / n, "tokens": n,
            "chars": len(text)}


# ---------------------------------------------------------------------------- progress


class Progress:
    """One status line on stderr: ``\\r``-rewritten on a terminal, one line per update
    otherwise (log files)."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total, self.stream = total, stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()

    def update(self, step: int, **fields: Any) -> None:
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(step, 1) * (self.total - step)
        width = len(str(self.total))
        bar = "#" * int(20 * step / self.total)
        text = " | ".join([f"{step:>{width}}/{self.total} [{bar:<20}]",
                           *(f"{k} {v}" for k, v in fields.items()),
                           f"{_hms(elapsed)} < {_hms(eta)}"])
        if self.tty:
            self.stream.write("\r" + text + "\x1b[K")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        self.stream.write(("\n" if self.tty else "") + text + "\n")
        self.stream.flush()


def _hms(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m:02d}:{s:02d}"


# ---------------------------------------------------------------------------------- train


def save_model(out: Path, model: Llama, params: Any, tok: Any, cfg: TrainConfig) -> None:
    """Checkpoint (weights cast to ``cfg.dtype``), tokenizer and generation config."""
    dtype = resolve_dtype(cfg.dtype)
    saved = Llama(model.config, dtype)
    eos = tok.token_to_id(EOS)
    gen = {**GENERATION_DEFAULTS, "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos}
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_checkpoint(saved, jax.tree.map(lambda x: x.astype(dtype), params), tmp,
                    generation_config=gen)
    save_tokenizer(tok, tmp, cfg.seq_len)
    if cfg.tokenizer is not None:  # the reused files, byte for byte
        for name in ("tokenizer.json", "tokenizer_config.json"):
            if (Path(cfg.tokenizer) / name).is_file():
                shutil.copyfile(Path(cfg.tokenizer) / name, tmp / name)
    out.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0)
    os.umask(umask)
    for f in tmp.iterdir():  # replace the files one by one: the directory stays loadable
        f.chmod(0o666 & ~umask)  # safetensors writes 0600; shipped files must be readable
        os.replace(f, out / f.name)
    tmp.rmdir()


def train(text: str, out: str | os.PathLike, cfg: TrainConfig = TrainConfig(),
          size: ModelSize = ModelSize(), *, stream: Any = None) -> dict[str, Any]:
    """Train tokenizer + model on ``text`` (see the module docstring); write the best
    checkpoint to ``out``. Returns the metrics also saved as ``out/train_metrics.json``:
    the per-step training losses, every evaluation, and the best checkpoint's figures
    (held-out loss per token and nats per character, recomputed from the saved weights)."""
    t_start = time.perf_counter()
    out = Path(out)
    train_text, heldout_text = split_text(text, cfg.holdout)
    tok = (load_tokenizer(cfg.tokenizer) if cfg.tokenizer is not None
           else train_tokenizer(train_text, cfg.vocab_size))
    train_ids, heldout_ids = encode(tok, train_text), encode(tok, heldout_text)
    if len(train_ids) <= cfg.seq_len + 1:
        raise ValueError(f"the training text has {len(train_ids)} tokens, fewer than "
                         f"seq_len + 2 = {cfg.seq_len + 2}")
    # A fixed sample of training windows (a quarter of the held-out size, evenly spread):
    # the train loss measured like the held-out loss.
    n_win = math.ceil((len(heldout_ids) - 1) / cfg.seq_len / 4)
    starts = np.linspace(0, len(train_ids) - cfg.seq_len - 1, n_win).astype(int)
    train_probe = [train_ids[s:s + cfg.seq_len + 1] for s in starts]

    eos = tok.token_to_id(EOS)
    model = Llama(size.llama_config(tok.get_vocab_size(), eos, cfg.seq_len))
    key = jax.random.key(cfg.seed)
    params = init_params(model, jax.random.fold_in(key, 0))
    tx = make_optimizer(cfg)
    opt_state = tx.init(params)
    step_fn = make_train_step(model, tx, cfg.batch_size, cfg.seq_len)
    data, data_key = jnp.asarray(train_ids), jax.random.fold_in(key, 1)
    n_params = count_params(params)

    progress = Progress(cfg.steps, stream)
    progress.message(
        f"jaxgen train: {n_params:,} parameters ({size.layers} layers, d_model "
        f"{size.d_model}, {size.heads}/{size.kv_heads} heads), vocab {tok.get_vocab_size()}, "
        f"{len(train_ids):,} train / {len(heldout_ids):,} held-out tokens, "
        f"{len(train_text) / (len(train_ids) - 1):.2f} chars/token")

    def eval_probe(p: Any) -> float:
        total = sum(float(_nll_sum(model, p, np.stack(train_probe[i:i + cfg.eval_batch_size]),
                                   np.ones((len(train_probe[i:i + cfg.eval_batch_size]),
                                            cfg.seq_len), np.float32)))
                    for i in range(0, len(train_probe), cfg.eval_batch_size))
        return total / (len(train_probe) * cfg.seq_len)

    losses: list[float] = []
    evals: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    pending: list[Array] = []
    t_train = time.perf_counter()
    t_log, step_log, bad_evals, step = t_train, 0, 0, 0
    fields: dict[str, str] = {}
    for step in range(1, cfg.steps + 1):
        params, opt_state, loss, _ = step_fn(params, opt_state, data, data_key,
                                             jnp.asarray(step, jnp.int32))
        pending.append(loss)
        is_eval = step % cfg.eval_every == 0 or step == cfg.steps
        if step % cfg.log_every == 0 or is_eval:
            losses.extend(float(x) for x in jax.device_get(pending))
            pending.clear()
            now = time.perf_counter()
            tps = (step - step_log) * cfg.batch_size * cfg.seq_len / (now - t_log)
            fields.update(loss=f"{np.mean(losses[-cfg.log_every:]):.3f}",
                          **{"tok/s": f"{tps:,.0f}"})
            progress.update(step, **fields)
        if is_eval:
            t_eval = time.perf_counter()
            total, n = evaluate_nll(model, params, heldout_ids, cfg.seq_len, cfg.eval_batch_size)
            record = {"step": step, "heldout_loss": total / n,
                      "heldout_nats_per_char": total / len(heldout_text),
                      "train_loss": eval_probe(params),
                      "seconds": round(time.perf_counter() - t_train, 1)}
            evals.append(record)
            improved = best is None or record["heldout_loss"] < best["heldout_loss"]
            if improved:
                best, bad_evals = record, 0
                save_model(out, model, params, tok, cfg)
            else:
                bad_evals += 1
            fields["held-out"] = (f"{record['heldout_loss']:.3f} "
                                  f"(best {best['heldout_loss']:.3f} @ {best['step']})")
            progress.message(
                f"eval @ {step}: held-out {record['heldout_loss']:.4f}/token "
                f"{record['heldout_nats_per_char']:.4f}/char, train "
                f"{record['train_loss']:.4f}/token{' (saved)' if improved else ''}")
            t_log += time.perf_counter() - t_eval  # evaluation time is not training speed
            if cfg.patience is not None and bad_evals >= cfg.patience:
                progress.message(f"early stop: no improvement in {bad_evals} evaluations")
                break
        if step % cfg.log_every == 0 or is_eval:
            t_log, step_log = time.perf_counter(), step
    train_seconds = time.perf_counter() - t_train

    # The figures of the checkpoint as saved (weights in cfg.dtype), evaluated in float32.
    saved_model, saved_params, _ = load_checkpoint(out, dtype="float32")
    final = nats_per_char(saved_model, saved_params, tok, heldout_text, cfg.seq_len,
                          cfg.eval_batch_size)
    metrics = {
        "config": dataclasses.asdict(cfg), "model": dataclasses.asdict(size),
        "parameters": n_params, "vocab_size": tok.get_vocab_size(),
        "train_chars_per_token": len(train_text) / (len(train_ids) - 1),
        "heldout_chars_per_token": len(heldout_text) / (len(heldout_ids) - 1),
        "steps_run": step, "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "best_step": best["step"], "best_train_loss": best["train_loss"],
        "saved_heldout_loss": final["loss_per_token"],
        "saved_heldout_nats_per_char": final["nats_per_char"],
        "evals": evals, "losses": losses,
    }
    (out / "train_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    progress.message(
        f"done in {_hms(train_seconds)}: best step {best['step']}, held-out "
        f"{final['loss_per_token']:.4f}/token {final['nats_per_char']:.4f} nats/char, train "
        f"{best['train_loss']:.4f}/token; saved to {out}")
    return metrics


def main_args(args: Any) -> dict[str, Any]:
    """Run `train` from parsed ``jaxgen train`` arguments."""
    path = Path(args.data)
    if not path.is_file():
        raise SystemExit(f"jaxgen train: --data {args.data}: no such file")
    cfg_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    size_fields = {f.name for f in dataclasses.fields(ModelSize)}
    given = {k: v for k, v in vars(args).items() if v is not None}
    try:
        cfg = TrainConfig(**{k: v for k, v in given.items() if k in cfg_fields})
        size = ModelSize(**{k: v for k, v in given.items() if k in size_fields})
        return train(path.read_text(encoding="utf-8"), args.out, cfg, size)
    except ValueError as e:
        raise SystemExit(f"jaxgen train: {e}") from e


def add_arguments(p: Any, defaults: Sequence[Any] = (TrainConfig(), ModelSize())) -> None:
    """The ``jaxgen train`` flags (every TrainConfig / ModelSize field, dashed)."""
    p.add_argument("--data", required=True, help="UTF-8 text file to train on")
    p.add_argument("--out", required=True, help="output directory (Hugging Face layout)")
    for obj in defaults:
        for f in dataclasses.fields(obj):
            default = getattr(obj, f.name)
            kind = {"lr": float, "min_lr_ratio": float, "weight_decay": float, "beta1": float,
                    "beta2": float, "clip_norm": float, "holdout": float, "rope_theta": float,
                    "dtype": str, "tokenizer": str}.get(f.name, int)
            p.add_argument("--" + f.name.replace("_", "-"), type=kind, default=None,
                           help=f"default: {default}")
