"""The first layers of a model as its own draft (``assistant_early_exit``).

transformers' ``EarlyExitCandidateGenerator`` drafts with the target itself, its config
set to ``num_hidden_layers = n`` for the draft's calls: the first ``n`` layers, then the
final norm and the output head (LayerSkip models are trained for this exit). Here the
draft is the same model class with ``n`` layers and a parameter tree that holds the
target's own arrays for the embeddings, layers ``0..n-1``, the final norm and the head:
nothing is copied, and the draft keeps a KV cache of ``n`` layers, as the assistant's
cache does in transformers.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: Config fields holding the layer count, by model family.
_DEPTH_FIELDS = ("num_hidden_layers", "n_layer")
#: Config fields with one entry per layer (cut with the layers).
_PER_LAYER_FIELDS = ("layer_types", "no_rope_layers")


def early_exit_draft(model: Any, params: Any, n: int) -> tuple[Any, Any]:
    """``(draft model, draft params)``: ``model`` cut after its first ``n`` layers.

    ValueError naming ``assistant_early_exit`` when ``n`` is not in ``1..layers`` or the
    model has no per-layer parameters to cut (stacked ``scan_layers`` weights, a model
    class without a layer count).
    """
    config = getattr(model, "config", None)
    field = next((f for f in _DEPTH_FIELDS if hasattr(config, f)), None)
    stacked = getattr(model, "scan_layers", False)
    if field is None or stacked or not dataclasses.is_dataclass(model):
        why = ("its layers are stacked (scan_layers=True); load it without scan_layers"
               if stacked else "it has no layer count in its config")
        raise ValueError(f"GenerationConfig.assistant_early_exit needs a model whose layers "
                         f"can be cut; {type(model).__name__} cannot: {why}")
    if not hasattr(params, "items"):
        raise ValueError("GenerationConfig.assistant_early_exit needs the model's params")
    depth = getattr(config, field)
    if not 1 <= n <= depth:
        raise ValueError(f"GenerationConfig.assistant_early_exit={n} is out of range for a "
                         f"model of {depth} layers; allowed: 1..{depth}")
    cut = {field: n}
    for name in _PER_LAYER_FIELDS:
        value = getattr(config, name, None)
        if value is not None:
            cut[name] = tuple(value)[:n]
    draft = dataclasses.replace(model, config=dataclasses.replace(config, **cut))
    return draft, {k: v for k, v in params.items() if _keeps(k, n)}


def _keeps(name: str, n: int) -> bool:
    """Whether the top-level parameter ``name`` belongs to the first ``n`` layers' model."""
    prefix = "layers_"
    return not name.startswith(prefix) or int(name[len(prefix):]) < n
