"""The ``jaxgen`` command line.

    jaxgen generate "prompt" [--model DIR] [--max-new-tokens N] [--num-beams K]
        [--do-sample] [--temperature T] [--top-p P] [--top-k K]
        [--num-return-sequences R] [--seed S] [--stream] [--json]
    jaxgen make-tiny DIR      # a tiny random Llama checkpoint + tokenizer, for smoke tests
    jaxgen train --data FILE --out DIR [--steps N] [--batch-size B] [--seq-len T] [--lr LR]
        [--d-model D] [--layers L] [--heads H] [--kv-heads K] [--vocab-size V] [--seed S]
        [--eval-every N] [--dtype bfloat16] ...   # see `jaxgen train --help`
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def enable_compilation_cache() -> Path:
    """Turn on JAX's persistent compilation cache in the user's cache directory."""
    import jax

    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    path = root / "jaxgen" / "xla"
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="jaxgen", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text from a prompt")
    g.add_argument("prompt")
    g.add_argument("--model", default=None,
                   help="Hugging Face layout directory (default: the bundled model)")
    g.add_argument("--max-new-tokens", type=int, default=None)
    g.add_argument("--num-beams", type=int, default=None)
    g.add_argument("--do-sample", action="store_true", default=None)
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--num-return-sequences", type=int, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--stream", action="store_true", help="print text as it is generated")
    g.add_argument("--json", action="store_true", help="print one JSON object")
    t = sub.add_parser("make-tiny", help="write a tiny random Llama checkpoint + tokenizer")
    t.add_argument("out")
    t.add_argument("--seed", type=int, default=0)
    from jaxgen.train import add_arguments

    tr = sub.add_parser("train", help="train a tokenizer + small Llama on a text file "
                        "(the last 10%% of the characters held out)")
    add_arguments(tr)
    return ap


def _config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = ["max_new_tokens", "num_beams", "do_sample", "temperature", "top_p", "top_k",
             "num_return_sequences"]
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _load(model_dir: str | None):
    import jaxgen

    if model_dir is not None and not (Path(model_dir) / "config.json").is_file():
        raise SystemExit(f"jaxgen: --model {model_dir}: not a checkpoint directory "
                         f"(no config.json there)")
    try:
        lm = jaxgen.load(model_dir)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise SystemExit(f"jaxgen: cannot load model {model_dir or '(bundled)'}: {e}") from e
    if lm.tokenizer is None:
        raise SystemExit(f"jaxgen: {lm.path} has no tokenizer.json; the command line needs "
                         f"one to encode the prompt")
    return lm


def cmd_generate(args: argparse.Namespace) -> int:
    enable_compilation_cache()
    import jax

    from jaxgen.stream import stream

    lm = _load(args.model)
    inputs = lm.tokenizer([args.prompt])
    kw = _config_overrides(args)
    rng = jax.random.key(args.seed)
    t0 = time.perf_counter()
    try:
        if args.stream and not args.json:
            for piece in stream(lm, inputs, rng=rng, **kw):
                print(piece, end="", flush=True)
            print()
            return 0
        seqs = lm.generate(**inputs, rng=rng, **kw)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"jaxgen: {e}") from e
    texts = lm.tokenizer.batch_decode(seqs, skip_special_tokens=True)
    if args.json:
        print(json.dumps({"prompt": args.prompt, "texts": texts,
                          "ids": [list(map(int, s)) for s in seqs],
                          "prompt_length": int(inputs["input_ids"].shape[1]),
                          "seconds": round(time.perf_counter() - t0, 3)}))
    else:
        print("\n---\n".join(texts))
    return 0


def cmd_make_tiny(args: argparse.Namespace) -> int:
    from jaxgen.tiny import make_tiny_checkpoint

    path = make_tiny_checkpoint(args.out, seed=args.seed)
    print(f"wrote a tiny random Llama checkpoint to {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from jaxgen.train import main_args

    main_args(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "generate":
        return cmd_generate(args)
    if args.command == "train":
        return cmd_train(args)
    return cmd_make_tiny(args)


if __name__ == "__main__":
    sys.exit(main())
