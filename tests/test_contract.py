"""The contract: every strategy through every driver gives the same tokens.

Drivers: one ``generate`` call; the chunked driver (``max_time`` far away, so it never
fires but the loop runs chunk by chunk); ``jaxgen.stream``; ``streamer=``. Beam
strategies are not streamable (as in transformers): both streaming drivers refuse them.
"""

from __future__ import annotations

import numpy as np
import pytest

import jaxgen

PROMPTS = ["ROMEO:\nWhat light", "JULIET:\n"]
STRATEGIES = {
    "greedy": dict(do_sample=False),
    "sampling": dict(do_sample=True, top_k=20, temperature=0.9),
    "beam": dict(do_sample=False, num_beams=3),
    "beam_sampling": dict(do_sample=True, num_beams=2),
    "diverse_beam": dict(do_sample=False, num_beams=4, num_beam_groups=2,
                         diversity_penalty=0.5),
    "prompt_lookup": dict(do_sample=False, prompt_lookup_num_tokens=3),
    "draft_model": dict(do_sample=False, num_assistant_tokens=3),
    "contrastive": dict(do_sample=False, penalty_alpha=0.6, top_k=4),
    "dola": dict(do_sample=False, dola_layers="high", repetition_penalty=1.2),
    "constrained_beam": dict(do_sample=False, num_beams=3, force_words_ids=[[515], [[12], [25]]]),
    "token_healing": dict(do_sample=False, token_healing=True),
}
DRIVERS = ["one_call", "chunked", "stream", "streamer"]
BEAMS = {"beam", "beam_sampling", "diverse_beam", "constrained_beam"}


@pytest.fixture(scope="module")
def lms():
    return jaxgen.load(), jaxgen.load_draft()


@pytest.fixture(scope="module")
def reference(lms):
    """One-call outputs, computed once per strategy."""
    return {name: _run(lms, name, "one_call") for name in STRATEGIES}


class Collect:
    """transformers' streamer protocol: ``put(ids)`` then ``end()``."""

    def __init__(self):
        self.parts, self.ended = [], False

    def put(self, value):
        self.parts.append(np.asarray(value).reshape(len(PROMPTS), -1))

    def end(self):
        self.ended = True


def _kwargs(lms, name):
    kw = dict(STRATEGIES[name], max_new_tokens=12, rng=3, pad_token_id=0)
    if name == "draft_model":
        kw["assistant_model"] = lms[1]
    return kw


def _run(lms, name, driver):
    lm = lms[0]
    kw = _kwargs(lms, name)
    if driver == "stream":
        pieces = list(jaxgen.stream(lm, PROMPTS, chunk=2, **kw))
        return ["".join(p[r] for p in pieces) for r in range(len(PROMPTS))]
    inputs = lm.tokenizer(PROMPTS)
    if driver == "chunked":
        kw["max_time"] = 1e6
    if driver == "streamer":
        sink = Collect()
        out = lm.generate(**inputs, streamer=sink, **kw)
        assert sink.ended
        return out, np.concatenate(sink.parts, axis=1)
    return lm.generate(**inputs, **kw)


@pytest.mark.parametrize("driver", DRIVERS)
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_in_every_driver(lms, reference, name, driver):
    expected = reference[name]
    if driver in ("stream", "streamer") and name in BEAMS:
        with pytest.raises(ValueError, match="num_beams"):
            _run(lms, name, driver)
        return
    got = _run(lms, name, driver)
    if driver == "stream":
        width = expected.shape[1] - 12
        texts = lms[0].tokenizer.batch_decode(expected[:, width:], skip_special_tokens=True)
        assert got == texts
        return
    if driver == "streamer":
        out, streamed = got
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(streamed, expected)   # prompt, then every new token
        return
    np.testing.assert_array_equal(got, expected)


def test_speculative_really_speculates(lms):
    """The speculative rows above are not plain decoding in disguise."""
    lm = lms[0]
    inputs = lm.tokenizer(PROMPTS)
    out = lm.generate(**inputs, **_kwargs(lms, "draft_model"), return_dict_in_generate=True)
    assert out.speculative["mean_tokens_per_pass"] > 1.0
