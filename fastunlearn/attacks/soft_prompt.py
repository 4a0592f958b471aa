"""The continuous prefix attack: ``k`` token embeddings placed after a prompt's first token, fitted so that the
model's noise prediction under the prefixed prompt matches a target.

    min_P  ‖ε_θ(x_t, t, TE(P ⊕ c)) − target‖²          P ∈ R^{k×D} (the encoder's input-embedding space)

- ``pgd`` (AdvUnlearn's default attack): ``steps`` Adam steps at ``lr`` on P, a fresh Adam each call;
- ``fast_at``: ``steps`` signed-gradient steps P ← P − lr · sign(∇_P L) (their ``fast_at`` variant).

Who uses it: AdvUnlearn's in-training attack (:mod:`fastunlearn.methods.advunlearn`; target = the frozen model's
prediction for the concept, so the prefix makes the unlearned model draw the concept again) and the
``soft-prompt`` evaluation attack (:mod:`fastunlearn.attacks`; target = the noise of the concept's images: the
denoising loss of UnlearnDiffAtk, without the discreteness constraint — an upper bound on a white-box attacker).

Only P gets a gradient (``torch.autograd.grad`` with P as the one input): neither the UNet's nor a training text
encoder's weights accumulate anything. The loss is :func:`fastunlearn.ops.dual_noise_loss` over all rows (one
group). The model is reached through the adapter (:meth:`~fastunlearn.models.t2i.T2IAdapter.encode_prefixed`,
:meth:`~fastunlearn.models.t2i.T2IAdapter.predict_embedded`).
"""
from __future__ import annotations

from typing import Any

import torch

from fastunlearn.errors import UserInputError
from fastunlearn.ops import dual_noise_loss

MODES = ("pgd", "fast_at")


def prefix_loss(adapter: Any, labels: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, target: torch.Tensor,
                prefix: torch.Tensor) -> torch.Tensor:
    """‖ε(x_t, t, TE(prefix ⊕ c)) − target‖² (mean over every element) for prompt ids ``labels`` ``[N]``;
    ``prefix`` ``[k, D]`` (shared by the rows) or ``[N, k, D]``, float; differentiable in ``prefix`` (and in the
    text encoder's weights while it trains)."""
    states = adapter.encode_prefixed(labels, prefix, grad=True)
    pred = adapter.predict_embedded(x_t, t, states)
    loss, _ = dual_noise_loss(pred, target.to(pred.dtype), pred.shape[0])
    return loss


def fit_soft_prompt(adapter: Any, labels: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, target: torch.Tensor,
                    prefix: torch.Tensor, steps: int, lr: float, mode: str = "pgd") -> tuple[torch.Tensor, torch.Tensor]:
    """Fit the prefix ``prefix`` (``[k, D]`` initial value, not modified) for ``steps`` steps; returns the fitted
    prefix (detached) and the loss at the last step's input (0-dim, detached; no host read)."""
    if mode not in MODES:
        raise UserInputError(f"unknown soft-prompt attack mode {mode!r}; expected one of {', '.join(MODES)}")
    if steps < 0:
        raise UserInputError(f"attack steps must be >= 0, got {steps}")
    p = prefix.detach().clone().float().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=lr) if mode == "pgd" else None
    loss = torch.zeros((), device=x_t.device)
    for _ in range(steps):
        loss = prefix_loss(adapter, labels, x_t, t, target, p)
        (grad,) = torch.autograd.grad(loss, [p])
        if opt is not None:
            p.grad = grad
            opt.step()
        else:
            with torch.no_grad():
                p.sub_(lr * grad.sign())
        loss = loss.detach()
    return p.detach(), loss


__all__ = ["MODES", "prefix_loss", "fit_soft_prompt"]
