"""Plain-PyTorch oracles for every fused op.

These are the ground truth the tests compare each fast backend against, the eager baseline the
benchmarks measure, and the last fallback when no fast backend can serve an input. They are written
for clarity, not speed: the formulas here *are* the op contracts.
"""
from __future__ import annotations

import torch

# λ rules of the first-order bi-level update, by the ids the kernels use.
RULES = {"bome": 0, "cosine": 1, "fixed": 2}


def dual_noise_loss(pred: torch.Tensor, target: torch.Tensor, n_forget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean squared error of the forget rows ``[:n_forget]`` and of the retain rows ``[n_forget:]``.

    ``L_f = mean((pred[:n_f] - target[:n_f])**2)``, ``L_r = mean((pred[n_f:] - target[n_f:])**2)``,
    accumulated in fp32 whatever the input dtype; an empty side gives 0 (and no gradient).
    Differentiable with respect to ``pred`` and ``target`` through autograd.
    """
    diff = pred.float() - target.float()
    sq = diff * diff
    zero = sq.new_zeros(())
    loss_f = sq[:n_forget].mean() if n_forget > 0 else zero + 0.0 * sq.sum()
    loss_r = sq[n_forget:].mean() if n_forget < sq.shape[0] else zero + 0.0 * sq.sum()
    return loss_f, loss_r


def bilevel_stats(g_outer: torch.Tensor, g_inner: torch.Tensor) -> torch.Tensor:
    """The reduction pass: fp32 ``[⟨g_o, g_i⟩, ‖g_i‖², ‖g_o‖², #non-finite elements]``.

    The last entry counts positions where either gradient is NaN or ±Inf. Under sharded training the
    caller all-reduces (sums) this vector across ranks before :func:`bilevel_apply` forms λ.
    """
    go = g_outer.reshape(-1).float()
    gi = g_inner.reshape(-1).float()
    bad = (~torch.isfinite(go)) | (~torch.isfinite(gi))
    return torch.stack([torch.dot(go, gi), torch.dot(gi, gi), torch.dot(go, go), bad.sum().float()])


def bilevel_lambda(stats: torch.Tensor, rule: str, eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """λ and the finite flag from the reduced statistics, on the statistics' device (no host sync).

    - ``bome`` (BOME, Liu et al. 2022; EraseDiff's paper rule): λ = max(0, (η‖g_i‖² − ⟨g_o,g_i⟩)/‖g_i‖²)
    - ``cosine`` (the EraseDiff authors' adaptive code): λ = max(0, η − cos(g_o, g_i)), cos = 0 if a norm is 0
    - ``fixed`` (the authors' default): λ = η
    λ is 0 when ‖g_i‖ = 0 (nothing to combine) or when any input is non-finite.
    """
    if rule not in RULES:
        raise ValueError(f"unknown λ rule {rule!r}: expected one of {sorted(RULES)}")
    dot, nn_i, nn_o, n_bad = stats[0], stats[1], stats[2], stats[3]
    finite = (n_bad == 0) & torch.isfinite(dot) & torch.isfinite(nn_i) & torch.isfinite(nn_o)
    safe_nn_i = torch.where(nn_i > 0, nn_i, torch.ones_like(nn_i))
    if rule == "bome":
        lam = torch.clamp_min((eta * nn_i - dot) / safe_nn_i, 0.0)
    elif rule == "cosine":
        denom = torch.sqrt(nn_o) * torch.sqrt(nn_i)
        cos = torch.where(denom > 0, dot / torch.where(denom > 0, denom, torch.ones_like(denom)), torch.zeros_like(dot))
        lam = torch.clamp_min(eta - cos, 0.0)
    else:
        lam = torch.full_like(dot, float(eta))
    lam = torch.where(finite & (nn_i > 0), lam, torch.zeros_like(lam))
    return lam, finite


def bilevel_apply(
    g_outer: torch.Tensor, g_inner: torch.Tensor, stats: torch.Tensor, rule: str, eta: float, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The update pass: ``out = g_o + λ·g_i`` if every input was finite, else ``out = g_o``."""
    lam, finite = bilevel_lambda(stats, rule, eta)
    combined = torch.where(finite, g_outer.float() + lam * g_inner.float(), g_outer.float()).to(g_outer.dtype)
    if out is None:
        return combined, lam, finite
    out.copy_(combined)
    return out, lam, finite


def bilevel_combine(
    g_outer: torch.Tensor, g_inner: torch.Tensor, rule: str = "bome", eta: float = 0.1, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First-order bi-level gradient combination: ``(g_o + λ·g_i, λ, finite)``; see :func:`bilevel_lambda`."""
    return bilevel_apply(g_outer, g_inner, bilevel_stats(g_outer, g_inner), rule, eta, out)
