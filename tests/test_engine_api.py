"""The engine's API around the loop: bad requests get clear errors naming the problem
while the others finish untouched; handles stream tokens (iterator and callback) and
cancel from other threads while a background loop drives the engine."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest

import jaxgen
from jaxgen import GenerationConfig


@pytest.fixture(scope="module")
def lm():
    return jaxgen.load()


def _alone(lm, prompt, **kw):
    inputs = lm.tokenizer([prompt])
    return lm.generate(**inputs, **kw)[0, inputs["input_ids"].shape[1]:].tolist()


def test_bad_requests_fail_alone(lm):
    long = "ROMEO: " * 20
    configs = [dict(max_new_tokens=8), dict(max_new_tokens=8),
               dict(max_length=10, max_new_tokens=None), dict(temprature=0.5),
               dict(max_new_tokens=8, num_beams=2), dict(max_new_tokens=8, top_k=0),
               dict(max_new_tokens=8, do_sample=False)]
    inputs = ["ROMEO:\n", "", long, "x", "x", "x", "JULIET:\n"]
    res = jaxgen.generate_batch(lm, inputs, configs=configs, progress=False)
    assert [r.finish_reason for r in res] == ["length", "error", "error", "error", "error",
                                              "error", "length"]
    assert "empty" in res[1].error and res[1].error.startswith("request 1:")
    assert "max_length" in res[2].error
    assert "temprature" in res[3].error and "temperature" in res[3].error
    assert "num_beams=2" in res[4].error
    assert "top_k=0" in res[5].error
    assert res[0].tokens == _alone(lm, "ROMEO:\n", max_new_tokens=8, rng=0)
    assert res[6].tokens == _alone(lm, "JULIET:\n", max_new_tokens=8, do_sample=False)


def test_engine_level_errors(lm):
    with pytest.raises(ValueError, match="max_slots"):
        jaxgen.generate_batch(lm, ["x"], max_slots=0)
    with pytest.raises(ValueError, match="max_slots"):
        jaxgen.Engine(lm, max_slots=0)
    with pytest.raises(TypeError, match="max_new_tokenz"):
        jaxgen.generate_batch(lm, ["x"], max_new_tokenz=3)
    eng = jaxgen.Engine(lm, max_slots=1, max_length=32, max_stop_strings=1, max_stop_bytes=4)
    with pytest.raises(ValueError, match="max_length=32"):
        eng.submit("ROMEO: " * 10, max_new_tokens=20)
    with pytest.raises(ValueError, match="stop_strings"):
        eng.submit("x", max_new_tokens=2, stop_strings=["a", "b"])
    with pytest.raises(ValueError, match="top_k=100"):
        eng.submit("x", max_new_tokens=2, do_sample=True, top_k=100)
    with pytest.raises(ValueError, match="seed"):
        eng.submit("x", max_new_tokens=2, seed=-1)
    with pytest.raises(ValueError, match="vocabulary"):
        eng.submit([5, 99999], max_new_tokens=2)
    with pytest.raises(ValueError, match="top_p"):           # the config's own named error
        eng.submit("x", config=GenerationConfig(do_sample=True, top_p=2.0))
    h = eng.submit("ROMEO:\n", max_new_tokens=5, do_sample=False)   # still works
    assert h.result().tokens == _alone(lm, "ROMEO:\n", max_new_tokens=5, do_sample=False)


def test_pool_too_small_is_an_error(lm):
    eng = jaxgen.Engine(lm, max_slots=2, max_length=64, block_size=8, num_blocks=3)
    big = eng.submit("ROMEO:\n", max_new_tokens=40, do_sample=False)   # needs 6 blocks
    small = eng.submit("JULIET:\n", max_new_tokens=5, do_sample=False)
    assert big.result().finish_reason == "error" and "num_blocks" in big.result().error
    assert small.result().finish_reason == "length"


def test_stream_iterator_callback_and_cancel_from_threads(lm):
    eng = jaxgen.Engine(lm, max_slots=2, max_length=128, steps_per_round=4)
    seen: list[int] = []
    with eng:                                                   # background loop
        assert eng.background
        a = eng.submit("ROMEO:\n", max_new_tokens=30, do_sample=False, on_tokens=seen.extend)
        b = eng.submit("JULIET:\n", max_new_tokens=100, do_sample=False)
        c = eng.submit("KING:\n", max_new_tokens=6, do_sample=False)   # waits for a slot
        streamed: dict[str, list[int]] = {}

        def read(name, handle):
            streamed[name] = list(handle)

        readers = [threading.Thread(target=read, args=(n, h)) for n, h in (("a", a), ("c", c))]
        for t in readers:
            t.start()
        for t in readers:
            t.join(timeout=120)
        first = next(iter(b))                                   # b is running ...
        threading.Thread(target=b.cancel).start()               # ... cancel from elsewhere
        rb = b.result(timeout=120)
    assert not eng.background
    assert streamed["a"] == a.result().tokens == seen
    assert a.result().tokens == _alone(lm, "ROMEO:\n", max_new_tokens=30, do_sample=False)
    assert streamed["c"] == c.result().tokens and len(c.result().tokens) == 6
    assert rb.finish_reason == "cancelled" and 1 <= len(rb.tokens) < 100
    assert rb.tokens[0] == first
    assert eng.scheduler.blocks.in_use == 0 and not eng.scheduler.busy


def test_cancel_waiting_request_and_driving_by_iteration(lm):
    eng = jaxgen.Engine(lm, max_slots=1, max_length=64)
    a = eng.submit("ROMEO:\n", max_new_tokens=10, do_sample=False)
    b = eng.submit("JULIET:\n", max_new_tokens=10, do_sample=False)
    b.cancel()
    tokens = list(a)                                            # drives the engine
    assert tokens == a.result().tokens and len(tokens) == 10
    assert b.result().finish_reason == "cancelled" and b.result().tokens == []


TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}ROMEO:\n{% endif %}")


def test_chat_messages_and_token_prompts(lm, monkeypatch):
    messages = [{"role": "user", "content": "Speak"}]
    (err,) = jaxgen.generate_batch(lm, [messages], max_new_tokens=3, progress=False)
    assert err.finish_reason == "error" and "chat template" in err.error
    monkeypatch.setattr(lm.tokenizer, "chat_template", TEMPLATE)
    ids = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           return_dict=False)
    chat, tokens = jaxgen.generate_batch(lm, [messages, ids], max_new_tokens=4,
                                         do_sample=False, progress=False)
    out = lm.generate(input_ids=np.asarray([ids]), max_new_tokens=4, do_sample=False)
    assert chat.tokens == tokens.tokens == out[0, len(ids):].tolist()
    assert chat.text is not None and tokens.text is None


def test_engine_doc_example_runs(lm):
    """docs/engine.md's example, as written (with the module's model)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "engine.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    namespace = {"lm": lm}
    exec(compile(block.replace("lm = jaxgen.load()\n", ""), "docs/engine.md", "exec"), namespace)
    assert namespace["tokens"] == namespace["h"].result().tokens and namespace["tokens"]


