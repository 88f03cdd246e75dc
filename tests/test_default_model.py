"""The bundled default model (jaxgen/assets/default): it loads with no network, it writes
a play, its held-out loss stays under the bar, and transformers computes the same logits."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import jaxgen
from jaxgen import cli
from jaxgen.lm import DEFAULT_MODEL_DIR
from jaxgen.train import nats_per_char, split_text

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
BAR = 1.60  # nats per character on held-out text (the bar)
SPEAKER = re.compile(r"^[A-Z][A-Za-z ]+:$", re.M)
TEXTS = ["ROMEO:\nBut, soft! what light through yonder window breaks?\n\n",
         "Answer 1, 2, 3 or 4: 1234 and 42.",
         "Caf\u00e9 \u2014 na\u00efve \u2019quotes\u2019 \t tabs",
         "  leading spaces, <|endoftext|> and trailing  "]


@pytest.fixture(scope="module")
def lm():
    return jaxgen.load(dtype="float32")


@pytest.fixture(scope="module")
def heldout() -> str:
    if not DATA.is_file():
        pytest.fail(f"the held-out text is missing: expected {DATA} (shared/data beside the "
                    f"repository clone)")
    return split_text(DATA.read_text(encoding="utf-8"), 0.1)[1]


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """HF offline, and any network access would go through a dead proxy."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
            "XDG_CACHE_HOME": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf")}


def test_shipped_files():
    names = {p.name for p in DEFAULT_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json", "README.md"} <= names
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir())
    assert size <= 20 * 2**20, f"{size / 2**20:.1f} MB"
    config = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_key_value_heads"] < config["num_attention_heads"]  # GQA
    gen = jaxgen.GenerationConfig.from_pretrained(DEFAULT_MODEL_DIR)  # strict: keys known
    assert gen.do_sample and gen.eos_token_id == gen.pad_token_id == config["eos_token_id"]


def test_tokenizer_round_trips_and_digits_are_single_tokens(lm):
    tok = lm.tokenizer
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
    for digit in "1234":
        ids = tok.encode(digit)
        assert len(ids) == 1 and tok.decode(ids) == digit
    eos = tok.encode("<|endoftext|>")
    assert eos == [tok.eos_token_id] == [tok.pad_token_id] == [lm.generation_config.eos_token_id]


def test_transformers_tokenizer_agrees(lm):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(DEFAULT_MODEL_DIR)
    assert hf.eos_token_id == hf.pad_token_id == lm.tokenizer.eos_token_id
    for text in TEXTS:
        ids = hf(text)["input_ids"]
        assert ids == lm.tokenizer.encode(text)
        assert hf.decode(ids) == text


def test_load_with_no_argument_needs_no_network(tmp_path):
    code = ("import jaxgen; lm = jaxgen.load(); "
            "print(lm.path.name, lm.model.config.vocab_size, lm.tokenizer.vocab_size)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_offline_env(tmp_path), timeout=300)
    assert res.returncode == 0, res.stderr
    name, vocab, tok_vocab = res.stdout.split()
    assert name == "default" and vocab == tok_vocab


def test_heldout_nats_per_char_under_the_bar(lm, heldout):
    piece = heldout[:20_000]
    seq_len = lm.model.config.max_position_embeddings
    figures = nats_per_char(lm.model, lm.params, lm.tokenizer, piece, seq_len)
    assert figures["chars"] == 20_000 and figures["tokens"] > 5_000
    assert figures["nats_per_char"] < BAR, figures


def test_transformers_logits_match(lm, heldout):
    import torch
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR, dtype=torch.float32).eval()
    ids = np.asarray([lm.tokenizer.encode(heldout[:600])[:96],
                      lm.tokenizer.encode(heldout[5000:5600])[:96]], np.int32)
    ours = np.asarray(jaxgen.models.logits(lm.model, lm.params, ids))
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    assert ours.shape == theirs.shape == (2, 96, lm.model.vocab_size)
    np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=1e-4)
    assert (ours.argmax(-1) == theirs.argmax(-1)).mean() > 0.99


def test_greedy_output_has_speaker_lines(lm):
    inputs = lm.tokenizer(["ROMEO:\n"])
    with warnings.catch_warnings():  # the model's sampling defaults do not apply to greedy
        warnings.simplefilter("ignore")
        seqs = lm.generate(**inputs, do_sample=False, max_new_tokens=80)
    text = lm.tokenizer.decode(seqs[0], skip_special_tokens=True)
    new = text[len("ROMEO:\n"):]
    assert text.startswith("ROMEO:\n") and new.count("\n") >= 2, text
    assert SPEAKER.search(new), text


def test_cli_generate_without_model(tmp_path):
    res = subprocess.run(["jaxgen", "generate", "ROMEO:", "--max-new-tokens", "24"],
                         capture_output=True, text=True, env=_offline_env(tmp_path), timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ROMEO:") and len(res.stdout.strip()) > len("ROMEO:") + 10


def test_cli_stream_without_model(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert cli.main(["generate", "ROMEO:", "--max-new-tokens", "12", "--stream"]) == 0
    assert len(capsys.readouterr().out.strip()) > 0
