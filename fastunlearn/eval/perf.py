"""Cost of a run: wall time, steps, throughput and peak memory.

:class:`Measure` is a context manager around any block (the unlearning loop, an evaluation)::

    with Measure(device) as m:
        loop(...)
    m.result(steps=loop.steps, samples=loop.steps * 2 * batch_size)

Peak memory means different things per device, so the result says which one it reports:

- CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` at the start — the peak of
  tensors allocated by PyTorch *during the block* (``peak_memory_kind = "cuda_allocated"``);
- CPU: the process's maximum resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``, KiB on
  Linux, bytes on macOS). The OS cannot reset it, so it is the peak *of the process so far*, an upper bound
  of the block's (``peak_memory_kind = "process_max_rss"``).
"""
from __future__ import annotations

import resource
import sys
import time
from typing import Any

import torch


def peak_rss_bytes() -> int:
    """The process's maximum resident set size so far, in bytes."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def samples_per_s(n_samples: int, wall_s: float) -> float:
    """Throughput ``n_samples / wall_s`` (0 when nothing was timed)."""
    return float(n_samples) / wall_s if wall_s > 0 else 0.0


class Measure:
    """Time a block and record its peak memory on ``device`` (a ``torch.device`` or string)."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.wall_s = 0.0
        self.peak_memory_bytes = 0
        self._t0 = 0.0

    @property
    def _cuda(self) -> bool:
        return self.device.type == "cuda" and torch.cuda.is_available()

    def __enter__(self) -> "Measure":
        if self._cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._cuda:
            torch.cuda.synchronize(self.device)  # queued kernels belong to the block's time
            self.peak_memory_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self.peak_memory_bytes = peak_rss_bytes()
        self.wall_s = time.perf_counter() - self._t0

    def result(self, steps: int | None = None, samples: int | None = None) -> dict[str, Any]:
        """``wall_s``, ``peak_memory_mib``, ``peak_memory_kind``, ``device`` and, when given, ``steps``,
        ``steps_per_s``, ``samples``, ``samples_per_s``."""
        out: dict[str, Any] = {
            "wall_s": self.wall_s, "device": str(self.device),
            "peak_memory_mib": self.peak_memory_bytes / 2**20,
            "peak_memory_kind": "cuda_allocated" if self._cuda else "process_max_rss",
        }
        if steps is not None:
            out["steps"] = int(steps)
            out["steps_per_s"] = samples_per_s(steps, self.wall_s)
        if samples is not None:
            out["samples"] = int(samples)
            out["samples_per_s"] = samples_per_s(samples, self.wall_s)
        return out


__all__ = ["Measure", "peak_rss_bytes", "samples_per_s"]
