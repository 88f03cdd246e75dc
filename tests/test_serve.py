"""``jaxgen serve``: the OpenAI-compatible server, driven by the official ``openai`` client
against a live uvicorn on 127.0.0.1 (a thread of this process, so compiles are shared).

Every answer is checked against ``lm.generate`` on the same prompt (greedy, or sampled
with ``rng=seed``): texts, chat texts on the templated prompt, logprobs (transition
scores), logit_bias; every bad input gets a 400 naming its field before anything is
compiled or submitted.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest
import uvicorn

import jaxgen
from jaxgen.serve import create_app

TEMPLATE = ("{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n"
            "{% endfor %}{% if add_generation_prompt %}<|endoftext|>assistant:{% endif %}")
MODEL = "tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 from a background thread."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def chat_lm():
    """The bundled model with a small chat template (as tests/test_chat_session.py)."""
    base = jaxgen.load()
    tok = base.tokenizer
    tok.chat_template = TEMPLATE
    return dataclasses.replace(base, tokenizer=tok)


@pytest.fixture(scope="module")
def lm():
    return chat_lm()


@pytest.fixture(scope="module")
def engine(lm):
    eng = jaxgen.Engine(lm, max_slots=4, max_length=128, logprobs=True, steps_per_round=4)
    eng.start()
    yield eng
    eng.stop()


@pytest.fixture(scope="module")
def live(lm, engine):
    srv = LiveServer(create_app(lm, engine, model_name=MODEL))
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(api_key="unused", base_url=live.url, max_retries=0, timeout=120)


@pytest.fixture
def submitted(engine, monkeypatch):
    """The handles the server submits from now on."""
    handles = []
    submit = engine.submit

    def spy(*args, **kwargs):
        handles.append(submit(*args, **kwargs))
        return handles[-1]

    monkeypatch.setattr(engine, "submit", spy)
    return handles


def generated(lm, ids, n_new, *, seed=None, scores=False, **kw):
    """``lm.generate`` on prompt ``ids``: (new tokens, text, transition logprobs)."""
    kw = dict(do_sample=False, **kw) if seed is None else dict(do_sample=True, rng=seed, **kw)
    out = lm.generate(input_ids=np.asarray([ids]), max_new_tokens=n_new,
                      return_dict_in_generate=True, output_scores=True, **kw)
    new = out.sequences[0, len(ids):].tolist()
    lps = jaxgen.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)[0]
    return new, lm.tokenizer.decode(new, skip_special_tokens=True), lps


def templated(lm, messages):
    return lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                            return_dict=False)


# ------------------------------------------------------------------------ basics


def test_models_and_health(client, live):
    assert [m.id for m in client.models.list().data] == [MODEL]
    with urllib.request.urlopen(f"http://127.0.0.1:{live.port}/health", timeout=30) as r:
        assert json.load(r)["status"] == "ok"


def test_completion_greedy_equals_generate_streamed_or_not(lm, client):
    ids = lm.tokenizer.encode("ROMEO:\n")
    _, want, _ = generated(lm, ids, 10)
    r = client.completions.create(model=MODEL, prompt="ROMEO:\n", max_tokens=10, temperature=0)
    assert r.choices[0].text == want and r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(ids), 10)
    chunks = list(client.completions.create(model=MODEL, prompt="ROMEO:\n", max_tokens=10,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10 and not chunks[-1].choices
    echo = client.completions.create(model=MODEL, prompt="ROMEO:\n", max_tokens=10,
                                     temperature=0, echo=True)
    assert echo.choices[0].text == "ROMEO:\n" + want
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=10, temperature=0)
    assert by_ids.choices[0].text == want


def test_chat_equals_generate_on_templated_prompt(lm, client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    ids = templated(lm, messages)
    _, want, _ = generated(lm, ids, 12)
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=12,
                                       temperature=0)
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == 12
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].usage.total_tokens == len(ids) + 12
    # the default max_tokens is what the engine's max_length leaves
    full = client.chat.completions.create(model=MODEL, messages=messages, temperature=0)
    assert full.usage.completion_tokens <= 128 - len(ids)


def test_n_and_prompt_lists_use_seed_plus_i(lm, client):
    prompts = ["ROMEO:\n", "JULIET:\nO"]
    r = client.completions.create(model=MODEL, prompt=prompts, n=2, seed=7, max_tokens=8,
                                  temperature=0.9)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    for c in r.choices:
        ids = lm.tokenizer.encode(prompts[c.index // 2])
        assert c.text == generated(lm, ids, 8, seed=7 + c.index % 2, temperature=0.9)[1]
    chunks = list(client.completions.create(model=MODEL, prompt=prompts[0], n=3, seed=7,
                                            max_tokens=8, temperature=0.9, stream=True))
    texts = ["".join(c.choices[0].text for c in chunks if c.choices[0].index == i)
             for i in range(3)]
    assert texts[:2] == [r.choices[0].text, r.choices[1].text] and len(set(texts)) == 3


def test_seeded_sampling_is_reproducible(client):
    def ask(seed):
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Speak"}], max_tokens=10,
            seed=seed, top_p=0.9, extra_body={"top_k": 20, "min_p": 0.01}).choices[0]
    first, again, other = ask(11), ask(11), ask(12)
    assert first.message.content == again.message.content != other.message.content


def test_stop_sequences_are_cut_from_the_text(lm, client):
    ids = lm.tokenizer.encode("ROMEO:\n")
    _, text, _ = generated(lm, ids, 24)
    stop = text[8:11]
    want = text[:text.find(stop)]
    r = client.completions.create(model=MODEL, prompt="ROMEO:\n", max_tokens=24, temperature=0,
                                  stop=[stop, "zzzz"])
    assert r.choices[0].text == want and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens < 24
    chunks = list(client.completions.create(model=MODEL, prompt="ROMEO:\n", max_tokens=24,
                                            temperature=0, stop=stop, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == want
    assert chunks[-1].choices[0].finish_reason == "stop"
    none = client.completions.create(model=MODEL, prompt="ROMEO:\n", max_tokens=24,
                                     temperature=0, stop="qqqq")
    assert none.choices[0].text == text and none.choices[0].finish_reason == "length"


# ------------------------------------------------------------------------ logprobs, biases


@pytest.mark.parametrize("seed", [None, 3])
def test_logprobs_equal_transition_scores(lm, client, seed):
    ids = lm.tokenizer.encode("JULIET:\n")
    kw = {"temperature": 0} if seed is None else {"seed": seed, "temperature": 1.0}
    new, _, want = generated(lm, ids, 8, seed=seed, **({} if seed is None else
                                                        {"temperature": 1.0}))
    r = client.completions.create(model=MODEL, prompt="JULIET:\n", max_tokens=8, logprobs=5,
                                  **kw)
    lp = r.choices[0].logprobs
    np.testing.assert_allclose(lp.token_logprobs, want, atol=1e-4)
    assert lp.tokens == [lm.tokenizer.decode([t]) for t in new]
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 1 <= len(top) <= 5 and max(top.values()) >= chosen - 1e-6
    c = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hi"}],
                                       max_tokens=8, logprobs=True, top_logprobs=3, **kw)
    chat_ids = templated(lm, [{"role": "user", "content": "Hi"}])
    _, _, chat_want = generated(lm, chat_ids, 8, seed=seed, **({} if seed is None else
                                                               {"temperature": 1.0}))
    content = c.choices[0].logprobs.content
    np.testing.assert_allclose([t.logprob for t in content], chat_want, atol=1e-4)
    assert all(len(t.top_logprobs) <= 3 for t in content)
    if seed is None:    # greedy: the chosen token is the best one
        assert all(abs(t.top_logprobs[0].logprob - t.logprob) < 1e-5 for t in content)


def test_logit_bias_equals_generate(lm, client):
    ids = lm.tokenizer.encode("ROMEO:\n")
    plain, _, _ = generated(lm, ids, 8)
    bias = {plain[0]: -100.0, plain[2]: -50.0, 17: 2.5}
    _, want, _ = generated(lm, ids, 8, logit_bias=bias)
    r = client.completions.create(model=MODEL, prompt="ROMEO:\n", max_tokens=8, temperature=0,
                                  logit_bias={str(k): v for k, v in bias.items()})
    assert r.choices[0].text == want
    forced = client.completions.create(model=MODEL, prompt="ROMEO:\n", max_tokens=4,
                                       temperature=0, logit_bias={"17": 100})
    assert forced.choices[0].text == lm.tokenizer.decode([17] * 4)


def test_min_new_tokens_in_the_engine_equals_generate(lm, engine):
    """``min_tokens`` -> the engine's per-row ``min_new_tokens`` (eos banned before)."""
    ids = lm.tokenizer.encode("Hello")
    kw = dict(max_new_tokens=20, do_sample=False, eos_token_id=199)
    early, _, _ = generated(lm, ids, 20, eos_token_id=199)
    assert len(early) < 5
    h = engine.submit(ids, min_new_tokens=5, **kw)
    want, _, _ = generated(lm, ids, 20, eos_token_id=199, min_new_tokens=5)
    assert h.result(timeout=120).tokens == want and len(want) > 5


