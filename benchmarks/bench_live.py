"""Decode step cost against the cache fill, and int8 weights / KV cache, per step.

    python benchmarks/bench_live.py                  # bundled model and SmolLM2-135M
    python benchmarks/bench_live.py --models bundled --length 4096 --batch 1 8

``fill``: a step at 10% and at 90% of a ``--length``-slot cache (`decode_floor`: the bare
decode loop, so the figure is the model's, not a strategy's). Attention reads only the
live bucket of slots (`jaxgen.models.live`), so the 10% step should cost well under the
90% one. ``int8``: the same loop at 50% fill with float32, int8 weights, an int8 KV cache
and both. Medians (and minima) of interleaved repeats, ms per step, one JSON line each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]


def _load(name: str, **kw):
    import jaxgen

    if name == "bundled":
        return jaxgen.load(**kw)
    from real_models import smollm2_gguf

    return jaxgen.load(smollm2_gguf(), **kw)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["bundled", "smollm2"])
    ap.add_argument("--length", type=int, default=4096)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)
    from decode_floor import DecodeFloor, interleaved

    for name in args.models:
        lm, q = _load(name), _load(name, quantize="int8")
        for b in args.batch:
            f = DecodeFloor(lm.model, lm.params, batch=b, length=args.length)
            lo, hi = args.length // 10, args.length * 9 // 10
            runs = {"fill_10": lambda n, f=f, lo=lo: f.run(lo, n),
                    "fill_90": lambda n, f=f, hi=hi: f.run(hi, n)}
            res = interleaved(runs, args.repeats, args.steps)
            ratio = res["fill_10"]["median_ms"] / res["fill_90"]["median_ms"]
            print(json.dumps({"model": name, "batch": b, "length": args.length, **res,
                              "ratio_10_over_90": round(ratio, 3)}), flush=True)
            floors = {"float": DecodeFloor(lm.model, lm.params, batch=b, length=args.length),
                      "int8_weights": DecodeFloor(q.model, q.params, batch=b, length=args.length),
                      "int8_kv": DecodeFloor(lm.model, lm.params, batch=b, length=args.length,
                                             cache_dtype="int8"),
                      "int8_both": DecodeFloor(q.model, q.params, batch=b, length=args.length,
                                               cache_dtype="int8")}
            half = args.length // 2
            runs = {k: (lambda n, fl=fl, half=half: fl.run(half, n)) for k, fl in floors.items()}
            res = interleaved(runs, args.repeats, args.steps)
            print(json.dumps({"model": name, "batch": b, "length": args.length, "fill": half,
                              **res}), flush=True)


if __name__ == "__main__":
    main()
