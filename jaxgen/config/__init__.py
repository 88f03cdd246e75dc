"""``GenerationConfig``: transformers' generation knobs, with jaxgen's support rules.

Field names and meanings are those of ``transformers.GenerationConfig`` (5.24). Where
transformers stores ``None`` and applies a default inside ``generate()``
(``GenerationConfig._get_default_generation_params``), our dataclass default *is* that
effective default, so ``GenerationConfig().top_k == 50``. Validation is plain Python, so
``validate()`` is cheap to call on every ``generate``.

Modules: ``generation`` (the dataclass), ``rules`` (value rules per field), ``support``
(supported fields, mode-only fields), ``validation`` (the checks), ``serialise`` (JSON).
"""

from jaxgen.config.generation import (
    DEFAULT_MAX_NEW_TOKENS,
    METADATA_KEYS,
    GenerationConfig,
    GenerationConfigWarning,
)
from jaxgen.config.rules import _RULES
from jaxgen.config.support import (
    BEAM_ONLY,
    ENCODER_DECODER_ONLY,
    NEUTRAL,
    SAMPLING_ONLY,
    SUPPORTED,
)

__all__ = [
    "BEAM_ONLY",
    "DEFAULT_MAX_NEW_TOKENS",
    "ENCODER_DECODER_ONLY",
    "METADATA_KEYS",
    "NEUTRAL",
    "SAMPLING_ONLY",
    "SUPPORTED",
    "GenerationConfig",
    "GenerationConfigWarning",
    "_RULES",
]
