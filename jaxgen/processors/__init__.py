"""Logits processors: pure, composable, jit-friendly pytrees (see ``base``)."""

from jaxgen.processors import zoo
from jaxgen.processors.base import (
    Chain,
    Context,
    LogitsProcessor,
    Stateless,
    apply,
    chain,
    pytree_dataclass,
    stateless,
)
from jaxgen.processors.constraints import (
    ForcedBOSToken,
    ForcedEOSToken,
    InfNanRemove,
    LogitNormalization,
    MinLength,
    MinNewTokensLength,
    PrefixConstrained,
    SuppressTokens,
    SuppressTokensAtBegin,
)
from jaxgen.processors.guidance import ClassifierFreeGuidance, UnbatchedClassifierFreeGuidance
from jaxgen.processors.penalties import (
    EncoderNoRepeatNGram,
    EncoderRepetitionPenalty,
    ExponentialDecayLengthPenalty,
    LogitBias,
    NoBadWords,
    NoRepeatNGram,
    PresenceFrequencyPenalty,
    RepetitionPenalty,
    SequenceBias,
    TokenCounts,
    init_counts,
    update_counts,
)
from jaxgen.processors.sampling import Epsilon, Eta, MinP, Temperature, TopH, TopK, TopP, Typical
from jaxgen.processors.watermark import (
    Watermark,
    WatermarkDetectorOutput,
    detect_watermark,
    green_tokens,
    watermark_score,
)

__all__ = [
    "Chain", "Context", "LogitsProcessor", "Stateless", "apply", "chain", "pytree_dataclass",
    "stateless",
    "ClassifierFreeGuidance", "UnbatchedClassifierFreeGuidance",
    "EncoderNoRepeatNGram", "EncoderRepetitionPenalty", "ExponentialDecayLengthPenalty",
    "ForcedBOSToken", "ForcedEOSToken", "InfNanRemove", "LogitBias", "LogitNormalization",
    "MinLength", "MinNewTokensLength", "MinP", "NoBadWords", "NoRepeatNGram",
    "PrefixConstrained", "PresenceFrequencyPenalty", "RepetitionPenalty", "SequenceBias",
    "SuppressTokens", "SuppressTokensAtBegin", "Temperature", "TokenCounts", "TopK", "TopP",
    "init_counts", "update_counts", "Epsilon", "Eta", "TopH", "Typical", "Watermark",
    "WatermarkDetectorOutput", "detect_watermark", "green_tokens", "watermark_score", "zoo",
]
