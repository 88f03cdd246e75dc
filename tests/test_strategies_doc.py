"""docs/strategies.md: a strategy written outside the package runs in generate, and picks
the minimum-Bayes-risk candidate among exactly the samples plain sampling draws."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "strategies.md"


@pytest.fixture(scope="module")
def namespace():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert blocks
    ns: dict = {}
    exec(compile("\n".join(blocks), str(DOC), "exec"), ns)
    return ns


def test_user_strategy_picks_the_mbr_candidate(namespace):
    lm, mbr, inputs = namespace["lm"], namespace["mbr"], namespace["inputs"]
    assert mbr.shape[0] == 2
    samples = lm.generate(**inputs, max_new_tokens=16, do_sample=True, top_k=40, rng=0,
                          num_return_sequences=6)
    groups = samples.reshape(2, 6, -1)
    f1 = namespace["unigram_f1"]
    prompt = inputs["input_ids"].shape[1]
    for g, chosen in zip(groups, mbr, strict=True):
        new = [c[prompt:].tolist() for c in g]
        risk = [np.mean([f1(a, b) for j, b in enumerate(new) if j != i])
                for i, a in enumerate(new)]
        np.testing.assert_array_equal(chosen, g[int(np.argmax(risk))])
        assert len({tuple(x) for x in new}) > 1           # the samples do differ


def test_user_strategy_works_in_the_chunked_driver(namespace):
    lm, mbr, inputs = namespace["lm"], namespace["mbr"], namespace["inputs"]
    chunked = lm.generate(**inputs, strategy=namespace["MinimumBayesRisk"](n=6),
                          max_new_tokens=16, do_sample=True, top_k=40, rng=0, max_time=1e6)
    np.testing.assert_array_equal(chunked, mbr)
