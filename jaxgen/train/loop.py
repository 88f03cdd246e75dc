"""The training loop of ``jaxgen train``: progress line, checkpoints, metrics."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgen.models.checkpoint import load_checkpoint, resolve_dtype, save_checkpoint
from jaxgen.models.llama import Llama
from jaxgen.train.data import encode, load_tokenizer, save_tokenizer, split_text, train_tokenizer
from jaxgen.train.model import (
    _nll_sum,
    count_params,
    evaluate_nll,
    init_params,
    make_optimizer,
    make_train_step,
    nats_per_char,
)
from jaxgen.train.settings import EOS, GENERATION_DEFAULTS, ModelSize, TrainConfig


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


@dataclasses.dataclass
class _Run:
    """What one ``train`` call works on (built by `_prepare`)."""

    cfg: TrainConfig
    tok: Any
    heldout_text: str
    train_ids: np.ndarray
    heldout_ids: np.ndarray
    train_probe: list[np.ndarray]    # fixed training windows, measured like the held-out
    model: Llama


@dataclasses.dataclass
class _History:
    """What the loop records: per-step losses, evaluations, the best one, the last step."""

    losses: list[float] = dataclasses.field(default_factory=list)
    evals: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    best: dict[str, Any] | None = None
    step: int = 0
    seconds: float = 0.0


def _prepare(text: str, cfg: TrainConfig, size: ModelSize) -> _Run:
    """Split the text, get the tokenizer, encode, pick the train probe, build the model."""
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
    probe = [train_ids[s:s + cfg.seq_len + 1] for s in starts]
    model = Llama(size.llama_config(tok.get_vocab_size(), tok.token_to_id(EOS), cfg.seq_len))
    return _Run(cfg=cfg, tok=tok, heldout_text=heldout_text, train_ids=train_ids,
                heldout_ids=heldout_ids, train_probe=probe, model=model)


def _probe_loss(run: _Run, params: Any) -> float:
    """Mean NLL per token of the fixed training windows."""
    cfg, probe = run.cfg, run.train_probe
    total = 0.0
    for i in range(0, len(probe), cfg.eval_batch_size):
        batch = np.stack(probe[i:i + cfg.eval_batch_size])
        total += float(_nll_sum(run.model, params, batch,
                                np.ones((len(batch), cfg.seq_len), np.float32)))
    return total / (len(probe) * cfg.seq_len)


def _evaluate(run: _Run, params: Any, step: int, seconds: float) -> dict[str, Any]:
    """One evaluation record: held-out loss per token and per char, train probe loss."""
    cfg = run.cfg
    total, n = evaluate_nll(run.model, params, run.heldout_ids, cfg.seq_len,
                            cfg.eval_batch_size)
    return {"step": step, "heldout_loss": total / n,
            "heldout_nats_per_char": total / len(run.heldout_text),
            "train_loss": _probe_loss(run, params), "seconds": round(seconds, 1)}


def _loop(run: _Run, params: Any, out: Path, progress: Progress) -> _History:
    """The optimisation steps, with logging, evaluation, checkpoints and early stopping."""
    cfg = run.cfg
    tx = make_optimizer(cfg)
    opt_state = tx.init(params)
    step_fn = make_train_step(run.model, tx, cfg.batch_size, cfg.seq_len)
    data, data_key = jnp.asarray(run.train_ids), jax.random.fold_in(jax.random.key(cfg.seed), 1)
    hist, pending, fields = _History(), [], {}
    t_train = time.perf_counter()
    t_log, step_log, bad_evals = t_train, 0, 0
    for step in range(1, cfg.steps + 1):
        hist.step = step
        params, opt_state, loss, _ = step_fn(params, opt_state, data, data_key,
                                             jnp.asarray(step, jnp.int32))
        pending.append(loss)
        is_eval = step % cfg.eval_every == 0 or step == cfg.steps
        if step % cfg.log_every == 0 or is_eval:
            hist.losses.extend(float(x) for x in jax.device_get(pending))
            pending.clear()
            tps = (step - step_log) * cfg.batch_size * cfg.seq_len / (time.perf_counter() - t_log)
            fields.update(loss=f"{np.mean(hist.losses[-cfg.log_every:]):.3f}",
                          **{"tok/s": f"{tps:,.0f}"})
            progress.update(step, **fields)
        if is_eval:
            t_eval = time.perf_counter()
            improved = _record_eval(run, hist, params, out, progress, fields,
                                    t_eval - t_train)
            bad_evals = 0 if improved else bad_evals + 1
            t_log += time.perf_counter() - t_eval  # evaluation time is not training speed
            if cfg.patience is not None and bad_evals >= cfg.patience:
                progress.message(f"early stop: no improvement in {bad_evals} evaluations")
                break
        if step % cfg.log_every == 0 or is_eval:
            t_log, step_log = time.perf_counter(), step
    hist.seconds = time.perf_counter() - t_train
    return hist


def _record_eval(run: _Run, hist: _History, params: Any, out: Path, progress: Progress,
                 fields: dict[str, str], seconds: float) -> bool:
    """Evaluate, keep the record, save the checkpoint if it is the best; True if so."""
    record = _evaluate(run, params, hist.step, seconds)
    hist.evals.append(record)
    improved = hist.best is None or record["heldout_loss"] < hist.best["heldout_loss"]
    if improved:
        hist.best = record
        save_model(out, run.model, params, run.tok, run.cfg)
    best = hist.best
    fields["held-out"] = (f"{record['heldout_loss']:.3f} "
                          f"(best {best['heldout_loss']:.3f} @ {best['step']})")
    progress.message(
        f"eval @ {hist.step}: held-out {record['heldout_loss']:.4f}/token "
        f"{record['heldout_nats_per_char']:.4f}/char, train "
        f"{record['train_loss']:.4f}/token{' (saved)' if improved else ''}")
    return improved


def train(text: str, out: str | os.PathLike, cfg: TrainConfig = TrainConfig(),  # noqa: B008
          size: ModelSize = ModelSize(), *, stream: Any = None  # noqa: B008  (frozen)
          ) -> dict[str, Any]:
    """Train tokenizer + model on ``text`` (see ``jaxgen.train``); write the best
    checkpoint to ``out``. Returns the metrics also saved as ``out/train_metrics.json``:
    the per-step training losses, every evaluation, and the best checkpoint's figures
    (held-out loss per token and nats per character, recomputed from the saved weights)."""
    t_start = time.perf_counter()
    out = Path(out)
    run = _prepare(text, cfg, size)
    params = init_params(run.model, jax.random.fold_in(jax.random.key(cfg.seed), 0))
    n_params = count_params(params)
    progress = Progress(cfg.steps, stream)
    train_chars = len(text) - len(run.heldout_text)
    progress.message(
        f"jaxgen train: {n_params:,} parameters ({size.layers} layers, d_model "
        f"{size.d_model}, {size.heads}/{size.kv_heads} heads), vocab "
        f"{run.tok.get_vocab_size()}, {len(run.train_ids):,} train / "
        f"{len(run.heldout_ids):,} held-out tokens, "
        f"{train_chars / (len(run.train_ids) - 1):.2f} chars/token")
    hist = _loop(run, params, out, progress)
    # The figures of the checkpoint as saved (weights in cfg.dtype), evaluated in float32.
    saved_model, saved_params, _ = load_checkpoint(out, dtype="float32")
    final = nats_per_char(saved_model, saved_params, run.tok, run.heldout_text, cfg.seq_len,
                          cfg.eval_batch_size)
    best = hist.best
    metrics = {
        "config": dataclasses.asdict(cfg), "model": dataclasses.asdict(size),
        "parameters": n_params, "vocab_size": run.tok.get_vocab_size(),
        "train_chars_per_token": train_chars / (len(run.train_ids) - 1),
        "heldout_chars_per_token": len(run.heldout_text) / (len(run.heldout_ids) - 1),
        "steps_run": hist.step, "train_seconds": round(hist.seconds, 1),
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "best_step": best["step"], "best_train_loss": best["train_loss"],
        "saved_heldout_loss": final["loss_per_token"],
        "saved_heldout_nats_per_char": final["nats_per_char"],
        "evals": hist.evals, "losses": hist.losses,
    }
    (out / "train_metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    progress.message(
        f"done in {_hms(hist.seconds)}: best step {best['step']}, held-out "
        f"{final['loss_per_token']:.4f}/token {final['nats_per_char']:.4f} nats/char, train "
        f"{best['train_loss']:.4f}/token; saved to {out}")
    return metrics
