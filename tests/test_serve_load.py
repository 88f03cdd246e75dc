"""A bounded load test of ``jaxgen serve`` on loopback: 64 concurrent streaming clients
(``openai.AsyncOpenAI``), 512 seeded requests. Every request gets the text of its own
(prompt, seed), computed beforehand with the engine alone (two checked against
``lm.generate``); none is lost or mixed up; nothing compiles after the warm-up.

Prints requests/s, time to first token and inter-token latency (p50 / p99) against the
same requests sent one at a time (``pytest -s tests/test_serve_load.py``).
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import openai
import pytest

import jaxgen
from jaxgen.serve import create_app
from tests.test_serve import MODEL, LiveServer, chat_lm

PROMPTS = ["ROMEO:\n", "JULIET:\nO", "KING HENRY:\n", "First Citizen:\nWe"]
SEEDS = [0, 1, 2, 3]
COMBOS = [(p, s) for p in PROMPTS for s in SEEDS]
NEW, CLIENTS, TOTAL = 12, 64, 512
SAMPLING = {"temperature": 0.9}


@pytest.fixture(scope="module")
def setup():
    lm = chat_lm()
    engine = jaxgen.Engine(lm, max_slots=32, max_length=64, logprobs=True, steps_per_round=8)
    engine.start()
    srv = LiveServer(create_app(lm, engine, model_name=MODEL))
    yield lm, engine, srv
    srv.close()
    engine.stop()


def expected_texts(lm, engine):
    """Text of every (prompt, seed) with the engine alone (also the warm-up)."""
    handles = {(p, s): engine.submit(lm.tokenizer.encode(p), seed=s, max_new_tokens=NEW,
                                     do_sample=True, **SAMPLING) for p, s in COMBOS}
    out = {k: lm.tokenizer.decode(h.result(timeout=300).tokens, skip_special_tokens=True)
           for k, h in handles.items()}
    for p, s in COMBOS[:2]:
        ids = lm.tokenizer.encode(p)
        seq = lm.generate(input_ids=np.asarray([ids]), max_new_tokens=NEW, do_sample=True,
                          rng=s, **SAMPLING)[0, len(ids):]
        assert out[(p, s)] == lm.tokenizer.decode(seq, skip_special_tokens=True)
    return out


async def one(client, i):
    """Request ``i`` streamed: (index, text, seconds to first token, per-token gap)."""
    p, s = COMBOS[i % len(COMBOS)]
    t0 = time.perf_counter()
    stream = await client.completions.create(model=MODEL, prompt=p, seed=s, max_tokens=NEW,
                                             stream=True, stream_options={"include_usage": True},
                                             **SAMPLING)
    pieces, first, tokens = [], None, 0
    async for chunk in stream:
        if chunk.choices:
            first = first or time.perf_counter()
            pieces.append(chunk.choices[0].text)
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    last = time.perf_counter()
    return i, "".join(pieces), first - t0, (last - first) / max(tokens - 1, 1)


async def run_load(url, indices, clients):
    client = openai.AsyncOpenAI(api_key="unused", base_url=url, max_retries=0, timeout=120)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in indices:
        queue.put_nowait(i)
    results = []

    async def worker():
        while not queue.empty():
            results.append(await one(client, queue.get_nowait()))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t0
    await client.close()
    return results, wall


def _summary(name, results, wall):
    ttft = np.asarray([r[2] for r in results]) * 1e3
    itl = np.asarray([r[3] for r in results]) * 1e3
    line = (f"{name}: {len(results)} requests in {wall:.2f}s = {len(results) / wall:.1f} req/s; "
            f"TTFT p50 {np.percentile(ttft, 50):.1f} ms p99 {np.percentile(ttft, 99):.1f} ms; "
            f"ITL p50 {np.percentile(itl, 50):.2f} ms p99 {np.percentile(itl, 99):.2f} ms")
    print(line)
    return line


def test_64_streaming_clients_512_requests(setup, count_compiles):
    lm, engine, srv = setup
    want = expected_texts(lm, engine)
    warm, _ = asyncio.run(run_load(srv.url, range(len(COMBOS)), 8))    # the HTTP path too
    sequential, seq_wall = asyncio.run(run_load(srv.url, range(16), 1))
    with count_compiles() as c:
        results, wall = asyncio.run(run_load(srv.url, range(TOTAL), CLIENTS))
    assert sorted(r[0] for r in results) == list(range(TOTAL))          # none lost
    for i, text, _, _ in [*warm, *sequential, *results]:
        assert text == want[COMBOS[i % len(COMBOS)]], i                 # none mixed up
    assert c.count == 0, f"{c.count} compiles during the load"
    assert wall < 120
    _summary("sequential", sequential, seq_wall)
    _summary(f"{CLIENTS} concurrent", results, wall)
    assert not engine.scheduler.busy and engine.scheduler.blocks.in_use == 0
