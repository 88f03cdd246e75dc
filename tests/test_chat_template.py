"""Chat templates rendered as transformers renders them: the real SmolLM2 and Gemma 3
templates (slow), and each feature of the environment on a tiny tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import transformers
from tokenizers import Tokenizer as Backend
from tokenizers import models, pre_tokenizers, trainers

from jaxgen.tokenizer import Tokenizer
from tests.real_models import gemma3_gguf, smollm2_gguf

# Gemma 3's instruct template (google/gemma-3-*-it, tokenizer_config.json). The Gemma 3
# 270M GGUF of the tests is the base model and carries no template.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}\n{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n    {%- set loop_messages = messages[1:] -%}\n{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate "
    "user/assistant/user/assistant/...\") }}\n    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n        {%- set role = message['role'] -%}\n    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n            {%- endif -%}\n"
    "        {%- endfor -%}\n    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n{%- endfor -%}\n{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n{%- endif -%}\n")
CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi  there "}],
    [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."},
     {"role": "user", "content": "And times 3? Ünïcode 日本語"}],
    [{"role": "system", "content": [{"type": "text", "text": "Be kind."}]},
     {"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
]


def _assert_same(ours: Tokenizer, ref, conversations, **kw) -> None:
    for conv in conversations:
        for gen in (True, False):
            text = ours.apply_chat_template(conv, add_generation_prompt=gen, tokenize=False, **kw)
            assert text == ref.apply_chat_template(conv, add_generation_prompt=gen,
                                                   tokenize=False, **kw)
            ids = ours.apply_chat_template(conv, add_generation_prompt=gen, return_dict=False,
                                           **kw)
            assert ids == ref.apply_chat_template(conv, add_generation_prompt=gen,
                                                  return_dict=False, **kw)


@pytest.mark.slow
def test_smollm2_template_matches_transformers():
    path = smollm2_gguf()
    ours = Tokenizer.from_gguf(path)
    ref = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    assert ours.chat_template == ref.chat_template
    _assert_same(ours, ref, CONVERSATIONS[:3])


@pytest.mark.slow
def test_gemma3_template_matches_transformers(tmp_path):
    """Gemma 3's tokenizer from the GGUF, saved as a HF directory whose template is in
    ``chat_template.jinja``: both libraries load the directory."""
    gemma = Tokenizer.from_gguf(gemma3_gguf())
    gemma.backend.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {**gemma.special_tokens, "add_bos_token": True}))
    (tmp_path / "chat_template.jinja").write_text(GEMMA3_TEMPLATE)
    ours, ref = Tokenizer.from_file(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert ours.chat_template == GEMMA3_TEMPLATE
    _assert_same(ours, ref, CONVERSATIONS)
    bad = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    with pytest.raises(Exception, match="roles must alternate"):
        ours.apply_chat_template(bad)


# ------------------------------------------------------------------ the environment


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A small byte-level tokenizer with ``<s>``/``</s>`` in a HF directory."""
    path = tmp_path_factory.mktemp("tok")
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.train_from_iterator([" ".join(c["content"] for c in conv if isinstance(
        c["content"], str)) for conv in CONVERSATIONS] * 3, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}))
    return path


def _pair(path, template):
    ours, ref = Tokenizer.from_file(path), transformers.AutoTokenizer.from_pretrained(path)
    ours.chat_template = ref.chat_template = template
    return ours, ref


FEATURES = [
    # special tokens and extra keyword arguments in the context; trim_blocks/lstrip_blocks
    ("{{ bos_token }}{% for m in messages %}\n  {{ m['role'] }}: {{ m['content'] }}{{ eos_token }}"
     "\n{% endfor %}{% if add_generation_prompt %}{{ greeting }}{% endif %}",
     {"greeting": "assistant:"}),
    # loopcontrols, namespace, tojson with transformers' arguments (no HTML escaping)
    ("{% set ns = namespace(n=0) %}{% for m in messages %}{% if loop.index > 2 %}{% break %}"
     "{% endif %}{% set ns.n = ns.n + 1 %}{{ m | tojson }}{{ m | tojson(indent=2) }}"
     "{% endfor %}{{ ns.n }}{{ tools | tojson }}{{ dict(a=1) | tojson }}",
     {"tools": [{"type": "function", "function": {"name": "f<&>", "parameters": {}}}]}),
    # documents, a {% generation %} block, strftime_now (year only: stable)
    ("{{ documents | length }}{% for m in messages %}{% generation %}[{{ m.content }}]"
     "{% endgeneration %}{% endfor %}{{ strftime_now('%Y') }}",
     {"documents": [{"title": "t", "text": "x"}]}),
]


@pytest.mark.parametrize("template, kw", FEATURES)
def test_environment_matches_transformers(tiny_dir, template, kw):
    ours, ref = _pair(tiny_dir, template)
    _assert_same(ours, ref, CONVERSATIONS[:3], **kw)


def test_raise_exception_continue_final_message_and_batches(tiny_dir):
    ours, ref = _pair(tiny_dir, FEATURES[0][0])
    conv = CONVERSATIONS[2][:2]
    for kw in ({"continue_final_message": True}, {"greeting": "x"}):
        assert ours.apply_chat_template(conv, tokenize=False, **kw) == \
            ref.apply_chat_template(conv, tokenize=False, **kw)
    batch = ours.apply_chat_template(CONVERSATIONS[:3], add_generation_prompt=True)
    single = [ours.apply_chat_template(c, add_generation_prompt=True, return_dict=False)
              for c in CONVERSATIONS[:3]]
    assert batch["input_ids"].shape == (3, max(map(len, single)))
    for row, ids in zip(batch["input_ids"], single, strict=True):
        np.testing.assert_array_equal(row[len(row) - len(ids):], ids)
    ours.chat_template = "{{ raise_exception('no ' + messages[0]['role']) }}"
    with pytest.raises(Exception, match="no user"):
        ours.apply_chat_template(CONVERSATIONS[0])


def test_named_templates_and_template_files(tiny_dir, tmp_path):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_text((tiny_dir / name).read_text())
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = [{"name": "default", "template": "D{{ messages | length }}"},
                               {"name": "tool_use", "template": "T{{ tools | length }}"}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    ours, ref = Tokenizer.from_file(tmp_path), transformers.AutoTokenizer.from_pretrained(tmp_path)
    conv, tools = CONVERSATIONS[0], [{"type": "function", "function": {"name": "f"}}]
    for kw in ({}, {"tools": tools}, {"chat_template": "tool_use", "tools": []}):
        assert ours.apply_chat_template(conv, tokenize=False, **kw) == \
            ref.apply_chat_template(conv, tokenize=False, **kw)
    (tmp_path / "chat_template.jinja").write_text("J{{ bos_token }}")  # wins over the config
    assert Tokenizer.from_file(tmp_path).apply_chat_template(conv, tokenize=False) == "J<s>"


def test_no_template_is_a_clear_error(tiny_dir):
    tok = Tokenizer.from_file(tiny_dir)
    assert tok.chat_template is None
    with pytest.raises(ValueError, match="no chat template.*chat_template="):
        tok.apply_chat_template(CONVERSATIONS[0])
    with pytest.raises(ValueError, match="empty conversation"):
        tok.apply_chat_template([])
