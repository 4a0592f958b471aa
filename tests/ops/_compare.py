"""Comparison helpers that say where tensors differ, not only that they do."""
from __future__ import annotations

import torch

# Tolerances for values computed with fp32 accumulation but *stored* in the input dtype:
# fp32 is limited by summation order; bf16 / fp16 by one rounding of the stored result.
STORE_TOL = {torch.float32: (1e-5, 1e-6), torch.bfloat16: (1.6e-2, 1e-5), torch.float16: (2e-3, 1e-6)}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float, what: str = "") -> None:
    """``torch.testing.assert_close`` that prints the five worst elements on failure."""
    a = actual.detach().double().cpu().reshape(-1)
    e = expected.detach().double().cpu().reshape(-1)
    assert a.shape == e.shape, f"{what}: {tuple(a.shape)} vs {tuple(e.shape)}"
    err = (a - e).abs() - (atol + rtol * e.abs())
    bad = torch.isnan(a) != torch.isnan(e)
    both_nan = torch.isnan(a) & torch.isnan(e)
    err = torch.where(both_nan, torch.full_like(err, -1.0), err)
    if bool((err > 0).any()) or bool(bad.any()):
        worst = torch.topk(torch.nan_to_num(err, nan=float("inf")), k=min(5, err.numel())).indices
        rows = ", ".join(f"[{i}] got {a[i].item():.8g} want {e[i].item():.8g}" for i in worst.tolist())
        raise AssertionError(f"{what}: {int((err > 0).sum())}/{err.numel()} elements out of tolerance "
                             f"(rtol={rtol}, atol={atol}); worst: {rows}")
