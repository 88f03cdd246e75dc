"""Real pretrained GGUF files against transformers' GGUF loader (float32): SmolLM2-135M-
Instruct (Q4_1) and Gemma 3 270M (Q4_K_M): tokenizer, config, tensors, logits, generation.

The files are fetched once into the test cache (`tests.real_models`); each model is loaded
once per module.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers

import jaxgen
from jaxgen.models import logits
from jaxgen.models.gguf import gguf_names, hf_config, hf_tensor, read_gguf
from jaxgen.tokenizer import Tokenizer
from tests.gguf_files import assert_same_config
from tests.real_models import gemma3_gguf, smollm2_gguf

pytestmark = pytest.mark.slow

TEXTS = ["Hello world", "The quick brown fox jumps over the lazy dog.", "  two leading spaces",
         "héllo wörld, ünïcode: 日本語のテキスト, emoji 🙂👍", "tabs\tand   runs of    spaces",
         "line one\n\n\nline four\r\nwindows", "def f(x):\n    return x ** 2  # square\n",
         "<|im_start|>user\nHi!<|im_end|>\n", "<start_of_turn>user\nHi<end_of_turn>\n",
         "<bos><eos><pad> not special: <|im_start", "1234567890 3.14159 -42", ""]
PROMPTS = ["The capital of France is", "Once upon a time, there was a little",
           "def fibonacci(n):"]
CHATS = [[{"role": "user", "content": "What is the capital of France?"}],
         [{"role": "system", "content": "You are a pirate. Answer in one short sentence."},
          {"role": "user", "content": "How are you today?"}]]


def _hf(path):
    kw = {"pretrained_model_name_or_path": str(path.parent), "gguf_file": path.name}
    model = transformers.AutoModelForCausalLM.from_pretrained(**kw, dtype=torch.float32)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(**kw)


@pytest.fixture(scope="module")
def smol():
    """(jaxgen LM, transformers model, transformers tokenizer) of SmolLM2-135M-Instruct."""
    torch.set_num_threads(2)
    path = smollm2_gguf()
    return (jaxgen.load(path), *_hf(path))


def _hf_generate(model, batch, **kw) -> np.ndarray:
    with torch.inference_mode():
        return model.generate(torch.tensor(batch["input_ids"]),
                              attention_mask=torch.tensor(batch["attention_mask"]),
                              do_sample=False, **kw).numpy()


def _prompts(tok) -> dict[str, np.ndarray]:
    chats = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
             for c in CHATS]
    return tok(PROMPTS + chats)


def test_smollm2_tokenizer_matches_transformers(smol):
    lm, _, ref = smol
    for text in TEXTS:
        ids = lm.tokenizer.encode(text)
        assert ids == ref(text)["input_ids"], text
        assert lm.tokenizer.decode(ids) == ref.decode(ids), text
    for chat in CHATS:
        assert lm.tokenizer.apply_chat_template(chat, return_dict=False) == \
            ref.apply_chat_template(chat, return_dict=False)


def test_smollm2_logits_match_transformers(smol):
    lm, hf, _ = smol
    chat = CHATS[0] + [{"role": "assistant", "content": "The capital of France is Paris."}]
    batch = lm.tokenizer([lm.tokenizer.apply_chat_template(chat, tokenize=False), *PROMPTS])
    ours = np.asarray(logits(lm.model, lm.params, batch["input_ids"], batch["attention_mask"]))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(batch["input_ids"]),
                 attention_mask=torch.tensor(batch["attention_mask"])).logits.numpy()
    real = batch["attention_mask"].astype(bool)
    diff = np.abs(ours - ref)[real].max()
    print(f"SmolLM2 teacher-forced logits: max |jaxgen - transformers| = {diff:.3g}")
    assert diff < 3e-4


@pytest.mark.parametrize("num_beams", [1, 3])
def test_smollm2_generate_matches_transformers(smol, num_beams):
    """Raw and chat prompts in one left-padded batch; greedy: the chat reply ends with
    ``<|im_end|>`` (the GGUF eos id), then padding."""
    lm, hf, _ = smol
    batch = _prompts(lm.tokenizer)
    expected = _hf_generate(hf, batch, max_new_tokens=16, num_beams=num_beams)
    got = lm.generate(**batch, do_sample=False, max_new_tokens=16, num_beams=num_beams)
    np.testing.assert_array_equal(got, expected)
    if num_beams == 1:
        assert lm.generation_config.eos_token_id == 2 == lm.tokenizer.backend.token_to_id(
            "<|im_end|>")
        reply = list(got[len(PROMPTS), batch["input_ids"].shape[1]:])
        assert lm.tokenizer.decode(reply[:reply.index(2) + 1]) == \
            "The capital of France is Paris.<|im_end|>"
        assert set(reply[reply.index(2):]) == {2}  # finished: pad (= eos) after it


# ------------------------------------------------------------------ Gemma 3


@pytest.fixture(scope="module")
def gemma():
    """(GGUFFile, transformers model, transformers tokenizer) of Gemma 3 270M."""
    torch.set_num_threads(2)
    path = gemma3_gguf()
    return (read_gguf(path), *_hf(path))


def test_gemma3_tokenizer_matches_transformers(gemma):
    file, _, ref = gemma
    ours = Tokenizer.from_gguf(file)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == (2, 1, 0)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == ref(text)["input_ids"], text
        for skip in (False, True):
            assert ours.decode(ids, skip) == ref.decode(ids, skip_special_tokens=skip), text


def test_gemma3_config_and_tensors_match_transformers(gemma):
    file, hf, _ = gemma
    config = hf_config(file)
    assert_same_config(config, hf.config)
    state = {k: v for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    names = gguf_names(file, list(state), config["num_hidden_layers"])
    assert set(names.values()) == set(file.tensors)
    for name, expected in state.items():
        got = hf_tensor(file, names[name], config)(0, expected.shape[0])
        np.testing.assert_array_equal(got.reshape(expected.shape), expected.numpy(),
                                      err_msg=name)


def test_gemma3_logits_and_greedy_match_transformers(gemma):
    file, hf, _ = gemma
    lm = jaxgen.load(file.path)
    batch = lm.tokenizer(PROMPTS)
    ours = np.asarray(logits(lm.model, lm.params, batch["input_ids"], batch["attention_mask"]))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(batch["input_ids"]),
                 attention_mask=torch.tensor(batch["attention_mask"])).logits.numpy()
    diff = np.abs(ours - ref)[batch["attention_mask"].astype(bool)].max()
    print(f"Gemma 3 270M teacher-forced logits: max |jaxgen - transformers| = {diff:.3g}")
    assert diff < 3e-4
    got = lm.generate(**batch, do_sample=False, max_new_tokens=10)
    np.testing.assert_array_equal(got, _hf_generate(hf, batch, max_new_tokens=10))
