"""jaxgen vs transformers generate() throughput on a random GPT-2-shaped checkpoint (CPU),
or on real SmolLM2-135M-Instruct (its GGUF file, the same weights on both sides).

    python benchmarks/bench_generate.py                        # full run (~minutes)
    python benchmarks/bench_generate.py --new-tokens 8 --repeats 1 --no-write   # smoke
    python benchmarks/bench_generate.py --model smollm2 --dtype bfloat16 --new-tokens 32

Per workload: one warm-up call each (jaxgen's first call is reported as its compile
time), then ``--repeats`` interleaved rounds of jaxgen, transformers and two "floors"
(the same jaxgen model with nothing else: prefill plus a jitted argmax step, driven
either by a Python loop or by a ``lax.while_loop``). EOS is disabled on both sides, so
every call generates exactly ``--new-tokens`` tokens per row (checked).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import torch
import transformers

import jaxgen
from jaxgen.models.cache import is_stack
from jaxgen.models.per_layer import split_layers

HERE = Path(__file__).resolve().parent
CKPT = HERE / "_ckpt_gpt2"
CONFIG = dict(vocab_size=8192, n_positions=1024, n_embd=512, n_layer=6, n_head=8)
PROMPT_LEN = 32
WORKLOADS = {  # name: (batch, generate kwargs beyond lengths; None for greedy)
    "greedy_b1": (1, None),
    "greedy_b8": (8, None),
    "sample_b8": (8, dict(do_sample=True, top_k=50, top_p=0.9, temperature=1.0)),
    "beam4_b1": (1, dict(num_beams=4)),
    "beam4_b8": (8, dict(num_beams=4)),
}


def make_checkpoint(path: Path) -> None:
    """Seeded random GPT-2 checkpoint; reused when its config.json matches."""
    cfg_file = path / "config.json"
    if cfg_file.exists() and (path / "model.safetensors").exists():
        saved = json.loads(cfg_file.read_text())
        if all(saved.get(k) == v for k, v in CONFIG.items()):
            return
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**CONFIG)).float().eval()
    model.save_pretrained(path)


def prompts(batch: int, vocab: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    ids = np.random.default_rng(seed).integers(1, vocab, (batch, PROMPT_LEN))
    return ids.astype(np.int64), np.ones((batch, PROMPT_LEN), np.int64)


def split(cache):
    return split_layers(cache, is_stack)


def argmax(x: jax.Array) -> jax.Array:
    """First index of the row max (max + where + min: faster than jnp.argmax on XLA:CPU)."""
    idx = jnp.arange(x.shape[-1], dtype=jnp.int32)
    return jnp.min(jnp.where(x == jnp.max(x, -1, keepdims=True), idx, x.shape[-1]), -1)


def make_floors(model, batch: int, new: int):
    """(host-loop floor, while_loop floor): prefill + ``new - 1`` greedy steps, i.e. the
    same model work as a ``new``-token generate (prefill picks the first token). Both
    keep one cache buffer per layer from the prefill on, as jaxgen's decode state does
    (`jaxgen.models.per_layer`)."""
    total = PROMPT_LEN + new

    @jax.jit
    def prefill(params, ids):
        mask = jnp.zeros((batch, total), jnp.int32).at[:, :PROMPT_LEN].set(1)
        pos = jnp.broadcast_to(jnp.arange(PROMPT_LEN, dtype=jnp.int32), (batch, PROMPT_LEN))
        logits, cache = model.apply(params, ids, pos, split(model.init_cache(batch, total)),
                                    mask)
        return argmax(logits[:, -1]), cache, mask

    def step(params, tok, cache, mask):
        idx = cache.index  # slot (== position, no left padding) of the token fed now
        mask = jax.lax.dynamic_update_slice(mask, jnp.ones((batch, 1), jnp.int32), (0, idx))
        pos = jnp.broadcast_to(idx, (batch, 1)).astype(jnp.int32)
        logits, cache = model.apply(params, tok[:, None], pos, cache, mask)
        return argmax(logits[:, 0]), cache, mask

    step_jit = jax.jit(step, donate_argnums=(2, 3))

    @partial(jax.jit, donate_argnums=(2, 3))
    def loop(params, tok, cache, mask):
        out = jnp.zeros((batch, new), jnp.int32).at[:, 0].set(tok)

        def body(carry):
            i, tok, cache, mask, out = carry
            tok, cache, mask = step(params, tok, cache, mask)
            return i + 1, tok, cache, mask, out.at[:, i].set(tok)

        carry = (jnp.ones((), jnp.int32), tok, cache, mask, out)
        _, _, cache, mask, out = jax.lax.while_loop(lambda c: c[0] < new, body, carry)
        # returning the cache lets XLA reuse the donated buffers
        return out, cache, mask

    def host_floor(params, ids):
        tok, cache, mask = prefill(params, ids)
        toks = [tok]
        for _ in range(new - 1):
            tok, cache, mask = step_jit(params, tok, cache, mask)
            toks.append(tok)
        tok.block_until_ready()
        return toks

    def while_floor(params, ids):
        return np.asarray(loop(params, *prefill(params, ids))[0])

    return host_floor, while_floor


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def run_workload(name, lm, hf, args) -> dict:
    batch, extra = WORKLOADS[name]
    new = args.new_tokens
    ids, mask = prompts(batch, lm.model.vocab_size)
    kw = dict(max_new_tokens=new, eos_token_id=None, pad_token_id=0, **(extra or {}))
    sampling = bool(kw.get("do_sample"))
    rows = batch * kw.get("num_beams", 1)  # the floor runs as many model rows
    jparams = lm.params
    ids_j = jnp.asarray(ids, jnp.int32)

    def run_jaxgen(i):
        key = jax.random.key(i)
        return timed(lambda: np.asarray(lm.generate(input_ids=ids, attention_mask=mask,
                                                    rng=key, **kw)))

    def run_hf(i):
        torch.manual_seed(i)
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
        with torch.inference_mode():
            return timed(lambda: hf.generate(input_ids=ids_t, attention_mask=mask_t,
                                             **kw).numpy())

    host_floor, while_floor = make_floors(lm.model, rows, new)
    ids_floor = jnp.repeat(ids_j, rows // batch, axis=0)
    compile_s, out_j = run_jaxgen(0)
    _, out_h = run_hf(0)
    host_floor(jparams, ids_floor)
    while_floor(jparams, ids_floor)
    for out, who in ((out_j, "jaxgen"), (out_h, "transformers")):
        if out.shape != (batch, PROMPT_LEN + new):
            sys.exit(f"{name}: {who} returned shape {out.shape}, expected "
                     f"{(batch, PROMPT_LEN + new)}: EOS was not disabled?")
    times = {"jaxgen": [], "transformers": [], "floor_host": [], "floor_while": []}
    for r in range(args.repeats):
        t, out_j = run_jaxgen(r + 1)
        times["jaxgen"].append(t)
        t, out_h = run_hf(r + 1)
        times["transformers"].append(t)
        t, toks = timed(host_floor, jparams, ids_floor)
        times["floor_host"].append(t)
        t, floor_out = timed(while_floor, jparams, ids_floor)
        times["floor_while"].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"workload": name, "batch": batch, "new_tokens": new, "compile_s": compile_s,
           "times_s": times, "median_s": med,
           "tok_s": {k: batch * new / v for k, v in med.items()},
           "floor_ms_per_token": {k: 1e3 * med[k] / new for k in ("floor_host", "floor_while")},
           "overhead_vs_floor": {k: med["jaxgen"] / med[k] - 1
                                 for k in ("floor_host", "floor_while")}}
    res["ratio"] = res["tok_s"]["jaxgen"] / res["tok_s"]["transformers"]
    if not sampling:  # token-for-token checks on the last repeat's outputs
        res["equal_rows_vs_transformers"] = int((out_j == out_h).all(axis=1).sum())
    if extra is None:
        host = np.stack([np.asarray(t) for t in toks], 1)
        gen = out_j[:, PROMPT_LEN:]
        res["equal_rows_vs_floors"] = int(((gen == floor_out) & (gen == host)).all(1).sum())
    return res


def load(name: str, dtype: str) -> tuple[jaxgen.LM, transformers.PreTrainedModel, str]:
    """(jaxgen LM, transformers model, description) on the same weights in ``dtype``."""
    torch_dtype = getattr(torch, dtype)
    if name == "gpt2":
        make_checkpoint(CKPT)
        hf = transformers.GPT2LMHeadModel.from_pretrained(CKPT, dtype=torch_dtype)
        return jaxgen.load(CKPT, dtype=dtype), hf.eval(), f"GPT-2 shape {CONFIG}, {dtype}"
    sys.path.insert(0, str(HERE.parent / "tests"))
    from real_models import smollm2_gguf

    path = smollm2_gguf()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch_dtype)
    return (jaxgen.load(path, dtype=dtype), hf.eval(),
            f"SmolLM2-135M-Instruct ({path.name}, dequantized), {dtype}")


def environment() -> dict:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu,
            "cpu_count": os.cpu_count(), "usable_cores": usable,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "jax_backend": jax.default_backend(), "torch": torch.__version__,
            "transformers": transformers.__version__, "jaxgen": jaxgen.__version__,
            "command": " ".join(sys.argv)}


def table(results: list[dict], env: dict, repeats: int, model: str) -> str:
    lines = [
        "| workload | jaxgen tok/s | transformers tok/s | ratio | jaxgen compile (first call) s"
        " | floor ms/token (while / host loop) | overhead vs floor (while / host loop) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for r in results:
        ms, ov = r["floor_ms_per_token"], r["overhead_vs_floor"]
        lines.append(
            f"| {r['workload']} | {r['tok_s']['jaxgen']:.1f} | {r['tok_s']['transformers']:.1f}"
            f" | {r['ratio']:.2f}x | {r['compile_s']:.2f} | {ms['floor_while']:.2f} / "
            f"{ms['floor_host']:.2f} | {100 * ov['floor_while']:+.0f}% / "
            f"{100 * ov['floor_host']:+.0f}% |")
        b = r["batch"]
        if "equal_rows_vs_transformers" in r:
            eq = r["equal_rows_vs_transformers"]
            mark = "" if eq == b else "WARNING: "
            note = f"{mark}{r['workload']}: {eq}/{b} rows equal to transformers token for token"
            if "equal_rows_vs_floors" in r:
                note += f"; {r['equal_rows_vs_floors']}/{b} equal to both floors"
            notes.append(note)
    head = (f"{env['date']} | {env['cpu']} | {env['cpu_count']} cores "
            f"({env['usable_cores']} usable), torch threads {env['torch_threads']} | "
            f"jax {env['jax']} ({env['jax_backend']}), torch {env['torch']}, "
            f"transformers {env['transformers']}, jaxgen {env['jaxgen']}")
    setup = (f"{model}, {PROMPT_LEN}-token prompts, "
             f"{results[0]['new_tokens']} new tokens, EOS disabled, median of {repeats} "
             f"interleaved repeats; tok/s = batch * new tokens / s")
    return "\n".join([head, "", setup, "", *lines, "", *[f"- {n}" for n in notes]])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--workloads", default=",".join(WORKLOADS),
                    help=f"comma-separated subset of {', '.join(WORKLOADS)}")
    ap.add_argument("--json", type=Path, help="write raw numbers to this file")
    ap.add_argument("--output", type=Path,
                    help="markdown table (default results.md, results_smollm2_<dtype>.md)")
    ap.add_argument("--no-write", action="store_true", help="do not write --output")
    ap.add_argument("--model", choices=("gpt2", "smollm2"), default="gpt2",
                    help="the random GPT-2-shaped checkpoint, or real SmolLM2-135M (GGUF)")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    args = ap.parse_args()
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        ap.error(f"unknown workloads {unknown}; choose from {list(WORKLOADS)}")
    if args.new_tokens < 2 or args.repeats < 1:
        ap.error("need --new-tokens >= 2 and --repeats >= 1")

    torch.set_num_threads(2)
    lm, hf, model = load(args.model, args.dtype)
    hf.generation_config.eos_token_id = None  # belt and braces: eos_token_id=None is passed too

    results = []
    for name in names:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results.append(run_workload(name, lm, hf, args))
    env = environment()
    text = table(results, env, args.repeats, model)
    print(text)
    if not args.no_write:
        args.output = args.output or HERE / ("results.md" if args.model == "gpt2" else
                                             f"results_{args.model}_{args.dtype}.md")
        args.output.write_text(f"# bench_generate results\n\n{text}\n")
    if args.json:
        args.json.write_text(json.dumps({"env": env, "config": CONFIG,
                                         "prompt_len": PROMPT_LEN, "results": results},
                                        indent=2))


if __name__ == "__main__":
    main()
