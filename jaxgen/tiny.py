"""A tiny random Llama checkpoint with a byte-level BPE tokenizer, in Hugging Face layout.

For smoke tests and the command line before a trained model is at hand: the text it
writes is random, but every file is real (transformers loads the directory too).
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

_TEXT = """To be, or not to be, that is the question:
Whether 'tis nobler in the mind to suffer
The slings and arrows of outrageous fortune,
Or to take arms against a sea of troubles
And by opposing end them. To die, to sleep;
No more; and by a sleep to say we end
The heart-ache and the thousand natural shocks
That flesh is heir to: 'tis a consummation
Devoutly to be wish'd. ROMEO: JULIET: Once upon a time.
"""
EOS = "<|endoftext|>"


def make_tokenizer(vocab_size: int = 384):
    """A byte-level BPE ``tokenizers.Tokenizer`` with ``<|endoftext|>`` as id 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([_TEXT] * 4, trainer=trainer)
    return tok


def make_tiny_checkpoint(out: str | Path, seed: int = 0, hidden_size: int = 64,
                         num_layers: int = 2) -> Path:
    """Write config.json, model.safetensors, tokenizer.json, generation_config.json."""
    from jaxgen.models import Llama, LlamaConfig, save_checkpoint

    out = Path(out)
    tok = make_tokenizer()
    eos = tok.token_to_id(EOS)
    cfg = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden_size,
                      intermediate_size=2 * hidden_size, num_hidden_layers=num_layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model = Llama(cfg)
    params = model.init_params(jax.random.key(seed))
    save_checkpoint(model, params, out,
                    generation_config={"bos_token_id": eos, "eos_token_id": eos,
                                       "pad_token_id": eos})
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": EOS, "pad_token": EOS, "bos_token": EOS,
         "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2))
    return out
