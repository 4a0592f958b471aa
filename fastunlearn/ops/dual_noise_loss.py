"""``dual_noise_loss``: the denoising loss of the forget rows and of the retain rows in one pass.

``dual_noise_loss(pred, target, n_forget)`` reads a prediction and its target once and returns the mean
squared error of the first ``n_forget`` rows and of the rest (fp32 accumulation whatever the input dtype; an
empty side gives 0); its backward writes the gradient of both sides in one kernel.

Who calls it how: EraseDiff's default step runs the model once per side (one forward+backward for the forget
batch, one for the retain batch: cheaper than one pass over both, see methods/erasediff.py), so there it is
called once per side with the other side empty, i.e. as a fused MSE. The two-sided form — the model run
once on the concatenated batch ``[forget rows; retain rows]`` — is what EraseDiff's ``single_forward=True``
and the ``gradient_ascent`` baseline (NegGrad+) use. Either way the op is a small share of a step: the
model's forward and backward passes dominate (``fused_ops_pct`` in benchmarks/results/step.csv).
Backends: see :mod:`fastunlearn.ops.backends`.
"""
from __future__ import annotations

import torch

from fastunlearn.ops import backends, reference


def _kernels(backend: str):
    """(forward, backward) callables of a fast backend, with the extension ops' signatures."""
    if backend == "triton":
        from fastunlearn.ops.triton import dual_noise_loss as tk

        return tk.forward, tk.backward
    ops = torch.ops.fastunlearn
    return ops.dual_noise_loss_forward, ops.dual_noise_loss_backward


class _DualNoiseLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred, target, n_forget, backend):
        fwd, _ = _kernels(backend)
        losses = fwd(pred, target, n_forget)
        ctx.save_for_backward(pred, target)
        ctx.n_forget, ctx.backend = n_forget, backend
        return losses[0], losses[1]

    @staticmethod
    def backward(ctx, grad_f, grad_r):
        pred, target = ctx.saved_tensors
        _, bwd = _kernels(ctx.backend)
        zero = torch.zeros((), dtype=torch.float32, device=pred.device)
        grad_losses = torch.stack([
            grad_f.float() if grad_f is not None else zero,
            grad_r.float() if grad_r is not None else zero,
        ])
        grad = bwd(pred, target, ctx.n_forget, grad_losses)
        grad_pred = grad if ctx.needs_input_grad[0] else None
        grad_target = -grad if ctx.needs_input_grad[1] else None
        return grad_pred, grad_target, None, None


def _check(pred: torch.Tensor, target: torch.Tensor, n_forget: int) -> None:
    if not isinstance(pred, torch.Tensor) or not isinstance(target, torch.Tensor):
        raise TypeError("dual_noise_loss expects tensors for pred and target")
    if pred.shape != target.shape:
        raise ValueError(f"dual_noise_loss: pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.dim() < 1:
        raise ValueError("dual_noise_loss: pred must have a batch dimension (dim 0)")
    if pred.dtype != target.dtype:
        raise ValueError(f"dual_noise_loss: pred is {pred.dtype} but target is {target.dtype}")
    if pred.device != target.device:
        raise ValueError(f"dual_noise_loss: pred is on {pred.device} but target on {target.device}")
    if not 0 <= int(n_forget) <= pred.shape[0]:
        raise ValueError(f"dual_noise_loss: n_forget={n_forget} is outside [0, batch={pred.shape[0]}]")


def dual_noise_loss(pred: torch.Tensor, target: torch.Tensor, n_forget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(L_f, L_r)``: mean of ``(pred − target)²`` over rows ``[:n_forget]`` and over rows ``[n_forget:]``.

    ``pred`` and ``target`` share shape ``[B, ...]`` and dtype (fp32, bf16 or fp16); the losses are fp32
    0-dim tensors on the input's device; an empty side gives 0. Differentiable in ``pred`` and ``target``.
    In EraseDiff, ``L_f`` is the inner (forget) objective and ``L_r`` the outer (retain) one.
    """
    _check(pred, target, n_forget)
    n_forget = int(n_forget)
    backend = backends.select("dual_noise_loss", pred.device, pred.dtype)
    if backend == "reference":
        return reference.dual_noise_loss(pred, target, n_forget)
    return _DualNoiseLoss.apply(pred.contiguous(), target.contiguous(), n_forget, backend)
