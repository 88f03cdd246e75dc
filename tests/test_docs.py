"""The code in docs/ runs as written."""

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_processor_guide_examples_run():
    text = (DOCS / "processors.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    exec(compile("\n".join(blocks), "docs/processors.md", "exec"), namespace)
    assert namespace["out"][0, 2:].tolist() == [3, 3, 0, 0, 0]
