"""A small optax trainer for `Llama` (used to build the bundled default and draft models).

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

Modules: ``settings`` (TrainConfig, ModelSize), ``data`` (split, tokenizer, windows),
``model`` (loss, optimiser, step, evaluation), ``loop`` (`train`), ``cli`` (the flags).
"""

from jaxgen.train.cli import add_arguments, main_args
from jaxgen.train.data import (
    encode,
    eval_windows,
    load_tokenizer,
    random_windows,
    save_tokenizer,
    split_text,
    train_tokenizer,
)
from jaxgen.train.loop import Progress, save_model, train
from jaxgen.train.model import (
    count_params,
    evaluate_nll,
    init_params,
    make_optimizer,
    make_train_step,
    nats_per_char,
    token_nll,
)
from jaxgen.train.settings import EOS, GENERATION_DEFAULTS, ModelSize, TrainConfig

__all__ = ["EOS", "GENERATION_DEFAULTS", "ModelSize", "Progress", "TrainConfig",
           "add_arguments", "count_params", "encode", "eval_windows", "evaluate_nll",
           "init_params", "load_tokenizer", "main_args", "make_optimizer", "make_train_step",
           "nats_per_char", "random_windows", "save_model", "save_tokenizer", "split_text",
           "token_nll", "train", "train_tokenizer"]
