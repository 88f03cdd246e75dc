"""Shared fixtures: compile counting."""

from __future__ import annotations

import jax
import pytest

_COMPILES: list[str] = []


def _listener(name: str, duration: float, **kwargs) -> None:
    if name == "/jax/core/compile/backend_compile_duration":
        _COMPILES.append(name)


jax.monitoring.register_event_duration_secs_listener(_listener)


class CompileCounter:
    """``with counter() as c: ...; c.count`` = backend compiles inside the block."""

    def __call__(self):
        return self

    def __enter__(self):
        self._start = len(_COMPILES)
        return self

    def __exit__(self, *exc):
        self.count = len(_COMPILES) - self._start
        return False


@pytest.fixture
def count_compiles() -> CompileCounter:
    return CompileCounter()
