"""The trained Llama's loss, optimiser, jitted step and held-out evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int

from jaxgen.models.llama import Llama
from jaxgen.train.data import encode, eval_windows, random_windows
from jaxgen.train.settings import TrainConfig


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
