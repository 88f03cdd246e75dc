"""The optax trainer: reproducible with a seed, the loss goes down, `jaxgen train` writes a
checkpoint that jaxgen and transformers load."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest

import jaxgen
from jaxgen import cli
from jaxgen.train import ModelSize, TrainConfig, eval_windows, evaluate_nll, split_text, train

TEXT = """ROMEO:
But, soft! what light through yonder window breaks?
It is the east, and Juliet is the sun.
Arise, fair sun, and kill the envious moon,
Who is already sick and pale with grief.

JULIET:
O Romeo, Romeo! wherefore art thou Romeo?
Deny thy father and refuse thy name;
Or, if thou wilt not, be but sworn my love,
And I'll no longer be a Capulet.

""" * 12

TINY = ModelSize(d_model=32, layers=2, heads=4, kv_heads=2)
CFG = TrainConfig(steps=24, batch_size=8, seq_len=32, lr=3e-3, warmup_steps=4,
                  eval_every=12, eval_batch_size=4, vocab_size=300, log_every=4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two runs with seed 0 and one with seed 1: ``(metrics, metrics, metrics, out dir)``."""
    base = tmp_path_factory.mktemp("train")
    a = train(TEXT, base / "a", CFG, TINY)
    b = train(TEXT, base / "b", CFG, TINY)
    c = train(TEXT, base / "c", TrainConfig(**{**vars(CFG), "seed": 1}), TINY)
    return a, b, c, base / "a"


def test_same_seed_same_loss_curve(runs):
    a, b, c, _ = runs
    assert len(a["losses"]) == CFG.steps
    assert a["losses"] == b["losses"]
    assert [e["heldout_loss"] for e in a["evals"]] == [e["heldout_loss"] for e in b["evals"]]
    assert a["losses"] != c["losses"]


def test_loss_decreases(runs):
    losses = runs[0]["losses"]
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.5
    evals = runs[0]["evals"]
    assert len(evals) == 2 and evals[1]["heldout_loss"] < evals[0]["heldout_loss"]


def test_written_checkpoint_loads_and_reports_its_figures(runs):
    metrics, _, _, out = runs
    saved = json.loads((out / "train_metrics.json").read_text())
    assert saved["losses"] == metrics["losses"]
    assert saved["best_step"] in [e["step"] for e in saved["evals"]]
    best = min(saved["evals"], key=lambda e: e["heldout_loss"])
    # the figures recomputed from the saved float32 weights are those seen during training
    assert saved["saved_heldout_loss"] == pytest.approx(best["heldout_loss"], rel=1e-5)
    gen = jaxgen.GenerationConfig.from_pretrained(out)  # strict: every key is known
    assert gen.do_sample and gen.eos_token_id == 0 and gen.pad_token_id == 0
    lm = jaxgen.load(out)
    assert lm.model.config.num_key_value_heads < lm.model.config.num_attention_heads
    seqs = lm.generate(**lm.tokenizer(["ROMEO:\n"]), do_sample=False, max_new_tokens=8)
    assert seqs.shape == (1, len(lm.tokenizer.encode("ROMEO:\n")) + 8)


def test_split_and_eval_windows_cover_every_target_once():
    train_text, held = split_text("abcdefghij", 0.1)
    assert (train_text, held) == ("abcdefghi", "j")
    ids = np.arange(11, dtype=np.int32)
    tokens, weights = eval_windows(ids, 4)
    assert tokens.shape == (3, 5) and weights.sum() == 10
    targets = tokens[:, 1:][weights > 0]
    np.testing.assert_array_equal(np.sort(targets), ids[1:])


def test_evaluate_nll_is_the_mean_loss_times_tokens(runs):
    lm = jaxgen.load(runs[3])
    ids = np.asarray([0, *lm.tokenizer.encode(TEXT[:200])], np.int32)
    total, n = evaluate_nll(lm.model, lm.params, ids, 16, batch_size=3)
    logits = jaxgen.models.logits(lm.model, lm.params, ids[None, :17])
    logp = logits - jnp.log(jnp.exp(logits).sum(-1, keepdims=True))
    first = -float(jnp.take_along_axis(logp[0, :16], jnp.asarray(ids[1:17])[:, None], 1).sum())
    total16, n16 = evaluate_nll(lm.model, lm.params, ids[:17], 16, batch_size=3)
    assert n == len(ids) - 1 and n16 == 16
    assert total16 == pytest.approx(first, rel=1e-4)


def test_cli_train_end_to_end(tmp_path, capsys):
    data = tmp_path / "data.txt"
    data.write_text(TEXT)
    out = tmp_path / "out"
    assert cli.main(["train", "--data", str(data), "--out", str(out), "--steps", "4",
                     "--batch-size", "4", "--seq-len", "16", "--d-model", "32", "--layers", "1",
                     "--heads", "4", "--kv-heads", "2", "--vocab-size", "280", "--seed", "3",
                     "--eval-every", "2", "--dtype", "bfloat16"]) == 0
    err = capsys.readouterr().err
    assert "tok/s" in err and "held-out" in err
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["dtype"] == "bfloat16"
    for name in ("model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert (out / name).is_file(), name
    lm = jaxgen.load(out)
    assert lm.model.config.vocab_size == 280 and lm.tokenizer.eos_token_id == 0


def test_cli_train_errors(tmp_path):
    with pytest.raises(SystemExit, match="no such file"):
        cli.main(["train", "--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path)])
    data = tmp_path / "short.txt"
    data.write_text("too short")
    with pytest.raises(SystemExit, match="fewer than"):
        cli.main(["train", "--data", str(data), "--out", str(tmp_path / "o"), "--steps", "1"])
