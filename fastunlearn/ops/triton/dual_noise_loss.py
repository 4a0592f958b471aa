"""Triton kernels of :func:`fastunlearn.ops.dual_noise_loss`.

Forward: one read of ``pred`` and ``target``; each program reduces a fixed contiguous chunk into two fp32
partial sums (forget rows, retain rows — the forget rows are the first ``n_forget_elems`` elements of the
flattened batch), then a single-program kernel sums the partials in a fixed order and divides by the
counts. Two stages, no atomics: the result is bitwise reproducible.
Backward: one kernel reads ``pred`` and ``target`` once and writes the gradient of both sides.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastunlearn.ops.triton import device_guard

BLOCK = 1024
# Elements per program in the reduction: large enough that the partials are a tiny second pass,
# small enough to give thousands of programs (occupancy) on 64M-element inputs.
ITERS = 8
FINAL_BLOCK = 1024


@triton.jit
def _partials_kernel(pred_ptr, target_ptr, partial_ptr, n_elems, n_forget_elems, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    base = pid * (BLOCK * ITERS)
    acc_f = tl.zeros((BLOCK,), dtype=tl.float32)
    acc_r = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in tl.static_range(ITERS):
        offs = base + i * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n_elems
        p = tl.load(pred_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        t = tl.load(target_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        d = p - t
        sq = d * d
        is_f = offs < n_forget_elems
        acc_f += tl.where(is_f, sq, 0.0)
        acc_r += tl.where(is_f, 0.0, sq)
    tl.store(partial_ptr + pid * 2, tl.sum(acc_f, axis=0))
    tl.store(partial_ptr + pid * 2 + 1, tl.sum(acc_r, axis=0))


@triton.jit
def _finish_kernel(partial_ptr, out_ptr, n_partials, inv_count_f, inv_count_r, BLOCK: tl.constexpr):
    acc_f = tl.zeros((BLOCK,), dtype=tl.float32)
    acc_r = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n_partials, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < n_partials
        acc_f += tl.load(partial_ptr + offs * 2, mask=mask, other=0.0)
        acc_r += tl.load(partial_ptr + offs * 2 + 1, mask=mask, other=0.0)
    tl.store(out_ptr, tl.sum(acc_f, axis=0) * inv_count_f)
    tl.store(out_ptr + 1, tl.sum(acc_r, axis=0) * inv_count_r)


@triton.jit
def _backward_kernel(pred_ptr, target_ptr, grad_losses_ptr, grad_ptr, n_elems, n_forget_elems, inv_count_f, inv_count_r, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elems
    # dL/dloss of each side lives on the device: read it here instead of syncing with the host.
    scale_f = 2.0 * tl.load(grad_losses_ptr) * inv_count_f
    scale_r = 2.0 * tl.load(grad_losses_ptr + 1) * inv_count_r
    p = tl.load(pred_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    t = tl.load(target_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = (p - t) * tl.where(offs < n_forget_elems, scale_f, scale_r)
    tl.store(grad_ptr + offs, g.to(grad_ptr.dtype.element_ty), mask=mask)


def _inv(count: int) -> float:
    return 1.0 / count if count > 0 else 0.0


def forward(pred: torch.Tensor, target: torch.Tensor, n_forget: int) -> torch.Tensor:
    """fp32 ``[loss_forget, loss_retain]`` of contiguous ``pred``/``target``."""
    n = pred.numel()
    per_row = n // pred.shape[0] if pred.shape[0] else 0
    n_f = n_forget * per_row
    out = torch.empty(2, dtype=torch.float32, device=pred.device)
    n_prog = max(1, triton.cdiv(n, BLOCK * ITERS))
    partials = torch.empty(n_prog * 2, dtype=torch.float32, device=pred.device)
    with device_guard(pred.device):  # Triton launches on the current device, not the tensors'
        if n == 0:
            partials.zero_()
        else:
            _partials_kernel[(n_prog,)](pred, target, partials, n, n_f, BLOCK=BLOCK, ITERS=ITERS)
        _finish_kernel[(1,)](partials, out, n_prog, _inv(n_f), _inv(n - n_f), BLOCK=FINAL_BLOCK)
    return out


def backward(pred: torch.Tensor, target: torch.Tensor, n_forget: int, grad_losses: torch.Tensor) -> torch.Tensor:
    """Gradient of ``g_f·L_f + g_r·L_r`` with respect to ``pred`` (``grad_losses = [g_f, g_r]``, fp32)."""
    n = pred.numel()
    grad = torch.empty_like(pred)
    if n == 0:
        return grad
    n_f = n_forget * (n // pred.shape[0])
    with device_guard(pred.device):
        _backward_kernel[(triton.cdiv(n, BLOCK),)](
            pred, target, grad_losses, grad, n, n_f, _inv(n_f), _inv(n - n_f), BLOCK=BLOCK
        )
    return grad
