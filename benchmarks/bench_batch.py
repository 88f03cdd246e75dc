"""Continuous batching throughput: jaxgen's engine against static batching and transformers.

    python benchmarks/bench_batch.py --quick          # a few minutes
    python benchmarks/bench_batch.py                  # 256 requests on the bundled model
    python benchmarks/bench_batch.py --model smollm2 --requests 64   # the real GGUF model
    python benchmarks/bench_batch.py --model smollm2 --requests 32 --dtype bfloat16

Workloads (one process, same weights everywhere, greedy, eos enabled):

- **mixed**: ``--requests`` prompts of random token ids, lengths uniform in 8..512 and
  ``max_new_tokens`` in 16..256 (numpy seed 0); tokens/s of useful tokens (each request's
  own ``max_new_tokens``, or up to its eos) for: the jaxgen engine (``generate_batch``);
  jaxgen ``generate`` in static batches of ``--slots`` (each batch runs to its longest
  request); transformers 5 continuous batching (``ContinuousBatchingManager`` with
  per-request ``max_new_tokens``) and transformers ``generate`` in static batches.
  jaxgen runs are timed warm (a first pass over the same shapes compiles); transformers
  needs no compile.
- **shared system prompt**: ``--requests / 2`` prompts = one system prompt of 256 tokens
  + a question of 8..64 tokens, 32 new tokens, engine with and without prefix reuse.
- **cache memory**: the engine's peak paged-cache bytes against ``slots x max_length``.

Prints Markdown tables (and ``--json FILE`` writes the figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

import jaxgen
from jaxgen.engine.batch import run_requests

HERE = Path(__file__).resolve().parent


def workload(n: int, prompt: tuple[int, int], new: tuple[int, int], vocab: int, seed: int = 0
             ) -> tuple[list[list[int]], list[int]]:
    rs = np.random.default_rng(seed)
    lengths = rs.integers(prompt[0], prompt[1] + 1, n)
    news = rs.integers(new[0], new[1] + 1, n).tolist()
    return [rs.integers(1, vocab, k).tolist() for k in lengths], news


def useful(tokens: list[int], max_new: int, eos: int | None) -> list[int]:
    """A static batch row cut to the request: its max_new_tokens, or through its eos."""
    tokens = list(tokens)[:max_new]
    if eos is not None and eos in tokens:
        tokens = tokens[:tokens.index(eos) + 1]
    return tokens


def run_engine(lm, prompts, news, slots, length, **options):
    """(seconds, outputs, engine) of ``generate_batch``'s driver on the workload."""
    configs = [{"max_new_tokens": n, "do_sample": False} for n in news]
    results = [None] * len(prompts)

    def keep(i, r):
        results[i] = r.tokens

    t0 = time.perf_counter()
    engine = run_requests(lm, prompts, configs=configs, max_slots=slots, progress=False,
                          on_result=keep, engine_options={"max_length": length, **options})
    return time.perf_counter() - t0, results, engine


def run_jaxgen_static(lm, prompts, news, slots, eos):
    out, t0 = [], time.perf_counter()
    for i in range(0, len(prompts), slots):
        batch, want = prompts[i:i + slots], news[i:i + slots]
        width = max(map(len, batch))
        ids = np.zeros((len(batch), width), np.int32)
        mask = np.zeros_like(ids)
        for r, p in enumerate(batch):
            ids[r, width - len(p):], mask[r, width - len(p):] = p, 1
        seqs = lm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(want),
                           do_sample=False)
        out += [useful(s[width:].tolist(), n, eos) for s, n in zip(seqs, want, strict=True)]
    return time.perf_counter() - t0, out


def run_hf_static(model, prompts, news, slots, eos):
    import torch

    out, t0 = [], time.perf_counter()
    for i in range(0, len(prompts), slots):
        batch, want = prompts[i:i + slots], news[i:i + slots]
        width = max(map(len, batch))
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, p in enumerate(batch):
            ids[r, width - len(p):], mask[r, width - len(p):] = torch.tensor(p), 1
        with torch.no_grad():
            seqs = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max(want),
                                  do_sample=False, eos_token_id=eos, pad_token_id=eos or 0)
        out += [useful(s[width:].tolist(), n, eos) for s, n in zip(seqs, want, strict=True)]
    return time.perf_counter() - t0, out


