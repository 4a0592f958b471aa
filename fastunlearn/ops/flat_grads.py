"""``FlatGrads``: every parameter's gradient as a view into one contiguous buffer.

With the gradients in one flat tensor, "all parameters" is a single tensor for the fused ops:
:func:`bilevel_combine` reduces and updates it in two passes instead of looping over hundreds of
parameter tensors, and the optimizer reads the combined gradient in place through ``param.grad``.
"""
from __future__ import annotations

from typing import Iterable

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


class FlatGrads:
    """Owns flat gradient buffers for a fixed list of parameters and binds ``param.grad`` to one of them.

    >>> flat = FlatGrads(model.parameters())
    >>> g_f = flat.new_buffer(); flat.bind(g_f); loss_f.backward()      # ∇L_f lands in g_f
    >>> flat.bind(flat.buffer); loss_r.backward()                       # ∇L_r lands in flat.buffer
    >>> bilevel_combine(flat.buffer, g_f, out=flat.buffer); opt.step()  # optimizer sees g_r + λ g_f

    Autograd accumulates into an existing ``.grad`` in place, so views stay views across backward
    passes; :meth:`check_bound` verifies that no caller replaced them.

    Sharded parameters (``DTensor``, as FSDP2's ``fully_shard`` makes them): the buffer lays out this
    process's local shards, and each ``param.grad`` is a ``DTensor`` over a view of it — FSDP2 adds its
    reduce-scattered gradient into an existing ``grad``'s local tensor, so it lands in the buffer.
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
        self.buffer = self.new_buffer()
        self.bind(self.buffer)

    def new_buffer(self) -> torch.Tensor:
        """A zeroed flat tensor laid out like the parameters."""
        return torch.zeros(self.numel, dtype=self.dtype, device=self.device)

    def views(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """Per-parameter views of ``buffer`` (no copies)."""
        if buffer.numel() != self.numel or buffer.dim() != 1:
            raise ValueError(f"FlatGrads: expected a 1-D buffer of {self.numel} elements, got {tuple(buffer.shape)}")
        return [_wrap_like(chunk.view(_local(p).shape), p) for chunk, p in zip(buffer.split(self.numels), self.params)]

    def bind(self, buffer: torch.Tensor) -> None:
        """Make every ``param.grad`` a view into ``buffer`` (so backward accumulates into it)."""
        for p, v in zip(self.params, self.views(buffer)):
            p.grad = v
        self._bound = buffer

    def zero_(self, buffer: torch.Tensor | None = None) -> None:
        (self._bound if buffer is None else buffer).zero_()

    def check_bound(self) -> bool:
        """True while every ``param.grad`` still points into the bound buffer."""
        start = self._bound.data_ptr()
        item = self._bound.element_size()
        offset = 0
        for p, n in zip(self.params, self.numels):
            if p.grad is None or _local(p.grad).data_ptr() != start + offset * item:
                return False
            offset += n
        return True

    def copy_from_grads(self, buffer: torch.Tensor) -> None:
        """Gather the parameters' current ``.grad`` (wherever they live) into ``buffer``."""
        for p, v in zip(self.params, self.views(buffer)):
            if p.grad is None:
                v.zero_()
            elif _local(p.grad).data_ptr() != _local(v).data_ptr():
                _local(v).copy_(_local(p.grad))
