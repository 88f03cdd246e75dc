"""The bundled draft model (jaxgen/assets/draft): trained with `jaxgen train --tokenizer`
on the default model's tokenizer, it loads with `jaxgen.load_draft()`, and greedy
speculative decoding with it on the default model is plain greedy, token for token."""

from __future__ import annotations

import json

import numpy as np
import pytest

import jaxgen
from jaxgen import cli
from jaxgen.lm import DEFAULT_MODEL_DIR, DRAFT_MODEL_DIR

TEXT = """ROMEO:
But, soft! what light through yonder window breaks?
It is the east, and Juliet is the sun.

JULIET:
O Romeo, Romeo! wherefore art thou Romeo?

""" * 6
PROMPTS = ["ROMEO:\n", "JULIET:\nO Romeo, Romeo! wherefore art thou Romeo?\nDeny thy father"]


@pytest.fixture(scope="module")
def lms():
    return jaxgen.load(), jaxgen.load_draft()


def test_train_with_tokenizer_reuses_it_byte_for_byte(tmp_path):
    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    out = tmp_path / "out"
    assert cli.main(["train", "--data", str(data), "--out", str(out), "--tokenizer",
                     str(DEFAULT_MODEL_DIR), "--steps", "2", "--batch-size", "2", "--seq-len",
                     "16", "--d-model", "16", "--layers", "1", "--heads", "2", "--kv-heads", "1",
                     "--eval-every", "2"]) == 0
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (DEFAULT_MODEL_DIR / name).read_bytes(), name
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == 2048 and config["eos_token_id"] == 0
    with pytest.raises(SystemExit, match="no tokenizer.json"):
        cli.main(["train", "--data", str(data), "--out", str(tmp_path / "o"), "--tokenizer",
                  str(tmp_path), "--steps", "1"])


def test_shipped_draft_is_small_and_shares_the_vocabulary(lms):
    lm, draft = lms
    size = sum(p.stat().st_size for p in DRAFT_MODEL_DIR.iterdir())
    assert size < 3_000_000, f"{size / 1e6:.2f} MB"
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (DRAFT_MODEL_DIR / name).read_bytes() == (DEFAULT_MODEL_DIR / name).read_bytes()
    assert draft.model.config.num_hidden_layers <= 2
    assert draft.model.vocab_size == lm.model.vocab_size
    assert draft.tokenizer.encode(PROMPTS[1]) == lm.tokenizer.encode(PROMPTS[1])
    assert draft.generation_config == lm.generation_config


@pytest.mark.filterwarnings("ignore:GenerationConfig")  # sampling defaults, greedy run
@pytest.mark.parametrize("k", [3])
def test_greedy_speculative_with_the_draft_is_plain_greedy(lms, k):
    lm, draft = lms
    inputs = lm.tokenizer(PROMPTS)
    assert len({len(lm.tokenizer.encode(p)) for p in PROMPTS}) == 2  # different lengths
    kw = dict(do_sample=False, max_new_tokens=30)
    plain = lm.generate(**inputs, **kw)
    out = lm.generate(**inputs, assistant_model=draft, num_assistant_tokens=k,
                      return_dict_in_generate=True, **kw)
    np.testing.assert_array_equal(out.sequences, plain)
    assert out.speculative["mean_tokens_per_pass"] > 1.2  # the draft is right often
