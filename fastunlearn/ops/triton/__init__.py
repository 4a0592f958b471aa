"""Triton kernels of the fused ops (the default backend for CUDA tensors).

Its kernel modules import triton; :mod:`fastunlearn.ops.backends` checks that it can before any
kernel here is used. Under ``TRITON_INTERPRET=1`` (set before the first import) the same kernels run on
CPU tensors in Triton's interpreter, which is how the tests check them on machines without a GPU.

Device: a Triton launch goes to the *current* CUDA device, not to its tensors' device. Every launch here runs
inside :func:`device_guard` of its inputs' device, so tensors on ``cuda:1`` are worked on by ``cuda:1`` while
``cuda:0`` is current (one process given ``--device cuda:1``).
"""
from __future__ import annotations

import contextlib

import torch


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """Make ``device`` the current CUDA device for the block (``torch.cuda.device``: a no-op when it already
    is); a no-op context for any other device (CPU tensors under the interpreter)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


__all__ = ["device_guard"]
