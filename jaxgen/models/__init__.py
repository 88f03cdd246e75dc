"""Models behind the `CausalLM` protocol and Hugging Face checkpoint IO."""

from jaxgen.models.base import CausalLM, KVCache, logits, positions_from_mask
from jaxgen.models.checkpoint import load_checkpoint, save_checkpoint
from jaxgen.models.gpt2 import GPT2, GPT2Config
from jaxgen.models.llama import Llama, LlamaConfig

__all__ = [
    "GPT2", "CausalLM", "GPT2Config", "KVCache", "Llama", "LlamaConfig", "load_checkpoint",
    "logits", "positions_from_mask", "save_checkpoint",
]
