"""The gradient-sync interface a method sees, and its one-process implementation.

A method owns no distribution logic: right after each backward pass it hands its flat gradient buffer to the
``grad_sync`` of its :class:`~fastunlearn.methods.base.MethodConfig` and reads every whole-gradient quantity
(finiteness, norm, ``bilevel_combine``'s partial sums) through it. The interface lives here, on the methods'
side; the engine implements it for many processes (:class:`fastunlearn.engine.distributed.GradientSync`:
DDP's all-reduce of the buffer, or FSDP's per-shard partial sums). Nothing here imports the engine.
"""
from __future__ import annotations

from typing import Protocol

import torch


class Pending(Protocol):
    """An in-flight reduction of a buffer: :meth:`wait` finishes it (the buffer then holds the result)."""

    def wait(self) -> None: ...


class Done:
    """A reduction with nothing left to do (one process, or FSDP, whose backward already reduced)."""

    def wait(self) -> None:
        return None


class GradientSync:
    """What a method does with its flat gradient buffers across processes — the one distributed face it sees.

    - ``sync(buf)`` (or ``pending = sync.start(buf)`` … ``pending.wait()``, to overlap the reduction with other
      work), right after the buffer's backward pass: makes it the global-batch mean gradient;
    - ``sum_partials(t)``: the sum over the shards of per-shard partial sums (the ``reduce_stats`` of
      :func:`fastunlearn.ops.bilevel_combine`);
    - ``all_finite(buf)`` and ``norm(buf)``: of the whole gradient, from this process's buffer.

    This base class is the one-process sync: every call is the identity (or the plain local value). The
    engine's multi-process sync subclasses it and overrides what a process group changes.
    """

    def start(self, buffer: torch.Tensor) -> Pending:
        return Done()

    def __call__(self, buffer: torch.Tensor) -> torch.Tensor:
        self.start(buffer).wait()
        return buffer

    def sum_partials(self, partials: torch.Tensor) -> torch.Tensor:
        return partials

    def all_finite(self, buffer: torch.Tensor) -> torch.Tensor:
        return torch.isfinite(buffer).all()

    def norm(self, buffer: torch.Tensor) -> torch.Tensor:
        return buffer.norm()


#: The gradient sync of a one-process run.
IDENTITY = GradientSync()

__all__ = ["GradientSync", "IDENTITY", "Pending", "Done"]
