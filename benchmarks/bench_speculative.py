"""Speculative decoding against plain greedy decoding, same model, same run.

Two setups, batch 1 and 4, 128 new tokens, eos disabled, greedy (outputs must be equal):

- prompt lookup (``prompt_lookup_num_tokens``) on the GPT-2-shaped benchmark checkpoint
  (``bench_generate.py``'s, 23.6M parameters, float32) with a repetitive prompt: a random
  16-token passage repeated 4 times;
- the shipped draft model (``jaxgen.load_draft()``, ``num_assistant_tokens``) for the
  bundled default model, prompts from the held-out Shakespeare text: fixed K (with the
  default confidence stop at 0.4, and without it), the heuristic schedule, and the
  model's own first layers as the draft (``assistant_early_exit``; the bundled model is
  not trained for early exit, so this row shows the cost of a poor draft).

Reports tokens/s (median of interleaved repeats), the ratio to plain greedy and the mean
number of tokens written per target forward pass. ``--model smollm2`` runs only the
prompt-lookup rows, on real SmolLM2-135M-Instruct (float32 from its GGUF, fetched into the
tests' cache), with the same kind of repetitive prompt.

    python benchmarks/bench_speculative.py [--repeats 5] [--model smollm2]
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import jaxgen

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "tinyshakespeare.txt"
NEW = 128
#: Draft settings beside the plain ``num_assistant_tokens=K`` rows (threshold 0.4 there).
SCHEDULES = {
    "draft model K=3, no confidence stop": dict(num_assistant_tokens=3,
                                                assistant_confidence_threshold=0.0),
    "draft model K=8, heuristic schedule": dict(num_assistant_tokens=8,
                                                num_assistant_tokens_schedule="heuristic"),
    "draft model K=20 (transformers' default), heuristic": dict(
        num_assistant_tokens=20, num_assistant_tokens_schedule="heuristic"),
}


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def run(name, lm, inputs, extra, repeats):
    kw = dict(**inputs, max_new_tokens=NEW, do_sample=False, eos_token_id=None)
    plain = lm.generate(**kw)
    spec = lm.generate(**kw, **extra, return_dict_in_generate=True)
    equal = int((plain == spec.sequences).all(axis=1).sum())
    times = {"plain": [], "spec": []}
    for _ in range(repeats):
        times["plain"].append(_timed(lambda: lm.generate(**kw))[0])
        times["spec"].append(_timed(lambda: lm.generate(**kw, **extra))[0])
    rows = plain.shape[0]
    tok = {k: rows * NEW / statistics.median(v) for k, v in times.items()}
    return (f"| {name} | {rows} | {tok['plain']:.0f} | {tok['spec']:.0f} | "
            f"{tok['spec'] / tok['plain']:.2f}x | "
            f"{spec.speculative['mean_tokens_per_pass']:.2f} | {equal}/{rows} |")


def prompt_lookup(lm, name, lines, repeats):
    """The prompt-lookup rows: a random 16-token passage repeated 4 times, batch 1 and 4."""
    rs = np.random.RandomState(0)
    for batch in (1, 4):
        ids = np.stack([np.tile(rs.randint(1, lm.model.vocab_size, size=16), 4)
                        for _ in range(batch)])
        inputs = dict(input_ids=ids, attention_mask=np.ones_like(ids), pad_token_id=0)
        for k in (3, 5):
            lines.append(run(f"prompt lookup K={k}, repetitive prompt ({name})", lm,
                             inputs, dict(prompt_lookup_num_tokens=k), repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", choices=("default", "smollm2"), default="default")
    args = ap.parse_args()
    lines = ["| setup | batch | greedy tok/s | speculative tok/s | ratio | tokens per "
             "target pass | rows equal to greedy |", "|---|---:|---:|---:|---:|---:|---:|"]
    if args.model == "smollm2":
        sys.path.insert(0, str(HERE.parent / "tests"))
        from real_models import smollm2_gguf

        prompt_lookup(jaxgen.load(smollm2_gguf()), "SmolLM2-135M", lines, args.repeats)
        _print(args, lines)
        return
    from bench_generate import CKPT, make_checkpoint

    make_checkpoint(CKPT)
    prompt_lookup(jaxgen.load(CKPT), "GPT-2 shape", lines, args.repeats)
    lm, draft = jaxgen.load(), jaxgen.load_draft()
    held = DATA.read_text()[int(0.9 * len(DATA.read_text())):]
    starts = [0, 5000, 20000, 40000]
    for batch in (1, 4):
        prompts = [held[s:s + 200] for s in starts[:batch]]
        inputs = lm.tokenizer(prompts)
        for k in (2, 3, 5):
            lines.append(run(f"draft model K={k} (default model)", lm, inputs,
                             dict(assistant_model=draft, num_assistant_tokens=k),
                             args.repeats))
        for name, extra in SCHEDULES.items():
            lines.append(run(f"{name} (default model)", lm, inputs,
                             dict(extra, assistant_model=draft), args.repeats))
        for n in (1, 2):
            lines.append(run(f"early exit after {n} of 6 layers, K=3 (default model)", lm,
                             inputs, dict(assistant_early_exit=n, num_assistant_tokens=3),
                             args.repeats))
    _print(args, lines)


def _print(args, lines) -> None:
    head = (f"{datetime.datetime.now().isoformat(timespec='seconds')}, {NEW} new tokens, "
            f"greedy, eos disabled, median of {args.repeats} interleaved repeats")
    print(head + "\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
