"""EraseDiff's q̂ (``inner_steps=K``) against an independent computation, and the live model left alone.

q̂ = L_f(θ) − L_f(θ_K) on the step's forget rows, θ the just-updated live model and θ_K after K plain Adam
steps on L_f from a copy of it. The test redraws the step's forget rows from the same seed (the draw order
of ``EraseDiff._forget_inputs`` and ``DDPMAdapter.noised_batch``), copies the model itself and runs torch's
Adam on the plain MSE — nothing of the method's own intermediate values.
"""
from __future__ import annotations

import copy

import pytest
import torch
from diffusers import DDPMScheduler

from fastunlearn.methods import base as methods
from fastunlearn.models.ddpm import DDPMAdapter

K, LR, N = 3, 1e-3, 4
RETAINED = (1, 2, 3)


def _batches(step: int):
    g = torch.Generator().manual_seed(100 + step)
    images = torch.rand(2 * N, 1, 16, 16, generator=g) * 2 - 1
    forget_labels = torch.zeros(N, dtype=torch.long)
    retain_labels = torch.tensor(RETAINED)[torch.arange(N) % len(RETAINED)]
    return images[:N], forget_labels, images[N:], retain_labels


def _forget_rows(unet_before, scheduler, x0, labels, seed: int, target: str):
    """(x_t, t, labels, target) of the step's forget side, redrawn from its generator in plain PyTorch."""
    g = torch.Generator().manual_seed(seed)
    ab = scheduler.alphas_cumprod.to(torch.float32)
    if target == "uniform":
        noise = torch.rand(x0.shape, generator=g)
        t = torch.randint(0, 1000, (N,), generator=g)
    else:
        t = torch.randint(0, 1000, (N,), generator=g)
        noise = torch.randn(x0.shape, generator=g, dtype=torch.float32)
    x_t = ab[t].sqrt().view(-1, 1, 1, 1) * x0 + (1 - ab[t]).sqrt().view(-1, 1, 1, 1) * noise
    if target == "uniform":
        return x_t, t, labels, noise
    pick = torch.randint(0, len(RETAINED), (N,), generator=g)
    c_prime = torch.tensor(RETAINED)[pick]
    with torch.no_grad():
        eps_f = unet_before(x_t, t, class_labels=c_prime).sample
    return x_t, t, labels, eps_f


def _independent_q_hat(unet_after, x_t, t, labels, eps_f) -> float:
    scratch = copy.deepcopy(unet_after)
    for p in scratch.parameters():
        p.requires_grad_(True)
        p.grad = None
    opt = torch.optim.Adam(scratch.parameters(), lr=LR)

    def loss():
        return ((scratch(x_t, t, class_labels=labels).sample - eps_f) ** 2).mean()

    with torch.no_grad():
        start = loss().item()
    for _ in range(K):
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()
    with torch.no_grad():
        return start - loss().item()


def _run(make_tiny_unet, inner_steps: int, target: str, steps: int = 2):
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    adapter = DDPMAdapter(make_tiny_unet(), scheduler, null_label=10)
    method = methods.get("erasediff")()
    opts = methods.parse_options("erasediff", {"inner_steps": inner_steps, "target": target})
    method.setup(adapter, methods.MethodConfig(lr=LR, options=opts, forget_classes=(0,), retain_classes=RETAINED))
    out = []
    for step in range(steps):
        fx, fy, rx, ry = _batches(step)
        before = copy.deepcopy(adapter.unet)
        metrics = method.step(methods.Batch(fx, fy, torch.Generator().manual_seed(step)),
                              methods.Batch(rx, ry, torch.Generator().manual_seed(50 + step)))
        out.append((metrics, before, copy.deepcopy(adapter.unet), fx, fy, step))
    return adapter, method, out


@pytest.mark.parametrize("target", ["uniform", "pseudo_label"])
def test_q_hat_equals_an_independent_scratch_computation(make_tiny_unet, target):
    _, _, steps = _run(make_tiny_unet, K, target)
    for metrics, before, after, fx, fy, seed in steps:
        x_t, t, labels, eps_f = _forget_rows(before, DDPMScheduler(num_train_timesteps=1000), fx, fy, seed, target)
        want = _independent_q_hat(after, x_t, t, labels, eps_f)
        got = float(metrics["q_hat"])
        assert abs(want) > 1e-6  # K Adam steps on L_f lower it
        assert got == pytest.approx(want, rel=1e-3, abs=1e-7), (seed, got, want)


def test_q_hat_leaves_the_live_model_and_optimizer_untouched(make_tiny_unet):
    plain, plain_m, _ = _run(make_tiny_unet, 0, "pseudo_label")
    inner, inner_m, _ = _run(make_tiny_unet, K, "pseudo_label")
    for (name, a), b in zip(plain.unet.named_parameters(), inner.unet.parameters()):
        assert torch.equal(a, b), name
    for a, b in zip(plain_m.ema, inner_m.ema):
        assert torch.equal(a, b)
    sa, sb = plain_m.optimizer.state_dict()["state"], inner_m.optimizer.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) and torch.equal(sa[k]["step"], sb[k]["step"])
