"""Which kernel backend serves an op call, and why the others cannot.

Backends, in the order ``auto`` tries them:

- ``triton``: Triton kernels (the default for CUDA tensors);
- ``cuda``: the CUDA kernels of the ``fastunlearn._C`` extension;
- ``cpu``: the C++ CPU kernels of the extension (the default for CPU tensors);
- ``reference``: plain PyTorch (:mod:`fastunlearn.ops.reference`), always available.

``FASTUNLEARN_BACKEND=auto|triton|cuda|cpu|reference`` (``torch`` is accepted for ``reference``) forces one;
a forced backend that cannot serve the input raises :class:`BackendUnavailableError` listing its reasons,
as xformers' dispatcher does. Each backend answers ``not_supported_reasons`` with human-readable strings;
``fastunlearn doctor`` prints them.
"""
from __future__ import annotations

import functools
import os

import torch

from fastunlearn.errors import BackendUnavailableError, UserInputError

ORDER = ("triton", "cuda", "cpu", "reference")
ALIASES = {"torch": "reference"}
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def requested_backend() -> str:
    """The backend named by ``FASTUNLEARN_BACKEND`` (read on every call so tests and users can switch)."""
    name = os.environ.get("FASTUNLEARN_BACKEND", "auto").strip().lower() or "auto"
    name = ALIASES.get(name, name)
    if name != "auto" and name not in ORDER:
        raise UserInputError(f"FASTUNLEARN_BACKEND={name!r} is not a backend: expected one of auto, {', '.join(ORDER)}")
    return name


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.lru_cache(maxsize=None)
def triton_import_error() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising something else
        return f"triton is not importable ({type(exc).__name__}: {exc}); `pip install triton`"
    return None


def _extension_status() -> dict:
    from fastunlearn.ops import _ext

    _ext.load()  # builds or loads once per process; failures are cached and reported in status()
    return _ext.status()


def not_supported_reasons(backend: str, device: torch.device, dtype: torch.dtype) -> list[str]:
    """Why ``backend`` cannot run an op on tensors of this device and dtype (empty list: it can)."""
    reasons: list[str] = []
    if dtype not in FLOAT_DTYPES:
        reasons.append(f"dtype {dtype} is not one of float32, bfloat16, float16")
    if backend == "reference":
        return reasons
    if backend == "triton":
        err = triton_import_error()
        if err:
            reasons.append(err)
        if device.type != "cuda" and not (device.type == "cpu" and triton_interpreted()):
            reasons.append(f"tensors are on {device.type}; Triton runs CUDA tensors (CPU only under TRITON_INTERPRET=1)")
        return reasons
    status = _extension_status()
    if not status["available"]:
        reasons.append(f"the C++ extension is not available: {status['reason']}")
    want = "cuda" if backend == "cuda" else "cpu"
    if device.type != want:
        reasons.append(f"tensors are on {device.type}; the {backend} backend runs {want} tensors")
    elif status["available"] and want not in status["devices"]:
        reasons.append(f"the extension was built without {want} kernels")
    return reasons


def select(op: str, device: torch.device, dtype: torch.dtype) -> str:
    """The backend that will run ``op``: the forced one, or the first in :data:`ORDER` that can.

    ``auto`` never picks the Triton interpreter on CPU: it is a correctness tool, far slower than C++.
    The answer depends only on (device type, dtype, the requested backend, the interpreter switch), all
    fixed for a process's lifetime apart from the environment variables, so it is cached on them: ops are
    called every step and the choice must cost nothing next to a small kernel.
    """
    return _select(op, device.type, dtype, requested_backend(), triton_interpreted())


@functools.lru_cache(maxsize=256)
def _select(op: str, device_type: str, dtype: torch.dtype, forced: str, interpreted: bool) -> str:
    device = torch.device(device_type)
    if forced != "auto":
        reasons = not_supported_reasons(forced, device, dtype)
        if reasons:
            raise BackendUnavailableError(
                f"FASTUNLEARN_BACKEND={forced} cannot run {op} on {device.type} {dtype}: " + "; ".join(reasons)
            )
        return forced
    for name in ORDER:
        if name == "triton" and device.type != "cuda":
            continue
        if not not_supported_reasons(name, device, dtype):
            return name
    return "reference"


def explain(device: torch.device, dtype: torch.dtype = torch.float32) -> list[tuple[str, list[str]]]:
    """Every backend with its reasons for refusing tensors of this device/dtype (for ``fastunlearn doctor``)."""
    out = []
    for name in ORDER:
        reasons = not_supported_reasons(name, device, dtype)
        if name == "triton" and device.type != "cuda" and not reasons:
            reasons = ["not chosen by auto on CPU: the Triton interpreter is a correctness tool (force it to use it)"]
        out.append((name, reasons))
    return out