def run_hf_cb(model, prompts, news, slots, eos, block_size=16):
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    gen = GenerationConfig(do_sample=False, max_new_tokens=max(news), eos_token_id=eos,
                           pad_token_id=eos or 0)
    total = max(len(p) + n for p, n in zip(prompts, news, strict=True))
    cb = ContinuousBatchingConfig(num_blocks=slots * (-(-total // block_size)) + 8,
                                  page_size=block_size, max_requests_per_batch=slots,
                                  max_batch_tokens=512)
    t0 = time.perf_counter()
    with model.continuous_batching_context_manager(generation_config=gen,
                                                   continuous_batching_config=cb,
                                                   warmup=False) as mgr:
        ids = [mgr.add_request(p, max_new_tokens=n) for p, n in zip(prompts, news, strict=True)]
        got = {}
        while len(got) < len(ids):
            r = mgr.get_result(timeout=60)
            if r is None:
                raise RuntimeError("transformers continuous batching stalled")
            if r.is_finished():
                got[r.request_id] = list(r.generated_tokens)
    return time.perf_counter() - t0, [got[i] for i in ids]


def static_padding(prompts, outs, slots):
    """Static batching's work against the useful work: (decode row-steps, prefill
    tokens) of batches of ``slots`` (each row runs to its batch's longest output and is
    padded to its longest prompt) over the useful tokens and the real prompt tokens. At
    equal cost per row-step this bounds what continuous batching can gain over it."""
    steps = prefill = 0
    for i in range(0, len(prompts), slots):
        batch, got = prompts[i:i + slots], outs[i:i + slots]
        steps += len(batch) * max(map(len, got))
        prefill += len(batch) * max(map(len, batch))
    return steps / sum(map(len, outs)), prefill / sum(map(len, prompts))


def row(name, seconds, outs, base=None):
    n = sum(map(len, outs))
    return {"system": name, "tokens": n, "seconds": round(seconds, 2),
            "tok_s": round(n / seconds, 1)}


def table(rows, columns):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def load(name, dtype="float32"):
    """(jaxgen LM, transformers model or None) on the same weights, in ``dtype``."""
    import torch

    torch.set_num_threads(int(os.environ.get("BENCH_TORCH_THREADS", "2")))
    from transformers import AutoModelForCausalLM

    if name == "bundled":
        lm = jaxgen.load(dtype=dtype)
        hf = AutoModelForCausalLM.from_pretrained(str(jaxgen.lm.DEFAULT_MODEL_DIR),
                                                  dtype=getattr(torch, dtype))
        return lm, hf.eval()
    sys.path.insert(0, str(HERE.parent / "tests"))
    from real_models import smollm2_gguf

    path = smollm2_gguf()
    lm = jaxgen.load(path, dtype=dtype)
    hf = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                              dtype=getattr(torch, dtype))
    return lm, hf.eval()


def mixed(args, lm, hf, eos):
    prompts, news = workload(args.requests, args.prompt_range, args.new_range,
                             lm.model.vocab_size)
    length = -(-max(len(p) + n for p, n in zip(prompts, news, strict=True)) // 64) * 64
    warm = slice(0, min(len(prompts), 2 * args.slots))
    run_engine(lm, prompts[warm], news[warm], args.slots, length)           # compile
    t, engine_out, engine = run_engine(lm, prompts, news, args.slots, length)
    rows = [row("jaxgen engine (generate_batch)", t, engine_out)]
    mem = _engine_memory(engine)
    run_jaxgen_static(lm, prompts, news, args.slots, eos)                   # compile
    t, static_out = run_jaxgen_static(lm, prompts, news, args.slots, eos)
    rows.append(row(f"jaxgen generate, static batches of {args.slots}", t, static_out))
    same = sum(a == b for a, b in zip(engine_out, static_out, strict=True))
    notes = [f"engine outputs equal to jaxgen static batching: {same}/{len(prompts)}"]
    steps, prefill = static_padding(prompts, static_out, args.slots)
    notes.append(f"static batches of {args.slots} run {steps:.2f}x the useful decode "
                 f"row-steps and prefill {prefill:.2f}x the prompt tokens (at equal cost "
                 f"per row-step, the most the engine can gain)")
    if hf is not None:
        t, cb_out = run_hf_cb(hf, prompts, news, args.slots, eos)
        rows.append(row("transformers continuous batching", t, cb_out))
        t, hfs_out = run_hf_static(hf, prompts, news, args.slots, eos)
        rows.append(row(f"transformers generate, static batches of {args.slots}", t, hfs_out))
        same = sum(a == b for a, b in zip(engine_out, hfs_out, strict=True))
        notes.append(f"engine outputs equal to transformers generate: {same}/{len(prompts)}")
    engine = rows[0]["tok_s"]
    for r in rows:
        r["engine speed-up"] = f"{engine / r['tok_s']:.2f}x"
    return rows, notes, mem


def _engine_memory(engine):
    m = engine.memory()
    return {"peak paged cache MB": round(m["peak_bytes"] / 2**20, 1),
            "contiguous slots x max_length MB": round(m["contiguous_bytes"] / 2**20, 1),
            "ratio": f"{m['peak_bytes'] / m['contiguous_bytes']:.2f}"}


def shared_prefix(args, lm):
    rs = np.random.default_rng(1)
    system = rs.integers(1, lm.model.vocab_size, args.system_tokens).tolist()
    n = max(args.requests // 2, 4)
    prompts = [system + rs.integers(1, lm.model.vocab_size, int(k)).tolist()
               for k in rs.integers(8, 65, n)]
    news = [32] * n
    length = -(-(args.system_tokens + 64 + 32) // 64) * 64
    rows, outs = [], {}
    for caching in (True, False):
        run_engine(lm, prompts[:args.slots], news[:args.slots], args.slots, length,
                   prefix_caching=caching)                                    # compile
        t, outs[caching], eng = run_engine(lm, prompts, news, args.slots, length,
                                           prefix_caching=caching)
        r = row("prefix reuse" if caching else "no prefix reuse", t, outs[caching])
        r["prefill tokens"] = eng.counters["prefill_tokens"]
        r["peak cache MB"] = round(eng.memory()["peak_bytes"] / 2**20, 1)
        rows.append(r)
    same = sum(a == b for a, b in zip(outs[True], outs[False], strict=True))
    return rows, f"outputs equal with and without reuse: {same}/{n}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="48 requests, shorter lengths")
    ap.add_argument("--model", choices=("bundled", "smollm2"), default="bundled")
    ap.add_argument("--requests", type=int, default=None)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                    help="weights and KV cache (jaxgen and transformers alike)")
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    args.requests = args.requests or (48 if args.quick else 256)
    args.prompt_range = (8, 128) if args.quick else (8, 512)
    args.new_range = (16, 64) if args.quick else (16, 256)
    args.system_tokens = 96 if args.quick else 256
    lm, hf = load(args.model, args.dtype)
    if args.no_transformers:
        hf = None
    eos = lm.generation_config.eos_token_ids()
    eos = eos[0] if eos else None
    mixed_rows, notes, mem = mixed(args, lm, hf, eos)
    shared_rows, shared_note = shared_prefix(args, lm)
    import jax
    import torch
    import transformers

    print(f"\n{time.strftime('%Y-%m-%dT%H:%M:%S')} | {platform.processor() or platform.machine()}"
          f" | {os.cpu_count()} cores | jax {jax.__version__}, torch {torch.__version__}, "
          f"transformers {transformers.__version__} | model {args.model}, {args.dtype}\n")
    print(f"### Mixed workload: {args.requests} requests, prompts {args.prompt_range}, "
          f"max_new_tokens {args.new_range}, greedy, eos on, {args.slots} slots\n")
    print(table(mixed_rows, ["system", "tokens", "seconds", "tok_s", "engine speed-up"]))
    print("\n" + "\n".join(f"- {n}" for n in notes))
    print(f"\n### Shared system prompt ({args.system_tokens} tokens) + 8..64-token questions, "
          f"32 new tokens\n")
    print(table(shared_rows, ["system", "tokens", "seconds", "tok_s", "prefill tokens",
                              "peak cache MB"]))
    print(f"\n- {shared_note}\n\n### Engine KV cache memory (mixed workload)\n")
    print(table([mem], list(mem)))
    if args.json:
        Path(args.json).write_text(json.dumps({"mixed": mixed_rows, "shared": shared_rows,
                                               "memory": mem, "notes": notes}, indent=2))


if __name__ == "__main__":
    main()
