"""Models behind the `CausalLM` protocol, their family registry and checkpoint IO.

Importing this package registers every built-in family: Llama / Mistral / Qwen2, Qwen3,
Gemma 2, Gemma 3 (text), Phi-3, OLMo 2, SmolLM3 (all on `jaxgen.models.decoder`) and GPT-2.
"""

from jaxgen.models.base import CausalLM, LanguageModel, forward, logits, positions_from_mask
from jaxgen.models.cache import KVCache, LayerCaches, RingCache
from jaxgen.models.checkpoint import load_checkpoint, save_checkpoint
from jaxgen.models.decoder import Decoder
from jaxgen.models.decoder_config import DecoderConfig
from jaxgen.models.gemma import Gemma2Config, Gemma3Config
from jaxgen.models.gpt2 import GPT2, GPT2Config
from jaxgen.models.llama import Llama, LlamaConfig
from jaxgen.models.olmo2 import Olmo2Config
from jaxgen.models.phi3 import Phi3Config
from jaxgen.models.qwen3 import Qwen3Config
from jaxgen.models.registry import Family, TensorNames, family_for_config, family_of, register
from jaxgen.models.smollm3 import SmolLM3Config

__all__ = [
    "GPT2", "CausalLM", "Decoder", "DecoderConfig", "Family", "GPT2Config", "Gemma2Config",
    "Gemma3Config", "KVCache", "LanguageModel", "LayerCaches", "Llama", "LlamaConfig",
    "Olmo2Config", "Phi3Config", "Qwen3Config", "RingCache", "SmolLM3Config", "TensorNames",
    "family_for_config", "family_of", "forward", "load_checkpoint", "logits",
    "positions_from_mask", "register", "save_checkpoint",
]