def test_stop_string_fires_before_the_window_fills(lm):
    """A stop string ending at token 6 of an unpadded slot (cur < the matcher's window of
    max_stop_bytes + 1 tokens) stops there, as `generate` does."""
    engine = jaxgen.Engine(lm, max_slots=2, max_length=64, max_stop_bytes=16)
    res = engine.submit("ROMEO:\n", max_new_tokens=24, do_sample=False,
                        stop_strings=["king"]).result()
    want = _alone(lm, "ROMEO:\n", max_new_tokens=24, do_sample=False, stop_strings=["king"])
    assert res.finish_reason == "stop" and res.text.endswith("king")
    assert res.tokens == want and len(want) < 24


def test_refilled_slot_after_cancel_runs_its_request(lm):
    """A slot freed by a cancel and refilled in the same round decodes the new request."""
    engine = jaxgen.Engine(lm, max_slots=1, max_length=64, steps_per_round=2)
    first = engine.submit("ROMEO:\n", max_new_tokens=30, do_sample=False)
    engine.step()
    engine.step()
    first.cancel()
    second = engine.submit("JULIET:\n", max_new_tokens=8, do_sample=False)
    res = second.result()
    assert first.result().finish_reason == "cancelled"
    assert res.tokens == _alone(lm, "JULIET:\n", max_new_tokens=8, do_sample=False)
