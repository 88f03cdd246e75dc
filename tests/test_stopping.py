"""Stopping criteria (stop strings, max time, custom) and streaming."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
import transformers
from transformers.generation.stopping_criteria import StopStringCriteria

import jaxgen
from jaxgen import stopping as S
from jaxgen.processors import Context
from jaxgen.tiny import make_tokenizer
from tests.stubs import TableLM, chain_table, table_params


@pytest.fixture(scope="module")
def tok_model(tmp_path_factory):
    """A byte-level BPE tokenizer and a random Llama over its vocabulary, in both
    libraries: (hf_model, hf_tokenizer, lm)."""
    backend = make_tokenizer()
    eos = backend.token_to_id("<|endoftext|>")
    torch.manual_seed(1)
    hf_model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=backend.get_vocab_size(), hidden_size=32, intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        initializer_range=0.4, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)).eval()
    path = tmp_path_factory.mktemp("stop") / "ckpt"
    hf_model.save_pretrained(path)
    backend.save(str(path / "tokenizer.json"))
    hf_tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend,
                                                  eos_token="<|endoftext|>",
                                                  pad_token="<|endoftext|>")
    return hf_model, hf_tok, jaxgen.load(path)


def test_stop_string_matcher_equals_transformers_on_random_sequences(tok_model):
    _, hf_tok, lm = tok_model
    rs = np.random.RandomState(0)
    vocab = lm.model.vocab_size
    ids = rs.randint(0, vocab, size=(400, 12))
    texts = [lm.tokenizer.decode(r) for r in ids]
    # stop strings that really occur, cut at arbitrary character positions
    strings = []
    for t in texts[:40]:
        a = rs.randint(0, max(1, len(t) - 4))
        strings.append(t[a:a + rs.randint(2, 5)])
    strings = [s for s in strings if s.strip()][:6] + ["\n", "e t"]
    ours = S.StopStrings(strings, lm.tokenizer)
    theirs = StopStringCriteria(hf_tok, strings)
    for cut in range(1, ids.shape[1] + 1):
        batch = ids[:, :cut]
        expected = theirs(torch.tensor(batch), None).numpy()
        got = np.asarray(ours(Context.from_input_ids(batch)))
        np.testing.assert_array_equal(got, expected, err_msg=f"prefix length {cut}")
    assert expected.any(), "the strings must really occur"


def test_generate_with_stop_strings_matches_transformers(tok_model):
    hf_model, hf_tok, lm = tok_model
    inputs = lm.tokenizer(["To be", "ROMEO: Once upon", "Or"])
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    kw = dict(max_new_tokens=24, do_sample=False)
    with torch.inference_mode():
        free = hf_model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                                 **kw).numpy()
    # a stop string that ends inside a token: the tail of one token + the head of the next
    def printable(t):
        return len(t) >= 2 and t.isprintable() and t.isascii()

    pairs = [(r, k) for r in range(len(free)) for k in range(2, 20)
             if printable(lm.tokenizer.decode([free[r, ids.shape[1] + k]]))
             and printable(lm.tokenizer.decode([free[r, ids.shape[1] + k + 1]]))]
    assert pairs, "the random model must write some ASCII tokens"
    r, k = pairs[0]
    a, b = (lm.tokenizer.decode([t]) for t in free[r, ids.shape[1] + k:ids.shape[1] + k + 2])
    stop = a[-1:] + b[:1]
    with torch.inference_mode():
        expected = hf_model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask),
                                     stop_strings=[stop, "zzzz"], tokenizer=hf_tok,
                                     **kw).numpy()
    got = lm.generate(**inputs, stop_strings=[stop, "zzzz"], **kw)
    np.testing.assert_array_equal(got, expected)
    assert got.shape[1] < free.shape[1] or (got != free).any()


# --- stub-model criteria ---------------------------------------------------------------------

V = 16
MODEL = TableLM(vocab_size=V)
PARAMS = table_params(chain_table(V, {t: (t % 14) + 1 for t in range(V)}), max_pos=8192)


def gen(ids, **kw):
    kw.setdefault("pad_token_id", 0)
    return jaxgen.generate(MODEL, PARAMS, np.asarray(ids), **kw)


def test_custom_criterion_and_pad_after_stop():
    out = gen([[1], [4]], max_new_tokens=10,
              stopping_criteria=[S.criterion(lambda ctx: ctx.last_tokens == 6)])
    assert out[0, 1:].tolist() == [2, 3, 4, 5, 6]
    assert out[1, 1:].tolist() == [5, 6, 0, 0, 0]


def test_builtin_type_criteria_replace_the_defaults():
    out = gen([[1]], max_new_tokens=10, eos_token_id=3, stopping_criteria=[S.EosToken([5])])
    assert out[0, 1:].tolist() == [2, 3, 4, 5]            # eos 3 replaced by 5
    assert gen([[1, 2]], max_new_tokens=10,
               stopping_criteria=[S.MaxLength(5)]).shape == (1, 5)
    assert gen([[1, 2]], stopping_criteria=[S.MaxNewTokens(4)]).shape == (1, 6)


def test_stop_sequences_by_token_ids():
    seq = S.criterion(lambda ctx: (ctx.sequences[:, ctx.cur - 2] == 4)
                      & (ctx.last_tokens == 5))
    assert gen([[1]], max_new_tokens=10, stopping_criteria=[seq])[0, 1:].tolist() == [2, 3, 4, 5]


def test_max_time_ends_generation(tok_model):
    _, _, lm = tok_model
    inputs = lm.tokenizer(["To be"])
    kw = dict(max_new_tokens=4000, eos_token_id=None)
    lm.generate(**inputs, max_time=60.0, **kw)                    # compile first
    full = inputs["input_ids"].shape[1] + 4000
    assert 1 < lm.generate(**inputs, max_time=0.3, **kw).shape[1] < full
    assert 1 < lm.generate(**inputs, stopping_criteria=[S.MaxTime(0.3)], **kw).shape[1] < full


def test_max_time_with_beam_search_finalizes(tok_model):
    _, _, lm = tok_model
    inputs = lm.tokenizer(["To be"])
    kw = dict(max_new_tokens=3000, num_beams=2, num_return_sequences=2, eos_token_id=None)
    lm.generate(**inputs, max_time=60.0, **kw)
    out = lm.generate(**inputs, max_time=0.3, return_dict_in_generate=True,
                      output_scores=True, **kw)
    n = out.sequences.shape[1] - inputs["input_ids"].shape[1]
    assert 1 < n < 3000 and np.isfinite(out.sequences_scores).all()


def test_bad_criteria_are_rejected():
    with pytest.raises(TypeError, match="stopping_criteria"):
        gen([[1]], stopping_criteria=[lambda ids, scores: True])
    with pytest.raises(ValueError, match="max_time"):
        S.MaxTime(0)
    with pytest.raises(ValueError, match="tokenizer"):
        gen([[1]], stop_strings=["x"])


# --- streaming --------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [dict(do_sample=False),
                                dict(do_sample=True, top_k=20, rng=jax.random.key(3))])
def test_stream_pieces_equal_generate(tok_model, kw):
    _, _, lm = tok_model
    pieces = list(jaxgen.stream(lm, "ROMEO:", max_new_tokens=40, chunk=4, **kw))
    assert len(pieces) > 1                      # text arrived before generation ended
    out = lm.generate(**lm.tokenizer(["ROMEO:"]), max_new_tokens=40, **kw)
    prompt_len = lm.tokenizer(["ROMEO:"])["input_ids"].shape[1]
    assert "".join(pieces) == lm.tokenizer.decode(out[0, prompt_len:],
                                                  skip_special_tokens=True)


def test_stream_batch_yields_a_piece_per_row(tok_model):
    _, _, lm = tok_model
    prompts = ["To be", "Once upon a time"]
    joined = ["", ""]
    for pieces in jaxgen.stream(lm, prompts, max_new_tokens=30, chunk=5):
        assert isinstance(pieces, list) and len(pieces) == 2
        joined = [a + b for a, b in zip(joined, pieces, strict=True)]
    inputs = lm.tokenizer(prompts)
    out = lm.generate(**inputs, max_new_tokens=30)
    width = inputs["input_ids"].shape[1]
    assert joined == lm.tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)


def test_streamer_protocol_works_with_transformers_textstreamer(tok_model, capsys):
    _, hf_tok, lm = tok_model
    inputs = lm.tokenizer(["To be"])
    out = lm.generate(**inputs, max_new_tokens=20,
                      streamer=transformers.TextStreamer(hf_tok, skip_prompt=True))
    printed = capsys.readouterr().out
    width = inputs["input_ids"].shape[1]
    assert printed.rstrip("\n") == hf_tok.decode(out[0, width:]).rstrip("\n")


def test_only_one_host_call_per_chunk(tok_model, monkeypatch):
    import sys

    G = sys.modules["jaxgen.drivers"]   # the drivers call run_steps once per chunk
    _, _, lm = tok_model
    calls = []
    real = G.run_steps

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(G, "run_steps", counting)
    list(jaxgen.stream(lm, "To be", max_new_tokens=41, chunk=8, eos_token_id=None))
    assert len(calls) == 5                       # 40 loop tokens / 8 per chunk
