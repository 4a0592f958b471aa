"""Fixtures for the op tests: each fast backend forced in turn (Triton in its interpreter without a GPU,
see tests/conftest.py)."""
import pytest
import torch

from fastunlearn.ops import backends


def fast_backends() -> list[str]:
    """Every non-reference backend that can run on this machine's test device."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    names = []
    for name in ("triton", "cuda", "cpu"):
        reasons = backends.not_supported_reasons(name, device, torch.float32)
        if not reasons:
            names.append(name)
    return names


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(params=fast_backends() or ["reference"])
def backend(request, monkeypatch) -> str:
    """Force one backend for the duration of a test (the same switch users have)."""
    monkeypatch.setenv("FASTUNLEARN_BACKEND", request.param)
    return request.param
