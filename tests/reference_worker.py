"""Runs inside the transformers 4.55 virtual environment (`tests/reference.py`), never
imported by the suite: reads jobs as JSON on stdin, writes one JSON result per job.

A job: ``{"model": dir, "ids": [[...]], "mask": [[...]], "kwargs": {...},
"constraints": [["phrasal", ids] | ["disjunctive", [ids, ...]], ...]}``; the result:
``{"sequences": [[...]], "sequences_scores": [...] | None}``. Checkpoints written by
transformers 5 keep the rope base in ``rope_parameters``, which 4.55 reads from
``rope_theta``.
"""

import json
import sys
import warnings

import torch
import transformers
from transformers import DisjunctiveConstraint, PhrasalConstraint

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
_MODELS: dict[str, object] = {}


def model(path: str):
    if path not in _MODELS:
        cfg = transformers.AutoConfig.from_pretrained(path)
        rope = getattr(cfg, "rope_parameters", None)
        if isinstance(rope, dict) and "rope_theta" in rope:
            cfg.rope_theta = rope["rope_theta"]
        m = transformers.AutoModelForCausalLM.from_pretrained(path, config=cfg)
        m.generation_config = transformers.GenerationConfig(
            bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id)
        _MODELS[path] = m.eval()
    return _MODELS[path]


def run(job: dict) -> dict:
    kwargs = dict(job["kwargs"])
    if job.get("constraints"):
        kwargs["constraints"] = [PhrasalConstraint(ids) if kind == "phrasal"
                                 else DisjunctiveConstraint(ids)
                                 for kind, ids in job["constraints"]]
    with torch.inference_mode():
        out = model(job["model"]).generate(
            torch.tensor(job["ids"]), attention_mask=torch.tensor(job["mask"]),
            return_dict_in_generate=True, output_scores=True, **kwargs)
    scores = getattr(out, "sequences_scores", None)
    return {"sequences": out.sequences.tolist(),
            "sequences_scores": None if scores is None else scores.tolist()}


def main() -> None:
    assert transformers.__version__.startswith("4.55"), transformers.__version__
    for job in json.load(sys.stdin):
        print(json.dumps(run(job)), flush=True)


if __name__ == "__main__":
    main()
