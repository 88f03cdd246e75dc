"""Token healing (``token_healing=True``): prompts and outputs equal to transformers 5's
``heal_tokens``; healing never touches the text before the trimmed token."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxgen
from jaxgen.decoding.strategies.healing import alternatives, heal, retokenize
from jaxgen.lm import DEFAULT_MODEL_DIR

PROMPTS = ["The quick bro", "ROMEO:\nWhat li", "JULIET:\nO Rom", "And so the ki",
           "I am thy fa", "What say y"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The bundled model and tiny random GPT-2 / Llama on its tokenizer (vocab 2048),
    written by transformers: ``{name: (hf_model, hf_tokenizer, lm)}``."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("healing")
    made = {
        "gpt2": transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=2048, n_positions=128, n_embd=32, n_layer=2, n_head=4,
            initializer_range=0.3, bos_token_id=0, eos_token_id=0)),
        "llama": transformers.LlamaForCausalLM(transformers.LlamaConfig(
            vocab_size=2048, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
            initializer_range=0.3, bos_token_id=0, eos_token_id=0)),
    }
    out = {}
    for name, m in made.items():
        m.eval().save_pretrained(root / name)
        for f in TOKENIZER_FILES:
            shutil.copy(DEFAULT_MODEL_DIR / f, root / name / f)
    made["default"] = transformers.AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL_DIR,
                                                                        dtype=torch.float32)
    for name, m in made.items():
        path = DEFAULT_MODEL_DIR if name == "default" else root / name
        m.generation_config = transformers.GenerationConfig(bos_token_id=0, eos_token_id=0,
                                                            pad_token_id=0)  # greedy healing
        out[name] = (m.eval(), transformers.AutoTokenizer.from_pretrained(path),
                     jaxgen.load(path))
    return out


@pytest.mark.parametrize("name", ["gpt2", "llama", "default"])
@pytest.mark.parametrize("prompt", PROMPTS)
def test_outputs_equal_transformers(models, name, prompt):
    hf_model, hf_tok, lm = models[name]
    ids = hf_tok([prompt], return_tensors="pt").input_ids
    with torch.inference_mode():
        ref = hf_model.generate(ids, token_healing=True, tokenizer=hf_tok, do_sample=False,
                                max_new_tokens=5, pad_token_id=0)
    out = lm.generate(**lm.tokenizer([prompt]), token_healing=True, do_sample=False,
                      max_new_tokens=5, pad_token_id=0)
    np.testing.assert_array_equal(out, ref.numpy())


def test_some_prompts_really_heal(models):
    """The prompts above exercise healing (some tails change), not only the skip paths."""
    _, _, lm = models["default"]
    changed = 0
    for prompt in PROMPTS:
        inputs = lm.tokenizer([prompt])
        healed, _ = heal(lm.model, lm.params, inputs["input_ids"], inputs["attention_mask"],
                         lm.tokenizer, pad=0)
        changed += int(healed[0, -1] != inputs["input_ids"][0, -1])
    assert changed >= 1
    tail = lm.tokenizer.encode("ro")[-1]
    assert tail in alternatives(lm.tokenizer, tail)[:1] and len(alternatives(lm.tokenizer,
                                                                           tail)) > 1


text = st.text(alphabet="abcdefghijklmnopqrstuvwxyz ,.\nROMEJULIT", min_size=2, max_size=24)


@settings(max_examples=25, deadline=None)
@given(prompts=st.lists(text, min_size=1, max_size=3))
def test_healing_never_changes_the_text_before_the_tail(models, prompts):
    _, _, lm = models["default"]
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        return
    inputs = lm.tokenizer(prompts)
    healed, mask = heal(lm.model, lm.params, inputs["input_ids"], inputs["attention_mask"],
                        lm.tokenizer, pad=0)
    for row, m, ids, imask in zip(healed, mask, inputs["input_ids"],
                                  inputs["attention_mask"], strict=True):
        before = retokenize(lm.tokenizer, ids[imask == 1])
        after = row[m == 1].tolist()
        assert len(after) == len(before) and after[:-1] == before[:-1]
        assert lm.tokenizer.decode(after).startswith(lm.tokenizer.decode(before[:-1]))


def test_healing_needs_the_tokenizer(models, count_compiles):
    _, _, lm = models["gpt2"]
    with count_compiles() as c, pytest.raises(ValueError, match="token_healing"):
        jaxgen.generate(lm.model, lm.params, np.array([[5, 6, 7]]), token_healing=True,
                        max_new_tokens=3)
    assert c.count == 0
