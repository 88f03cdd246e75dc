"""JAX's persistent compilation cache for jaxgen: on by default, off by choice.

    jaxgen.load(...)                       # turns it on (once per process)
    JAXGEN_COMPILATION_CACHE=0 python ...  # never turned on by jaxgen
    jaxgen.compile_cache.disable_compilation_cache()   # the same, from code

The cache lives in ``$XDG_CACHE_HOME/jaxgen/xla`` (default ``~/.cache/jaxgen/xla``). A
warm cache skips XLA's compilation of the prefill and decode loops (what makes a
process's first ``generate`` slow); tracing still runs.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "JAXGEN_COMPILATION_CACHE"  # "0" / "false" / "off": never enable
_disabled = False


def cache_path() -> Path:
    """``$XDG_CACHE_HOME/jaxgen/xla``, or ``~/.cache/jaxgen/xla``."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "jaxgen" / "xla"


def enabled() -> bool:
    """Whether jaxgen may turn the cache on (not disabled by `ENV` or the function)."""
    return not _disabled and os.environ.get(ENV, "1").strip().lower() not in ("0", "false",
                                                                               "off", "no")


def enable_compilation_cache(path: str | os.PathLike | None = None) -> Path | None:
    """Turn on JAX's persistent compilation cache in ``path`` (default `cache_path`),
    caching every compiled program; None (and nothing changed) when disabled, or when
    the process already set its own ``jax_compilation_cache_dir``."""
    import jax

    if not enabled():
        return None
    current = jax.config.jax_compilation_cache_dir
    if current and path is None:
        return Path(current)
    path = Path(path) if path is not None else cache_path()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None  # a read-only home: run without the cache
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def disable_compilation_cache() -> None:
    """Keep jaxgen from turning the cache on in this process (a cache already on stays
    on: JAX reads its directory when it first compiles)."""
    global _disabled
    _disabled = True
