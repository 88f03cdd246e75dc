"""The left-padding `Tokenizer` wrapper on a tiny WordLevel tokenizer."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from tokenizers import models, pre_tokenizers, processors, trainers

from jaxgen.tokenizer import Tokenizer

SENTENCES = ["the cat sat on the mat", "once upon a time", "to be or not to be",
             "a cat and a dog"]
EOS, BOS, PAD = "<|endoftext|>", "<s>", "<pad>"


def _backend(bos: bool) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(
        special_tokens=["<unk>", EOS, BOS, PAD]))
    if bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))])
    return tok


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    """tokenizer.json with a BOS template + tokenizer_config.json naming the specials."""
    path = tmp_path_factory.mktemp("tok")
    _backend(bos=True).save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": BOS, "eos_token": {"content": EOS}, "pad_token": PAD}))
    return path


@pytest.fixture(scope="module")
def tok(tok_dir) -> Tokenizer:
    return Tokenizer.from_file(tok_dir / "tokenizer.json")


def test_special_token_ids(tok):
    backend = tok.backend
    assert tok.eos_token_id == backend.token_to_id(EOS)
    assert tok.bos_token_id == backend.token_to_id(BOS)
    assert tok.pad_token_id == backend.token_to_id(PAD)
    assert tok.vocab_size == backend.get_vocab_size(with_added_tokens=True)


def test_left_padding_and_mask(tok):
    out = tok(["the cat sat on the mat", "a dog", "once"])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.dtype == np.int32 and mask.dtype == np.int32 and ids.shape == (3, 7)
    np.testing.assert_array_equal(mask.sum(1), [7, 3, 2])
    np.testing.assert_array_equal(mask[1], [0, 0, 0, 0, 1, 1, 1])
    assert (ids[mask == 0] == tok.pad_token_id).all()
    assert (ids[:, -1] != tok.pad_token_id).all()  # right-aligned
    np.testing.assert_array_equal(ids[1, -3:], tok.encode("a dog"))
    assert ids[1, -3] == tok.bos_token_id


def test_single_string_and_no_special_tokens(tok):
    out = tok("to be or not", add_special_tokens=False)
    assert out["input_ids"].shape == (1, 4) and out["attention_mask"].all()
    assert tok.bos_token_id not in out["input_ids"]


def test_empty_list_raises(tok):
    with pytest.raises(ValueError, match="texts"):
        tok([])


def test_decode_and_batch_decode(tok):
    batch = tok(["the cat", "once upon a time"])["input_ids"]
    assert tok.decode(batch[0], skip_special_tokens=True) == "the cat"
    assert tok.decode(batch[0]) == f"{PAD} {PAD} {BOS} the cat"
    assert tok.batch_decode(batch, skip_special_tokens=True) == ["the cat", "once upon a time"]
    assert tok.batch_decode(jnp.asarray(batch), skip_special_tokens=True) == \
        tok.batch_decode([list(r) for r in batch], skip_special_tokens=True)
    eos = tok.eos_token_id
    assert tok.decode(jnp.asarray([*tok.encode("a cat", False), eos])) == f"a cat {EOS}"
    assert tok.decode(np.array([*tok.encode("a cat", False), eos]),
                      skip_special_tokens=True) == "a cat"
    with pytest.raises(ValueError, match="batch_decode"):
        tok.decode(batch)


def test_round_trip(tok):
    for text in SENTENCES:
        assert tok.decode(tok.encode(text), skip_special_tokens=True) == text


def test_convert_ids_to_tokens(tok):
    ids = tok.encode("the cat", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids) == ["the", "cat"]
    assert tok.convert_ids_to_tokens(ids[0]) == "the"
    assert tok.convert_ids_to_tokens(np.asarray(ids)) == ["the", "cat"]


def test_pad_falls_back_to_eos(tmp_path):
    """No tokenizer_config: eos from generation_config.json, pad = eos."""
    backend = _backend(bos=False)
    backend.save(str(tmp_path / "tokenizer.json"))
    eos = backend.token_to_id(EOS)
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [eos, 0]}))
    tok = Tokenizer.from_file(tmp_path)  # a directory works too
    assert tok.eos_token_id == eos and tok.pad_token_id == eos and tok.bos_token_id is None
    out = tok(["a cat and a dog", "a"])
    assert out["input_ids"][1, 0] == eos and out["attention_mask"][1, 0] == 0


def test_explicit_tokens_and_tokenizer_json_padding_is_ignored(tmp_path):
    backend = _backend(bos=False)
    backend.enable_padding(direction="right", pad_id=backend.token_to_id(PAD), pad_token=PAD)
    backend.save(str(tmp_path / "tokenizer.json"))
    tok = Tokenizer.from_file(tmp_path / "tokenizer.json", eos_token=EOS)
    assert tok.pad_token_id == backend.token_to_id(PAD)  # from the padding settings
    out = tok(["a cat", "a"])
    np.testing.assert_array_equal(out["attention_mask"], [[1, 1], [0, 1]])  # left, not right
    with pytest.raises(ValueError, match="vocabulary"):
        Tokenizer.from_file(tmp_path / "tokenizer.json", eos_token="<nope>")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        Tokenizer.from_file(tmp_path / "tokenizer.json")
