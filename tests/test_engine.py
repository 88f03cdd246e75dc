"""The continuous-batching engine equals ``generate`` on each request alone: a mixed set
(greedy, seeded sampling, max_new_tokens, eos, stop strings, penalties per request),
requests arriving while others decode, a slot reused many times, a prompt longer than a
prefill chunk, shared prefixes; and the compile count stays flat over 200 requests.

Every comparison runs on the bundled model in float32, on cases without near-ties: the
engine's batch shapes differ from ``generate``'s, so float noise could in principle flip
an exact tie between two tokens (none occurs here; a test would show it).
"""

from __future__ import annotations

import numpy as np
import pytest

import jaxgen
from jaxgen.decoding.output import compute_transition_scores

PROMPTS = ["ROMEO:\n", "JULIET:\nO Romeo", "Once upon a time", "KING HENRY:\nWhat say you"]
# one request per kind of setting; seeds are given to the sampled ones
MIXED = [
    dict(max_new_tokens=30, do_sample=False),
    dict(max_new_tokens=25, do_sample=True, temperature=0.8, top_k=40, top_p=0.9, seed=3),
    dict(max_new_tokens=40, do_sample=True, min_p=0.1, repetition_penalty=1.3, seed=11),
    dict(max_new_tokens=40, do_sample=False, presence_penalty=0.5, frequency_penalty=0.3,
         stop_strings=["the"]),
    dict(max_new_tokens=40, do_sample=False, eos_token_id=199),
    dict(max_new_tokens=12, seed=5),                     # the model's own sampling config
]


@pytest.fixture(scope="module")
def lm():
    return jaxgen.load()


def alone(lm, prompt, seed=0, **kw):
    """``lm.generate`` on one prompt: its new tokens (one row: no padding after a stop)."""
    inputs = lm.tokenizer([prompt]) if isinstance(prompt, str) else \
        {"input_ids": np.asarray([prompt], np.int32)}
    out = lm.generate(**inputs, rng=seed, **kw)
    return out[0, inputs["input_ids"].shape[1]:].tolist()


def _equal_alone(eng, lm, reqs):
    """Submit ``(ids, max_new_tokens)`` requests (odd ones sampled, seed = index), run the
    engine, and assert each equals ``generate`` on it alone; the handles."""
    handles = [eng.submit(ids, max_new_tokens=n, do_sample=bool(i % 2), seed=i)
               for i, (ids, n) in enumerate(reqs)]
    eng.run()
    for i, ((ids, n), h) in enumerate(zip(reqs, handles, strict=True)):
        assert h.result().tokens == alone(lm, ids, seed=i, max_new_tokens=n,
                                          do_sample=bool(i % 2))
    return handles


def test_mixed_requests_equal_generate_alone(lm):
    inputs = [PROMPTS[i % len(PROMPTS)] for i in range(len(MIXED))]
    results = jaxgen.generate_batch(lm, inputs, configs=MIXED, progress=False)
    for prompt, kw, r in zip(inputs, MIXED, results, strict=True):
        kw = dict(kw)
        assert r.tokens == alone(lm, prompt, seed=kw.pop("seed", 0), **kw), kw
        assert r.text == lm.tokenizer.decode(r.tokens, skip_special_tokens=True)
        assert r.prompt_tokens == len(lm.tokenizer.encode(prompt))
    assert [r.finish_reason for r in results] == ["length", "length", "length", "stop", "eos",
                                                  "length"]
    assert results[4].tokens[-1] == 199 and "the" in results[3].text


def test_default_seeds_are_seed_plus_index(lm):
    results = jaxgen.generate_batch(lm, PROMPTS[:2], max_new_tokens=8, seed=7, progress=False)
    for i, r in enumerate(results):
        assert r.tokens == alone(lm, PROMPTS[i], seed=7 + i, max_new_tokens=8)


def test_requests_arriving_while_others_decode(lm):
    eng = jaxgen.Engine(lm, max_slots=2, max_length=128, steps_per_round=4)
    first = eng.submit(PROMPTS[0], max_new_tokens=40, do_sample=False)
    for _ in range(3):
        eng.step()
    assert 0 < len(first.tokens) < 40 and not first.done
    later = [eng.submit(p, max_new_tokens=20, do_sample=True, seed=i)
             for i, p in enumerate(PROMPTS[1:])]
    eng.run()
    assert first.result().tokens == alone(lm, PROMPTS[0], max_new_tokens=40, do_sample=False)
    for i, (h, p) in enumerate(zip(later, PROMPTS[1:], strict=True)):
        assert h.result().tokens == alone(lm, p, seed=i, max_new_tokens=20, do_sample=True)


def test_one_slot_reused_many_times(lm):
    """Twelve requests through two slots (each slot reused six times), greedy and
    sampled, prompts and lengths differing."""
    rs = np.random.RandomState(0)
    reqs = [(rs.randint(1, 2000, int(rs.randint(3, 15))).tolist(), int(rs.randint(4, 15)))
            for _ in range(12)]
    eng = jaxgen.Engine(lm, max_slots=2, max_length=64, steps_per_round=8)
    handles = _equal_alone(eng, lm, reqs)
    assert all(h.result().text is None for h in handles)
    assert eng.scheduler.blocks.in_use == 0 and eng.counters["rounds"] > 6


