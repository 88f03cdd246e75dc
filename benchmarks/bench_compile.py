"""Layers as a Python loop (one leaf per layer) vs a ``lax.scan`` over stacked weights.

    python benchmarks/bench_compile.py steps        # ms per decode step, b1 and b8
    python benchmarks/bench_compile.py first-call   # fresh processes: load + 20 tokens

``steps``: the bundled model and SmolLM2-135M (GGUF, tests/real_models.py), each variant
timed in turns in one process (`decode_floor.interleaved`; medians and minima).
``first-call``: every run a fresh process (``child``), with an empty or a warm
persistent compilation cache; SmolLM2, and random models of its width at 6/30/60 layers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]


def _models() -> dict:
    from real_models import smollm2_gguf

    import jaxgen

    return {"bundled": jaxgen.load(scan_layers=False),
            "smollm2": jaxgen.load(smollm2_gguf(), scan_layers=False)}


def steps(args: argparse.Namespace) -> None:
    from decode_floor import DecodeFloor, interleaved

    import jaxgen.models.layers as layers

    for name, lm in _models().items():
        scan_model, scan_params = lm.model.with_scan(), lm.model.stack_params(lm.params)
        for b in (1, 8):
            runs = {"unrolled": DecodeFloor(lm.model, lm.params, batch=b, length=args.length)}
            for unroll in args.unroll:
                layers.SCAN_UNROLL = unroll
                floor = DecodeFloor(scan_model, scan_params, batch=b, length=args.length)
                floor.run(args.fill, 2)  # traced now, with this unroll
                runs[f"scan_u{unroll}"] = floor
            layers.SCAN_UNROLL = 1
            res = interleaved({k: (lambda n, f=f: f.run(args.fill, n)) for k, f in runs.items()},
                              args.repeats, args.steps)
            rounded = {k: {m: round(v, 2) for m, v in r.items()} for k, r in res.items()}
            print(json.dumps({"model": name, "batch": b, **rounded}), flush=True)


CHILD = """
import time, sys, json, os
t0 = time.perf_counter()
import jax, jaxgen
t1 = time.perf_counter()
spec = json.loads(sys.argv[1])
if spec["layers"]:
    lm = jaxgen.load(spec["dir"], scan_layers=spec["scan"])
else:
    lm = jaxgen.load(spec["path"], scan_layers=spec["scan"])
t2 = time.perf_counter()
out = lm.generate(**lm.tokenizer(["The capital of France is"]), max_new_tokens=20, do_sample=False)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "generate_s": t3 - t2,
                  "first_call_s": t3 - t1, "tokens": [int(x) for x in out[0]]}))
"""


def _random_dir(root: Path, layers: int) -> Path:
    """A SmolLM2-width random Llama checkpoint of ``layers`` layers (+ SmolLM2's tokenizer)."""
    import jax

    import jaxgen
    from jaxgen.models import Llama, LlamaConfig, save_checkpoint

    out = root / f"l{layers}"
    if (out / "config.json").exists():
        return out
    lm = jaxgen.load(_smollm2(), scan_layers=False)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                      num_hidden_layers=layers, num_attention_heads=9, num_key_value_heads=3,
                      tie_word_embeddings=True, rope_theta=100000.0, bos_token_id=1,
                      eos_token_id=2, pad_token_id=2)
    model = Llama(cfg)
    params = model.init_params(jax.random.key(0))
    save_checkpoint(model, params, out)
    lm.tokenizer.backend.save(str(out / "tokenizer.json"))
    return out


def _smollm2() -> Path:
    from real_models import smollm2_gguf

    return smollm2_gguf()


def first_call(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="jaxgen-bench-"))
    targets = [("smollm2", {"path": str(_smollm2()), "layers": 0})]
    targets += [(f"random-{n}", {"dir": str(_random_dir(root, n)), "layers": n})
                for n in args.layers]
    for name, spec in targets:
        for scan in (False, True):
            cache = Path(tempfile.mkdtemp(prefix="xla-", dir=root))
            env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
            for state in ("cold", "warm"):
                t = time.perf_counter()
                proc = subprocess.run([sys.executable, "-c", CHILD,
                                       json.dumps({**spec, "scan": scan})],
                                      env=env, capture_output=True, text=True, check=True)
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                res.pop("tokens")
                print(json.dumps({"model": name, "scan": scan, "cache": state,
                                  "process_s": round(time.perf_counter() - t, 2),
                                  **{k: round(v, 2) for k, v in res.items()}}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    s = sub.add_parser("steps")
    s.add_argument("--length", type=int, default=256)
    s.add_argument("--fill", type=int, default=64)
    s.add_argument("--steps", type=int, default=16)
    s.add_argument("--repeats", type=int, default=9)
    s.add_argument("--unroll", type=int, nargs="*", default=[1, 2])
    f = sub.add_parser("first-call")
    f.add_argument("--layers", type=int, nargs="*", default=[6, 30, 60])
    args = ap.parse_args()
    (steps if args.what == "steps" else first_call)(args)


if __name__ == "__main__":
    main()