# ------------------------------------------------------------------------ errors


def _post(url, body: bytes, headers=None):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json",
                                                          **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


BAD = [  # (endpoint, fields, the param named)
    ("c", {"temperature": 2.5}, "temperature"),
    ("c", {"top_p": 1.5}, "top_p"),
    ("c", {"n": 0}, "n"),
    ("c", {"max_tokens": 0}, "max_tokens"),
    ("c", {"max_tokens": 500}, "max_tokens"),
    ("c", {"prompt": "ROMEO: " * 200}, "prompt"),
    ("c", {"presence_penalty": 3}, "presence_penalty"),
    ("c", {"logprobs": 21}, "logprobs"),
    ("c", {"logprobs": 2, "echo": True}, "echo"),
    ("c", {"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("c", {"seed": -1}, "seed"),
    ("c", {"logit_bias": {"5": 101}}, "logit_bias.5"),
    ("c", {"logit_bias": {"five": 1}}, "logit_bias"),
    ("c", {"logit_bias": {"99999": 1}}, "logit_bias"),
    ("c", {"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias"),
    ("c", {"model": "gpt-4"}, "model"),
    ("c", {"temprature": 0.5}, "temprature"),
    ("c", {"suffix": "x"}, "suffix"),
    ("c", {"num_beams": 2}, "num_beams"),
    ("c", {"top_k": 0, "temperature": 1}, "top_k"),
    ("c", {"top_k": 100, "temperature": 1}, "top_k"),
    ("c", {"repetition_penalty": -1}, "repetition_penalty"),
    ("c", {"min_p": 2.0, "temperature": 1}, "min_p"),
    ("c", {"min_tokens": -1}, "min_tokens"),
    ("c", {"stream_options": {"include_usage": True}}, "stream_options"),
    ("c", {"prompt": [5, 99999]}, "prompt"),
    ("m", {"messages": []}, "messages"),
    ("m", {"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ("m", {"top_logprobs": 2}, "top_logprobs"),
    ("m", {"top_logprobs": 30, "logprobs": True}, "top_logprobs"),
    ("m", {"max_tokens": 200}, "max_tokens"),
    ("m", {"tools": []}, "tools"),
]


def test_bad_inputs_are_400_naming_the_field(live, client, submitted, count_compiles):
    base = {"c": {"model": MODEL, "prompt": "ROMEO:\n", "max_tokens": 4},
            "m": {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                  "max_tokens": 4}}
    with count_compiles() as c:
        for kind, fields, param in BAD:
            body = {**base[kind], **fields}
            create = client.completions.create if kind == "c" else client.chat.completions.create
            first = ("model", "prompt" if kind == "c" else "messages")
            with pytest.raises(openai.BadRequestError) as e:
                create(**{k: body.pop(k) for k in first}, extra_body=body)
            assert e.value.status_code == 400, (fields, e.value)
            assert e.value.param == param, (fields, e.value.body)
            assert e.value.type == "invalid_request_error" and e.value.message
        for raw in (b'{"model": "tiny", "prompt": "x"', b"[1, 2]", b"\xff"):
            status, body = _post(f"{live.url}/completions", raw)
            assert status == 400 and body["error"]["code"] == "invalid_json", body
    assert c.count == 0 and submitted == []     # refused before compiling or submitting


def test_api_key(lm, engine, live):
    keyed = LiveServer(create_app(lm, engine, model_name=MODEL, api_key="sesame"))
    try:
        for key in ("wrong", "sesame-not"):
            bad = openai.OpenAI(api_key=key, base_url=keyed.url, max_retries=0)
            with pytest.raises(openai.AuthenticationError) as e:
                bad.completions.create(model=MODEL, prompt="x", max_tokens=2)
            assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
            with pytest.raises(openai.AuthenticationError):
                bad.models.list()
        status, _ = _post(f"{keyed.url}/completions", b"{}")
        assert status == 401
        good = openai.OpenAI(api_key="sesame", base_url=keyed.url, max_retries=0)
        assert good.completions.create(model=MODEL, prompt="x", max_tokens=2,
                                       temperature=0).usage.completion_tokens == 2
    finally:
        keyed.close()


def test_server_error_is_500_and_the_server_keeps_serving(client, monkeypatch):
    import jaxgen.serve.app as app_module

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(app_module, "completion_plan", broken)
    with pytest.raises(openai.InternalServerError) as e:
        client.completions.create(model=MODEL, prompt="x", max_tokens=2)
    assert e.value.status_code == 500 and "boom" in e.value.message
    assert e.value.type == "server_error"
    monkeypatch.undo()
    r = client.completions.create(model=MODEL, prompt="ROMEO:\n", max_tokens=3, temperature=0)
    assert r.usage.completion_tokens == 3


def test_client_disconnect_frees_the_slot(client, engine, submitted):
    stream = client.completions.create(model=MODEL, prompt="ROMEO:\n", max_tokens=110,
                                       temperature=0, stream=True)
    first = next(iter(stream))
    assert first.choices[0].text is not None
    stream.close()                                   # the client goes away mid-stream
    (handle,) = submitted
    result = handle.result(timeout=60)
    assert result.finish_reason == "cancelled" and len(result.tokens) < 110
    deadline = time.monotonic() + 30
    while engine.scheduler.busy or engine.scheduler.blocks.in_use:
        assert time.monotonic() < deadline, "the slot was not freed"
        time.sleep(0.05)
