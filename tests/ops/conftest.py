"""Fixtures for the op tests: run Triton kernels in the interpreter when there is no GPU.

TRITON_INTERPRET must be set before the kernels are first decorated (imported), so it is set here, at
collection time, before any test imports fastunlearn.ops.triton.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from fastunlearn.ops import backends  # noqa: E402


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
