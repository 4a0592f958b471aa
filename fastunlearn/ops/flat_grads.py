"""``FlatGrads``: every parameter's gradient as a view into one contiguous buffer.

With the gradients in one flat tensor, "all parameters" is a single tensor for the fused ops:
:func:`bilevel_combine` reduces and updates it in two passes instead of looping over hundreds of
parameter tensors, and the optimizer reads the combined gradient in place through ``param.grad``.

Each gradient view has its parameter's strides, not necessarily contiguous ones: a channels-last conv
weight gets a channels-last gradient over its chunk of the buffer (its memory is still a dense block of
``numel`` elements). Fused Adam walks a parameter and its gradient as raw memory (CUDA's checks that they
share sizes and strides; the CPU one does not check and would update permuted elements), and autograd then
accumulates into the gradient without a layout-mismatch copy. So the buffer holds each parameter's gradient
in that parameter's memory order; tensors combined with it elementwise must be laid out the same way —
:meth:`FlatGrads.gather` does that.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch


def is_dtensor(t: object) -> bool:
    """Whether ``t`` is a sharded ``DTensor`` (what FSDP2's ``fully_shard`` makes parameters), without
    importing torch.distributed."""
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def _local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor (the tensor itself otherwise)."""
    return t._local_tensor if is_dtensor(t) else t


def _wrap_like(view: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``view`` as the gradient of ``param``: a DTensor with the parameter's layout when it is sharded."""
    if not is_dtensor(param):
        return view
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(view, param.device_mesh, param.placements, run_check=False,
                              shape=param.shape, stride=param.stride())


def dense_strides(t: torch.Tensor) -> tuple[int, ...]:
    """The strides of a dense tensor laid out like ``t``: ``t.stride()`` when ``t`` is dense and
    non-overlapping (contiguous, channels-last, any permutation), else those of ``torch.empty_like(t)``
    (dense, in ``t``'s dimension order)."""
    return torch.empty_like(t, device="meta").stride()


class FlatGrads:
    """Owns flat gradient buffers for a fixed list of parameters and binds ``param.grad`` to one of them.

    >>> flat = FlatGrads(model.parameters())
    >>> g_f = flat.new_buffer(); flat.bind(g_f); loss_f.backward()      # ∇L_f lands in g_f
    >>> flat.bind(flat.buffer); loss_r.backward()                       # ∇L_r lands in flat.buffer
    >>> bilevel_combine(flat.buffer, g_f, out=flat.buffer); opt.step()  # optimizer sees g_r + λ g_f

    Each ``param.grad`` is a view of the parameter's chunk of the buffer with the parameter's own strides
    (see the module docstring), so the buffer is in the parameters' memory order. Autograd accumulates into
    an existing ``.grad`` in place, so views stay views across backward passes; :meth:`check_bound`
    verifies that no caller replaced them.

    Sharded parameters (``DTensor``, as FSDP2's ``fully_shard`` makes them): the buffer lays out this
    process's local shards, and each ``param.grad`` is a ``DTensor`` over a view of it (with the local
    shard's strides) — FSDP2 adds its reduce-scattered gradient into an existing ``grad``'s local tensor,
    so it lands in the buffer.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter]):
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("FlatGrads: no parameter requires a gradient")
        dtypes = {p.dtype for p in self.params}
        devices = {p.device for p in self.params}
        if len(dtypes) != 1 or len(devices) != 1:
            raise ValueError(f"FlatGrads: parameters must share one dtype and device, got {dtypes} on {devices}")
        self.dtype, self.device = dtypes.pop(), devices.pop()
        self.numels = [_local(p).numel() for p in self.params]
        self.numel = sum(self.numels)
        #: each gradient view's (local) shape and strides: the parameter's own when it is dense
        self.layouts = [(tuple(_local(p).shape), dense_strides(_local(p))) for p in self.params]
        self.buffer = self.new_buffer()
        self.bind(self.buffer)

    def new_buffer(self) -> torch.Tensor:
        """A zeroed flat tensor laid out like the parameters."""
        return torch.zeros(self.numel, dtype=self.dtype, device=self.device)

    def views(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views of ``buffer`` (no copies), each with its parameter's shape and strides."""
        if buffer.numel() != self.numel or buffer.dim() != 1:
            raise ValueError(f"FlatGrads: expected a 1-D buffer of {self.numel} elements, got {tuple(buffer.shape)}")
        return [_wrap_like(torch.as_strided(chunk, shape, stride), p)
                for chunk, (shape, stride), p in zip(buffer.split(self.numels), self.layouts, self.params)]

    def bind(self, buffer: torch.Tensor) -> None:
        """Make every ``param.grad`` a view into ``buffer`` (so backward accumulates into it)."""
        for p, v in zip(self.params, self.views(buffer)):
            p.grad = v
        self._bound = buffer

    def gather(self, tensors: Sequence[torch.Tensor]) -> torch.Tensor:
        """A new flat tensor holding ``tensors`` (one per parameter, each of its shape) laid out like the
        gradient buffers — what a per-parameter quantity must be to combine elementwise with them
        (``torch.cat([t.reshape(-1) ...])`` is the row-major order, which differs for channels-last)."""
        out = self.new_buffer()
        if len(tensors) != len(self.params):
            raise ValueError(f"FlatGrads.gather: expected {len(self.params)} tensors, got {len(tensors)}")
        for v, t in zip(self.views(out), tensors):
            _local(v).copy_(_local(t))
        return out

    def check_bound(self) -> bool:
        """True while every ``param.grad`` is still its view of the bound buffer: same memory, at its offset,
        with the parameter's shape and strides."""
        storage = self._bound.untyped_storage().data_ptr()
        offset = self._bound.storage_offset()
        for p, n, layout in zip(self.params, self.numels, self.layouts):
            if p.grad is None:
                return False
            g, local = _local(p.grad), _local(p)
            if (g.untyped_storage().data_ptr() != storage or g.storage_offset() != offset
                    or (tuple(g.shape), g.stride()) != layout or (tuple(local.shape), dense_strides(local)) != layout):
                return False
            offset += n
        return True
