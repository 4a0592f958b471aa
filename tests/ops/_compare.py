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


def subnormal_spacing(dtype: torch.dtype) -> float:
    """The gap between adjacent subnormal numbers of ``dtype`` (the absolute rounding step near zero)."""
    finfo = torch.finfo(dtype)
    return finfo.tiny * finfo.eps


def grad_tolerance(want: torch.Tensor, dtype: torch.dtype) -> tuple[float, float]:
    """(rtol, atol) for a gradient computed in fp32 and stored in ``dtype``, relative to its magnitudes.

    A fixed ``atol`` is meaningless for gradients: a mean over n elements makes each one O(1/n), so at a
    few million elements a fixed 1e-6 exceeds every element and an all-zero gradient passes. Each element is
    one fp32 expression rounded once to ``dtype``, so the error is relative to the element itself: ``rtol``
    from :data:`STORE_TOL`, and ``atol`` only a floor for elements near zero (1e-3·rtol·max|want|) or below
    the dtype's normal range (one subnormal step: fp16 stores gradients of ~1e-7 as subnormals).
    """
    rtol = STORE_TOL[dtype][0]
    scale = float(want.detach().abs().max())
    return rtol, max(1e-3 * rtol * scale, subnormal_spacing(dtype))


def assert_grad_close(actual: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str = "",
                      min_power: float = 0.5) -> None:
    """``actual`` (stored in ``dtype``) matches the fp64 ``want`` under :func:`grad_tolerance`, and the check
    has power: an all-zero gradient would fail on at least ``min_power`` of the elements."""
    if want.numel() == 0:  # an empty row group: nothing to compare
        assert actual.numel() == 0, f"{what}: {actual.numel()} elements where none were expected"
        return
    rtol, atol = grad_tolerance(want, dtype)
    w = want.detach().double().abs().reshape(-1)
    resolvable = float((w > atol + rtol * w).double().mean())
    assert resolvable >= min_power, (
        f"{what}: the check has no power: only {resolvable:.1%} of |want| exceed the tolerance "
        f"(rtol={rtol}, atol={atol:.3g}, max|want|={float(w.max()):.3g})"
    )
    assert_close(actual, want, rtol, atol, what)


def mse_oracle(pred: torch.Tensor, target: torch.Tensor, n_forget: int, w_f: float, w_r: float):
    """fp64 ``(L_f, L_r, ∂(w_f·L_f + w_r·L_r)/∂pred)`` by autograd of the plain mean squared errors of rows
    ``[:n_forget]`` and ``[n_forget:]`` (an empty side is 0): written here, independent of the library."""
    p = pred.detach().double().requires_grad_()
    sq = (p - target.detach().double()) ** 2
    zero = p.new_zeros(())
    lf = sq[:n_forget].mean() if n_forget > 0 else zero
    lr = sq[n_forget:].mean() if n_forget < p.shape[0] else zero
    (grad,) = torch.autograd.grad(w_f * lf + w_r * lr, p)
    return lf.detach(), lr.detach(), grad


def combine_oracle(g_outer: torch.Tensor, g_inner: torch.Tensor, rule: str, eta: float):
    """fp64 ``(g_o + λ·g_i, λ)`` with λ by the rule's formula (METHODS.md), independent of the library."""
    go, gi = g_outer.detach().double().reshape(-1), g_inner.detach().double().reshape(-1)
    dot, nn_i, nn_o = float(go @ gi), float(gi @ gi), float(go @ go)
    if nn_i == 0:
        lam = 0.0
    elif rule == "bome":
        lam = max(0.0, eta - dot / nn_i)
    elif rule == "cosine":
        lam = max(0.0, eta - (dot / (nn_o ** 0.5 * nn_i ** 0.5) if nn_o > 0 else 0.0))
    else:
        lam = float(eta)
    return (go + lam * gi).reshape(g_outer.shape), lam


def check_ops_at_size(device: torch.device, dtype: torch.dtype, numel: int) -> None:
    """Both fused ops at one (large) size against the oracles above, with the backend the environment forces.

    The gradient of ``0.5·L_f + 2·L_r`` is O(1/numel) per element: compared with :func:`assert_grad_close`
    (relative tolerance, power asserted) on both row groups, the forget rows and the retain rows.
    """
    from fastunlearn.ops import bilevel_combine, dual_noise_loss

    gen = torch.Generator().manual_seed(numel)
    pred = torch.randn(numel, generator=gen).to(device, dtype).requires_grad_()
    target = torch.randn(numel, generator=gen).to(device, dtype)
    n_forget = numel // 3
    lf, lr = dual_noise_loss(pred, target, n_forget)
    (0.5 * lf + 2.0 * lr).backward()
    want_f, want_r, want_grad = mse_oracle(pred, target, n_forget, 0.5, 2.0)
    assert_close(lf, want_f, 1e-5, 1e-7, "L_f")
    assert_close(lr, want_r, 1e-5, 1e-7, "L_r")
    assert pred.grad.dtype == dtype
    assert_grad_close(pred.grad[:n_forget], want_grad[:n_forget], dtype, f"grad of the forget rows (numel={numel})")
    assert_grad_close(pred.grad[n_forget:], want_grad[n_forget:], dtype, f"grad of the retain rows (numel={numel})")
    go = torch.randn(numel, generator=gen).to(device, dtype)
    gi = torch.randn(numel, generator=gen).to(device, dtype)
    for rule in ("bome", "cosine", "fixed"):
        out, lam, finite = bilevel_combine(go, gi, rule, 0.3)
        want, want_lam = combine_oracle(go, gi, rule, 0.3)
        assert bool(finite)
        assert abs(lam.item() - want_lam) <= 2e-5 * abs(want_lam) + 1e-6, f"λ {rule}: {lam.item()} vs {want_lam}"
        assert_close(out, want, STORE_TOL[dtype][0], 1e-5, f"combined {rule}")
