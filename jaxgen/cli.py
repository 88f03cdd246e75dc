"""The ``jaxgen`` command line.

    jaxgen generate "prompt" [--model DIR_OR_GGUF] [--config FILE.json] [--seed S]
        [--stream] [--json] [every GenerationConfig field as a flag: --max-new-tokens N,
        --temperature T, --top-p P, --min-p P, --repetition-penalty R, --stop-string S,
        --no-sample, ...; see `jaxgen generate --help`]
    jaxgen generate --input prompts.jsonl --output results.jsonl [--max-slots N] [flags]
        # a file of requests through the continuous-batching engine (resumable)
    jaxgen chat [--model DIR_OR_GGUF] [--system TEXT] [--max-new-tokens N] [--greedy]
        # a conversation in the terminal, with the model's chat template
    jaxgen make-tiny DIR      # a tiny random Llama checkpoint + tokenizer, for smoke tests
    jaxgen train --data FILE --out DIR [--steps N] [--batch-size B] [--seq-len T] [--lr LR]
        [--d-model D] [--layers L] [--heads H] [--kv-heads K] [--vocab-size V] [--seed S]
        [--eval-every N] [--dtype bfloat16] ...   # see `jaxgen train --help`
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from jaxgen import compile_cache
from jaxgen.cli_flags import add_config_flags, config_overrides, load_config


def enable_compilation_cache() -> Path | None:
    """`jaxgen.compile_cache.enable_compilation_cache` (tests patch this name)."""
    return compile_cache.enable_compilation_cache()


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="jaxgen", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate text from a prompt, or from a JSON-lines "
                       "file of requests (--input)")
    g.add_argument("prompt", nargs="?", default=None)
    g.add_argument("--model", default=None,
                   help="Hugging Face layout directory or GGUF file (default: the bundled model)")
    g.add_argument("--config", default=None,
                   help="a generation_config.json (or a directory holding one) to start from "
                        "instead of the model's; flags override its fields")
    g.add_argument("--seed", type=int, default=0,
                   help="random seed (with --input: line i uses seed + i unless it sets one)")
    g.add_argument("--stream", action="store_true", help="print text as it is generated")
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.add_argument("--input", default=None, help="JSON-lines requests (see jaxgen.engine.jsonl)")
    g.add_argument("--output", default=None, help="JSON-lines results; an existing file is "
                   "resumed (requests already there are skipped)")
    g.add_argument("--max-slots", type=int, default=None,
                   help="with --input: requests decoded at once (default 16)")
    g.add_argument("--no-progress", action="store_true", help="with --input: no progress bar")
    add_config_flags(g)
    t = sub.add_parser("make-tiny", help="write a tiny random Llama checkpoint + tokenizer")
    t.add_argument("out")
    t.add_argument("--seed", type=int, default=0)
    from jaxgen.train import add_arguments

    tr = sub.add_parser("train", help="train a tokenizer + small Llama on a text file "
                        "(the last 10%% of the characters held out)")
    add_arguments(tr)
    from jaxgen.chat import add_arguments as chat_arguments

    c = sub.add_parser("chat", help="chat with a model in the terminal (its chat template)")
    chat_arguments(c)
    from jaxgen.serve.server import add_arguments as serve_arguments

    s = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (/v1/completions, "
                       "/v1/chat/completions) on the continuous-batching engine")
    serve_arguments(s)
    return ap


def _load(model_dir: str | None):
    import jaxgen

    if model_dir is not None and not Path(model_dir).is_file() \
            and not (Path(model_dir) / "config.json").is_file():  # a file: GGUF
        raise SystemExit(f"jaxgen: --model {model_dir}: not a checkpoint directory "
                         f"(no config.json there) or a GGUF file")
    try:
        lm = jaxgen.load(model_dir)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise SystemExit(f"jaxgen: cannot load model {model_dir or '(bundled)'}: {e}") from e
    if lm.tokenizer is None:
        raise SystemExit(f"jaxgen: {lm.path} has no tokenizer.json; the command line needs "
                         f"one to encode the prompt")
    return lm


def cmd_generate(args: argparse.Namespace) -> int:
    if (args.prompt is None) == (args.input is None):
        raise SystemExit("jaxgen generate: give a prompt or --input FILE.jsonl (not both)")
    if args.input is not None and args.output is None:
        raise SystemExit("jaxgen generate: --input needs --output FILE.jsonl")
    enable_compilation_cache()
    import jax

    from jaxgen.stream import stream

    config = load_config(args.config) if args.config is not None else None
    kw = config_overrides(args)
    lm = _load(args.model)
    if args.input is not None:
        return _generate_file(lm, args, config, kw)
    inputs = lm.tokenizer([args.prompt])
    rng = jax.random.key(args.seed)
    t0 = time.perf_counter()
    try:
        if args.stream and not args.json:
            base = lm if config is None else dataclasses.replace(lm, generation_config=config)
            for piece in stream(base, inputs, rng=rng, **kw):
                print(piece, end="", flush=True)
            print()
            return 0
        seqs = lm.generate(**inputs, rng=rng, config=config, **kw)
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


def _generate_file(lm: Any, args: argparse.Namespace, config: Any, kw: dict[str, Any]) -> int:
    from jaxgen.engine.jsonl import run_jsonl

    if not Path(args.input).is_file():
        raise SystemExit(f"jaxgen: --input {args.input}: no such file")
    try:
        counts = run_jsonl(lm, args.input, args.output, config=config, seed=args.seed,
                           max_slots=args.max_slots, progress=not args.no_progress, **kw)
    except (ValueError, TypeError) as e:
        raise SystemExit(f"jaxgen: {e}") from e
    print(f"jaxgen: {counts['done']} requests written to {args.output} ({counts['errors']} "
          f"errors, {counts['skipped']} already there)", file=sys.stderr)
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
    if args.command == "chat":
        from jaxgen.chat import run

        enable_compilation_cache()
        return run(args)
    if args.command == "serve":
        from jaxgen.serve.server import run as serve

        enable_compilation_cache()
        return serve(args, _load(args.model))
    return cmd_make_tiny(args)


if __name__ == "__main__":
    sys.exit(main())