def test_prompt_longer_than_a_prefill_chunk(lm):
    prompt = "ROMEO:\nBut soft, what light through yonder window breaks? It is the east, " \
             "and Juliet is the sun. Arise, fair sun, and kill the envious moon, who is " \
             "already sick and pale with grief.\nJULIET:\n"
    n = len(lm.tokenizer.encode(prompt))
    eng = jaxgen.Engine(lm, max_slots=2, max_length=128, prefill_chunk=16)
    assert n > 3 * 16
    h = eng.submit(prompt, max_new_tokens=24, do_sample=True, seed=2)
    eng.run()
    assert h.result().tokens == alone(lm, prompt, seed=2, max_new_tokens=24, do_sample=True)
    assert eng.counters["prefill_tokens"] == n - 1


def test_prefix_sharing_same_tokens_less_prefill(lm):
    system = "You are a poet of the old school; answer in verse.\n" * 2
    prompts = [system + q for q in ("ROMEO:\n", "JULIET:\n", "KING:\n", "QUEEN:\n")]
    runs = {}
    for caching in (True, False):
        eng = jaxgen.Engine(lm, max_slots=2, max_length=128, block_size=8,
                            prefix_caching=caching)
        hs = [eng.submit(p, max_new_tokens=10, do_sample=False) for p in prompts]
        eng.run()
        runs[caching] = ([h.result().tokens for h in hs], eng.counters["prefill_tokens"],
                         eng.memory())
    assert runs[True][0] == runs[False][0]
    assert runs[True][0][1] == alone(lm, prompts[1], max_new_tokens=10, do_sample=False)
    shared = runs[True][2]["prefix_cached_tokens"]
    assert shared >= 3 * (len(lm.tokenizer.encode(system)) // 8 * 8)
    assert runs[True][1] == runs[False][1] - shared
    assert runs[False][2]["prefix_cached_tokens"] == 0


def test_decode_reads_up_to_the_longest_live_request(lm):
    """A step reads the pool's chunks up to the longest live request: short requests
    beside a long one, then alone once it finished and was parked, equal ``generate``."""
    rs = np.random.RandomState(5)
    eng = jaxgen.Engine(lm, max_slots=3, max_length=256, steps_per_round=8)
    reqs = [(rs.randint(1, 2000, 110).tolist(), 40), (rs.randint(1, 2000, 8).tolist(), 30),
            (rs.randint(1, 2000, 20).tolist(), 12), (rs.randint(1, 2000, 5).tolist(), 20)]
    _equal_alone(eng, lm, reqs)


def test_logprobs_equal_transition_scores(lm):
    eng = jaxgen.Engine(lm, max_slots=2, max_length=64, logprobs=True)
    hs = [eng.submit(PROMPTS[0], max_new_tokens=6, do_sample=False, output_scores=True),
          eng.submit(PROMPTS[1], max_new_tokens=6, do_sample=True, top_k=20, seed=4,
                     output_scores=True)]
    eng.run()
    for h, p, kw in zip(hs, PROMPTS[:2], [dict(do_sample=False), dict(do_sample=True, top_k=20)],
                        strict=True):
        out = lm.generate(**lm.tokenizer([p]), max_new_tokens=6, rng=4 if kw["do_sample"] else 0,
                          output_scores=True, return_dict_in_generate=True, **kw)
        want = compute_transition_scores(out.sequences, out.scores, normalize_logits=True)[0]
        np.testing.assert_allclose(h.result().logprobs, want, atol=1e-4)
    with pytest.raises(ValueError, match="logprobs=True"):
        jaxgen.Engine(lm, max_slots=1, max_length=64).submit("x", output_scores=True)


def test_compile_count_flat_over_200_requests(lm, count_compiles):
    eng = jaxgen.Engine(lm, max_slots=8, max_length=96, prefill_chunk=32, steps_per_round=8)
    rs = np.random.RandomState(3)

    def batch(k: int, seed: int) -> None:
        handles = []
        for i in range(k):
            ids = rs.randint(1, 2000, int(rs.randint(1, 70))).tolist()
            kw = dict(max_new_tokens=int(rs.randint(1, 9)), do_sample=bool(i % 2),
                      seed=seed + i)
            if i % 2:
                kw.update(top_k=int(rs.randint(1, 64)), temperature=float(rs.uniform(0.5, 2)))
            if i % 3 == 0:
                kw.update(stop_strings=["\n"], repetition_penalty=1.2)
            if i % 5 == 0:
                kw.update(eos_token_id=[0, 199], presence_penalty=0.4)
            handles.append(eng.submit(ids, **kw))
        eng.run()
        assert all(h.done for h in handles)

    batch(16, 0)                                     # warm-up: every chunk width compiles
    with count_compiles() as c:
        batch(200, 100)
    assert c.count == 0
    assert eng.counters["tokens"] > 400


def test_int8_cache_engine_equals_generate_on_the_int8_model():
    """A ``kv_cache_dtype="int8"`` model pages int8 blocks with their scales: the engine
    equals ``generate`` on that model through chunked prefill (the writing path) and
    span-switched decode (the deferred path), greedy and sampled."""
    q = jaxgen.load(kv_cache_dtype="int8")
    eng = jaxgen.Engine(q, max_slots=2, max_length=256, prefill_chunk=16, steps_per_round=8)
    pool = eng.state.loop.cache
    assert pool.k.dtype == np.int8 and pool.k_scale.shape == (*pool.k.shape[:4], 1)
    assert eng.block_bytes == 2 * pool.k[:, :, 0].size * (1 + 4 / pool.k.shape[-1])
    rs = np.random.RandomState(3)
    reqs = [(rs.randint(1, 2000, 140).tolist(), 30), (rs.randint(1, 2000, 9).tolist(), 24),
            (rs.randint(1, 2000, 40).tolist(), 16)]
    _equal_alone(eng, q, reqs)
