"""Triton kernels of :func:`fastunlearn.ops.bilevel_combine`.

Reduction pass: each program reduces a fixed contiguous chunk of both gradients into fp32 partials
(⟨g_o,g_i⟩, ‖g_i‖², ‖g_o‖², #non-finite); one program sums the partials in a fixed order. Update pass:
every program reads the four statistics from device memory, forms λ itself (so nothing waits on the
host and the step can be captured in a CUDA graph) and writes ``g_o + λ·g_i``.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastunlearn.ops.triton import device_guard

BLOCK = 1024
ITERS = 8
FINAL_BLOCK = 1024
APPLY_BLOCK = 2048


@triton.jit
def _stats_partials_kernel(go_ptr, gi_ptr, partial_ptr, n_elems, BLOCK: tl.constexpr, ITERS: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    base = pid * (BLOCK * ITERS)
    acc_dot = tl.zeros((BLOCK,), dtype=tl.float32)
    acc_ii = tl.zeros((BLOCK,), dtype=tl.float32)
    acc_oo = tl.zeros((BLOCK,), dtype=tl.float32)
    acc_bad = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in tl.static_range(ITERS):
        offs = base + i * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n_elems
        go = tl.load(go_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gi = tl.load(gi_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        acc_dot += go * gi
        acc_ii += gi * gi
        acc_oo += go * go
        # x - x is 0 for finite x and NaN for NaN and ±Inf: one test catches both.
        bad = ((go - go) != 0.0) | ((gi - gi) != 0.0)
        acc_bad += tl.where(bad, 1.0, 0.0)
    out = partial_ptr + pid * 4
    tl.store(out, tl.sum(acc_dot, axis=0))
    tl.store(out + 1, tl.sum(acc_ii, axis=0))
    tl.store(out + 2, tl.sum(acc_oo, axis=0))
    tl.store(out + 3, tl.sum(acc_bad, axis=0))


@triton.jit
def _stats_finish_kernel(partial_ptr, stats_ptr, n_partials, BLOCK: tl.constexpr):
    acc_dot = tl.zeros((BLOCK,), dtype=tl.float32)
    acc_ii = tl.zeros((BLOCK,), dtype=tl.float32)
    acc_oo = tl.zeros((BLOCK,), dtype=tl.float32)
    acc_bad = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n_partials, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < n_partials
        acc_dot += tl.load(partial_ptr + offs * 4, mask=mask, other=0.0)
        acc_ii += tl.load(partial_ptr + offs * 4 + 1, mask=mask, other=0.0)
        acc_oo += tl.load(partial_ptr + offs * 4 + 2, mask=mask, other=0.0)
        acc_bad += tl.load(partial_ptr + offs * 4 + 3, mask=mask, other=0.0)
    tl.store(stats_ptr, tl.sum(acc_dot, axis=0))
    tl.store(stats_ptr + 1, tl.sum(acc_ii, axis=0))
    tl.store(stats_ptr + 2, tl.sum(acc_oo, axis=0))
    tl.store(stats_ptr + 3, tl.sum(acc_bad, axis=0))


@triton.jit
def _apply_kernel(go_ptr, gi_ptr, stats_ptr, out_ptr, lam_ptr, n_elems, eta, RULE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    dot = tl.load(stats_ptr)
    nn_i = tl.load(stats_ptr + 1)
    nn_o = tl.load(stats_ptr + 2)
    n_bad = tl.load(stats_ptr + 3)
    finite = (n_bad == 0.0) & ((dot - dot) == 0.0) & ((nn_i - nn_i) == 0.0) & ((nn_o - nn_o) == 0.0)
    safe_nn_i = tl.where(nn_i > 0.0, nn_i, 1.0)
    if RULE == 0:  # bome
        lam = tl.maximum((eta * nn_i - dot) / safe_nn_i, 0.0)
    elif RULE == 1:  # cosine
        denom = tl.sqrt(nn_o) * tl.sqrt(nn_i)
        cos = tl.where(denom > 0.0, dot / tl.where(denom > 0.0, denom, 1.0), 0.0)
        lam = tl.maximum(eta - cos, 0.0)
    else:  # fixed
        lam = eta + 0.0 * dot
    use = finite & (nn_i > 0.0)
    lam = tl.where(use, lam, 0.0)
    if pid == 0:
        tl.store(lam_ptr, lam)
        tl.store(lam_ptr + 1, tl.where(finite, 1.0, 0.0))
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elems
    go = tl.load(go_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    gi = tl.load(gi_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    res = tl.where(finite, go + lam * gi, go)
    tl.store(out_ptr + offs, res.to(out_ptr.dtype.element_ty), mask=mask)


def stats(g_outer: torch.Tensor, g_inner: torch.Tensor) -> torch.Tensor:
    """fp32 ``[⟨g_o,g_i⟩, ‖g_i‖², ‖g_o‖², #non-finite]`` of two contiguous 1-D tensors."""
    n = g_outer.numel()
    n_prog = max(1, triton.cdiv(n, BLOCK * ITERS))
    partials = torch.empty(n_prog * 4, dtype=torch.float32, device=g_outer.device)
    out = torch.empty(4, dtype=torch.float32, device=g_outer.device)
    with device_guard(g_outer.device):  # Triton launches on the current device, not the tensors'
        if n == 0:
            partials.zero_()
        else:
            _stats_partials_kernel[(n_prog,)](g_outer, g_inner, partials, n, BLOCK=BLOCK, ITERS=ITERS)
        _stats_finish_kernel[(1,)](partials, out, n_prog, BLOCK=FINAL_BLOCK)
    return out


def apply(g_outer: torch.Tensor, g_inner: torch.Tensor, stats_: torch.Tensor, rule_id: int, eta: float, out: torch.Tensor) -> torch.Tensor:
    """Write ``g_o + λ·g_i`` (or ``g_o`` if non-finite) into ``out``; returns fp32 ``[λ, finite]``."""
    n = g_outer.numel()
    lam = torch.empty(2, dtype=torch.float32, device=g_outer.device)
    grid = (max(1, triton.cdiv(n, APPLY_BLOCK)),)
    with device_guard(g_outer.device):
        _apply_kernel[grid](g_outer, g_inner, stats_, out, lam, n, float(eta), RULE=rule_id, BLOCK=APPLY_BLOCK)
    return lam
