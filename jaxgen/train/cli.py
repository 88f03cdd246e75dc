"""``jaxgen train`` flags and entry point."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxgen.train.loop import train
from jaxgen.train.settings import ModelSize, TrainConfig


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
