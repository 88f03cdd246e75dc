"""transformers' own contrastive search, DoLa and constrained beam search, as the oracle.

transformers 5 moved them to Hub repositories (``transformers-community/...``, code fetched
at run time). The last release that has all three in-tree is **4.55.4** (4.56 moved DoLa
and contrastive search out, 4.57 constrained beam search too). It runs in a virtual
environment built once per machine under ``$JAXGEN_TEST_CACHE`` (``python -m venv
--system-site-packages``, so the CPU torch already installed is reused, then ``pip
install transformers==4.55.4``; about 15 s), and `tests/reference_worker.py` runs the jobs
of a test module in one process::

    results = legacy([{"model": str(path), "ids": ids.tolist(), "mask": mask.tolist(),
                       "kwargs": {"penalty_alpha": 0.6, "top_k": 4, "max_new_tokens": 8}}])
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tests.real_models import cache_dir

VERSION = "4.55.4"
WORKER = Path(__file__).with_name("reference_worker.py")


def venv() -> Path:
    """The interpreter of the cached transformers-``VERSION`` environment (built if absent;
    built in a temporary folder and renamed, so an interrupted build leaves nothing)."""
    home = cache_dir() / f"venv-transformers-{VERSION}"
    python = home / "bin" / "python"
    if python.exists():
        return python
    tmp = Path(tempfile.mkdtemp(dir=cache_dir(), prefix="venv-building-"))
    try:
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(tmp)],
                       check=True)
        subprocess.run([str(tmp / "bin" / "python"), "-m", "pip", "install", "-q",
                        f"transformers=={VERSION}"], check=True)
        tmp.rename(home)          # the interpreter finds its prefix from its own path
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return python


def legacy(jobs: list[dict]) -> list[dict]:
    """Run ``jobs`` (see `tests/reference_worker.py`) with transformers ``VERSION``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    res = subprocess.run([str(venv()), str(WORKER)], input=json.dumps(jobs), text=True,
                         capture_output=True, env={**env, "TOKENIZERS_PARALLELISM": "false"})
    if res.returncode != 0:
        raise RuntimeError(f"transformers {VERSION} reference failed:\n{res.stderr[-4000:]}")
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


def legacy_outputs(checkpoints: dict, settings: list, ids, mask, *, pad: int,
                   extra: Callable[[int], dict] | None = None) -> dict:
    """4.55's outputs for every (model name, setting index) of the ``gpt2`` and ``llama``
    test checkpoints, in one reference process (``extra(i)``: more fields of job ``i``)."""
    jobs, keys = [], []
    for name in ("gpt2", "llama"):
        path = str(checkpoints[name][1].path)
        for i, kw in enumerate(settings):
            jobs.append({"model": path, "ids": ids.tolist(), "mask": mask.tolist(),
                         "kwargs": {**kw, "do_sample": False, "pad_token_id": pad},
                         **(extra(i) if extra else {})})
            keys.append((name, i))
    return dict(zip(keys, legacy(jobs), strict=True))
