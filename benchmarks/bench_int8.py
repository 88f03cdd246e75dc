"""Int8 quality and speed on a real model: SmolLM2-135M-Instruct (its GGUF, dequantized).

    python benchmarks/bench_int8.py [--text ../shared/data/tinyshakespeare.txt]

- **perplexity**: teacher-forced, over ``--windows`` windows of ``--tokens`` tokens from
  the last 10% of ``--text``, for float32, int8 weights (``quantize="int8"``), and int8
  weights + int8 KV cache (``kv_cache_dtype="int8"``; the cache is what attention reads
  in the forward pass too);
- **greedy agreement**: the share of identical tokens against float32 over 64 new tokens
  on a few chat prompts;
- **speed**: batch-1 decode ms per step (`decode_floor`, 1024-slot cache at 25% fill).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

PROMPTS = ["Name three primary colours.", "What is the capital of France?",
           "Write a haiku about the sea.", "Explain what a prime number is."]
VARIANTS = {"float32": {}, "int8_weights": {"quantize": "int8"},
            "int8_weights_and_kv": {"quantize": "int8", "kv_cache_dtype": "int8"}}


def perplexity(lm, windows: list[list[int]]) -> float:
    import jaxgen

    nll, n = 0.0, 0
    for ids in windows:
        x = np.asarray([ids], np.int32)
        logits = np.asarray(jaxgen.models.logits(lm.model, lm.params, x))[0, :-1]
        logits = logits - logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll -= float(logp[np.arange(len(ids) - 1), x[0, 1:]].sum())
        n += len(ids) - 1
    return math.exp(nll / n)


def greedy(lm) -> np.ndarray:
    out = []
    for p in PROMPTS:
        inputs = lm.tokenizer.apply_chat_template([{"role": "user", "content": p}],
                                                  add_generation_prompt=True)
        seq = lm.generate(**inputs, max_new_tokens=64, do_sample=False, eos_token_id=None)
        out.append(np.asarray(seq)[0, inputs["input_ids"].shape[1]:])
    return np.stack(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--text", default=str(HERE.parent.parent / "shared/data/tinyshakespeare.txt"))
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    from decode_floor import DecodeFloor, interleaved
    from real_models import smollm2_gguf

    import jaxgen

    lms = {k: jaxgen.load(smollm2_gguf(), **kw) for k, kw in VARIANTS.items()}
    text = Path(args.text).read_text()
    held = lms["float32"].tokenizer.encode(text[int(0.9 * len(text)):])
    step = len(held) // args.windows
    windows = [held[i * step:i * step + args.tokens] for i in range(args.windows)]
    ref = greedy(lms["float32"])
    floors = {k: DecodeFloor(lm.model, lm.params, batch=1, length=1024) for k, lm in lms.items()}
    speed = interleaved({k: (lambda n, f=f: f.run(256, n)) for k, f in floors.items()},
                        args.repeats, 16)
    for k, lm in lms.items():
        print(json.dumps({"variant": k, "perplexity": round(perplexity(lm, windows), 4),
                          "greedy_same_tokens": round(float((greedy(lm) == ref).mean()), 3),
                          "ms_per_step_b1": round(speed[k]["median_ms"], 2)}), flush=True)


if __name__ == "__main__":
    main()
