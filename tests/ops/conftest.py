"""Fixtures for the op tests: each fast backend forced in turn (Triton in its interpreter without a GPU,
see tests/conftest.py), or only the backend forced from the environment.

``FASTUNLEARN_BACKEND=reference python -m pytest tests/ops`` (CI's second pass) must test the reference
backend's dispatch: a backend named in the environment when the session starts is the only one the
``backend`` fixture gives, instead of being overridden by each fast backend in turn.
"""
import os

import pytest
import torch

from fastunlearn.ops import backends


def environment_backend() -> str | None:
    """The backend forced by ``FASTUNLEARN_BACKEND`` at session start (aliases resolved), None for auto/unset."""
    name = os.environ.get("FASTUNLEARN_BACKEND", "").strip().lower()
    name = backends.ALIASES.get(name, name)
    return None if name in ("", "auto") else name


# Read once at collection, before any test's monkeypatch changes the variable.
FORCED = environment_backend()


def fast_backends() -> list[str]:
    """Every non-reference backend that can run on this machine's test device."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = []
    for name in ("triton", "cuda", "cpu"):
        reasons = backends.not_supported_reasons(name, device, torch.float32)
        if not reasons:
            names.append(name)
    return names


def backend_params() -> list[str]:
    """The forced backend alone when the environment names one, else every fast backend (reference if none)."""
    return [FORCED] if FORCED else (fast_backends() or ["reference"])


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def forced_backend() -> str | None:
    """The backend ``FASTUNLEARN_BACKEND`` named when the session started (None: auto or unset)."""
    return FORCED


@pytest.fixture(params=backend_params())
def backend(request, monkeypatch) -> str:
    """Force one backend for the duration of a test (the same switch users have)."""
    monkeypatch.setenv("FASTUNLEARN_BACKEND", request.param)
    return request.param
