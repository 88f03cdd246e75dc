"""The built-in strategies, one module each, and the choice of one from a config."""

from __future__ import annotations

from typing import Any

from jaxgen.decoding.strategies.beam import BeamSearch
from jaxgen.decoding.strategies.constrained import ConstrainedBeamSearch
from jaxgen.decoding.strategies.contrastive import ContrastiveSearch
from jaxgen.decoding.strategies.diverse import GroupBeamSearch
from jaxgen.decoding.strategies.dola import DoLa, candidate_layers
from jaxgen.decoding.strategies.forced import (
    DisjunctiveConstraint,
    PhrasalConstraint,
    as_constraint,
)
from jaxgen.decoding.strategies.sample import Sample
from jaxgen.decoding.strategies.speculative import Speculative

__all__ = ["BeamSearch", "ConstrainedBeamSearch", "ContrastiveSearch", "DisjunctiveConstraint",
           "DoLa", "GroupBeamSearch", "PhrasalConstraint", "Sample", "Speculative",
           "strategy_for"]


def _speculative(cfg: Any, draft: Any) -> Speculative:
    what = ("prompt_lookup_num_tokens" if draft is None else "assistant_model"
            if cfg.assistant_early_exit is None else "assistant_early_exit")
    if cfg.num_beams > 1:
        raise ValueError(f"{what} works with greedy decoding and sampling; allowed: "
                         f"num_beams=1 (got {cfg.num_beams})")
    if draft is not None and cfg.prompt_lookup_num_tokens is not None:
        raise ValueError(f"give either {what} or prompt_lookup_num_tokens, not both")
    if draft is None and cfg.num_assistant_tokens_schedule != "constant":
        raise ValueError(f"GenerationConfig.num_assistant_tokens_schedule="
                         f"{cfg.num_assistant_tokens_schedule!r} applies to a draft model "
                         f"(assistant_model or assistant_early_exit); prompt lookup proposes "
                         f"prompt_lookup_num_tokens every step; allowed: 'constant'")
    default = type(cfg)().assistant_confidence_threshold
    if draft is None and cfg.assistant_confidence_threshold != default:
        raise ValueError(f"GenerationConfig.assistant_confidence_threshold="
                         f"{cfg.assistant_confidence_threshold!r} applies to a draft model's "
                         f"probabilities; prompt lookup has none; allowed: {default!r}")
    for name in ("penalty_alpha", "dola_layers", "constraints", "force_words_ids"):
        if getattr(cfg, name) is not None:
            raise ValueError(f"GenerationConfig.{name} cannot be combined with {what} "
                             f"(speculative decoding); allowed: None")
    k = cfg.num_assistant_tokens if draft is not None else cfg.prompt_lookup_num_tokens
    return Speculative(k=k, draft=draft, ngram=int(cfg.max_matching_ngram_size or 2),
                       do_sample=bool(cfg.do_sample),
                       heuristic=cfg.num_assistant_tokens_schedule != "constant")


def _constrained(cfg: Any, n_eos: int) -> ConstrainedBeamSearch:
    """``constraints`` then ``force_words_ids`` (transformers' order), as jaxgen constraints."""
    made = []
    for name in ("constraints", "force_words_ids"):
        for c in getattr(cfg, name) or ():
            try:
                made.append(as_constraint(c))
            except ValueError as e:
                raise ValueError(f"GenerationConfig.{name}: {e}") from None
    return ConstrainedBeamSearch(num_beams=cfg.num_beams, constraints=tuple(made), n_eos=n_eos,
                                 num_return=cfg.num_return_sequences,
                                 early_stopping=cfg.early_stopping)


def _dola(cfg: Any, model: Any) -> DoLa:
    c = getattr(model, "config", None)
    layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", None)
    if layers is None or not hasattr(model, "head"):
        raise ValueError(f"GenerationConfig.dola_layers needs a model with an output head "
                         f"(model.head) and a layer count; {type(model).__name__} has not")
    tied = bool(getattr(c, "tie_word_embeddings", False))
    return DoLa(layers=candidate_layers(cfg.dola_layers, layers, tied),
                do_sample=bool(cfg.do_sample))


def strategy_for(cfg: Any, *, draft: Any = None, n_eos: int = 0, model: Any = None) -> Any:
    """The built-in strategy a validated ``GenerationConfig`` asks for (transformers'
    ``get_generation_mode``).

    draft: the assistant model (speculative decoding); n_eos: number of eos ids (beam
    search keeps ``max(2, 1 + n_eos) * num_beams`` candidates per step); model: the
    model (DoLa reads its layer count).
    """
    if draft is not None or cfg.prompt_lookup_num_tokens is not None:
        return _speculative(cfg, draft)
    if cfg.constraints is not None or cfg.force_words_ids is not None:
        return _constrained(cfg, n_eos)
    beams = cfg.num_beams
    if beams > 1 and cfg.num_beam_groups > 1:
        return GroupBeamSearch(num_beams=beams, num_groups=cfg.num_beam_groups, n_eos=n_eos,
                               early_stopping=cfg.early_stopping)
    if beams > 1:
        return BeamSearch(num_beams=beams, n_keep=max(2, 1 + n_eos) * beams,
                          do_sample=bool(cfg.do_sample), early_stopping=cfg.early_stopping)
    if not cfg.do_sample and cfg.penalty_alpha is not None and cfg.penalty_alpha > 0:
        return ContrastiveSearch(top_k=int(cfg.top_k))
    if cfg.dola_layers is not None:
        return _dola(cfg, model)
    return Sample(do_sample=bool(cfg.do_sample))
