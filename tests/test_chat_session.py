"""``ChatSession`` carries the cache between turns: every turn equals a fresh generate on
the rendered conversation, and only the new turn is prefilled."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import jaxgen

TEMPLATE = ("{% for m in messages %}<|endoftext|>{{ m['role'] }}: {{ m['content'] }}\n"
            "{% endfor %}{% if add_generation_prompt %}<|endoftext|>assistant:{% endif %}")
TURNS = ["Hello there", "What is thy name?", "Where dost thou live", "Tell me more",
         "Why so?", "And the king?", "Speak, I pray", "Good night", "Farewell, friend",
         "One more word"]
KW = dict(max_new_tokens=6, do_sample=False, eos_token_id=None)


@pytest.fixture(scope="module")
def lm():
    base = jaxgen.load()
    tok = base.tokenizer
    tok.chat_template = TEMPLATE
    return dataclasses.replace(base, tokenizer=tok)


def _rendered(lm, messages):
    return lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                            return_dict=False)


def test_ten_turns_equal_fresh_prefills_and_prefill_only_the_new_turn(lm):
    chat = jaxgen.ChatSession(lm, system="You are terse.", **KW)
    cached: list[int] = []
    for i, text in enumerate(TURNS):
        before = [*chat.messages, {"role": "user", "content": text}]
        ids = _rendered(lm, before)
        held = chat.cache_tokens
        reply = chat.send(text)
        # the template's <|endoftext|> is the pad id: a real token here, not padding
        fresh = lm.generate(input_ids=np.asarray([ids]), attention_mask=np.ones((1, len(ids))),
                            **KW)
        assert reply == lm.tokenizer.decode(fresh[0, len(ids):], skip_special_tokens=True).strip()
        if i == 0:
            assert held == 0 and chat.prefilled == len(ids)
        else:   # only what follows the longest common prefix with the cache is prefilled
            n = min(len(cached), len(ids))
            common = next((j for j in range(n) if cached[j] != ids[j]), n)
            assert chat.prefilled == len(ids) - min(common, len(ids) - 1)
            assert chat.prefilled < 30 < len(ids)
        cached = chat.past.tokens[0].tolist()
        assert chat.cache_tokens == len(ids) + KW["max_new_tokens"] - 1
    assert chat.turns == len(TURNS)


def test_reset_drops_the_cache(lm):
    chat = jaxgen.ChatSession(lm, **KW)
    chat.send("Hello")
    assert chat.cache_tokens > 0
    chat.reset()
    assert chat.cache_tokens == 0 and chat.messages == []
    pieces = list(chat.stream("Hello"))
    assert "".join(pieces).strip() == chat.messages[-1]["content"]
