"""EraseDiff's λ rules against their formulas (METHODS.md): on synthetic gradients through the op, and on the
real gradients of one EraseDiff step (the combined buffer must equal ∇L_r + λ∇L_f with λ from the rule).
"""
from __future__ import annotations

import pytest
import torch

from fastunlearn.methods import Batch, get
from fastunlearn.methods.base import MethodConfig, parse_options
from fastunlearn.models.ddpm import DDPMAdapter
from fastunlearn.ops import bilevel_combine


def expected_lambda(g_r: torch.Tensor, g_f: torch.Tensor, rule: str, eta: float) -> float:
    g_r, g_f = g_r.double(), g_f.double()
    dot, nf, nr = float(g_r @ g_f), float(g_f @ g_f), float(g_r @ g_r)
    if rule == "fixed":
        return eta
    if nf == 0:
        return 0.0
    if rule == "bome":  # λ = max(0, η − ⟨∇L_r, ∇L_f⟩/‖∇L_f‖²)
        return max(0.0, eta - dot / nf)
    return max(0.0, eta - dot / (nf ** 0.5 * nr ** 0.5))  # cosine: λ = max(0, η − cos)


@pytest.mark.parametrize("rule", ["bome", "cosine", "fixed"])
@pytest.mark.parametrize("case", ["aligned", "opposed", "orthogonal", "random"])
def test_rules_on_synthetic_gradients(rule: str, case: str):
    gen = torch.Generator().manual_seed(0)
    g_f = torch.randn(1001, generator=gen)
    g_r = {
        "aligned": 0.5 * g_f,
        "opposed": -2.0 * g_f,
        "orthogonal": torch.cat([g_f[1:], g_f[:1]]) - (torch.cat([g_f[1:], g_f[:1]]) @ g_f) / (g_f @ g_f) * g_f,
        "random": torch.randn(1001, generator=gen),
    }[case]
    eta = 0.3
    combined, lam, finite = bilevel_combine(g_r.clone(), g_f, rule=rule, eta=eta)
    want = expected_lambda(g_r, g_f, rule, eta)
    assert bool(finite)
    assert float(lam) == pytest.approx(want, rel=1e-4, abs=1e-5)
    torch.testing.assert_close(combined, g_r + want * g_f, rtol=1e-4, atol=1e-5)


def test_zero_forget_gradient_gives_zero_lambda():
    g_r = torch.randn(64)
    _, lam, _ = bilevel_combine(g_r.clone(), torch.zeros(64), rule="bome", eta=0.1)
    assert float(lam) == 0.0


@pytest.mark.parametrize("rule", ["bome", "cosine", "fixed"])
def test_erasediff_step_combines_its_gradients_by_the_rule(rule: str, make_tiny_unet):
    adapter = DDPMAdapter(make_tiny_unet(), null_label=10)
    method = get("erasediff")()
    options = parse_options("erasediff", {"lambda_rule": rule, "eta": 0.5, "grad_clip": 0.0})
    method.setup(adapter, MethodConfig(lr=1e-3, options=options, forget_classes=(0,)))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8, 1, 16, 16, generator=gen) * 2 - 1
    forget = Batch(x[:4], torch.zeros(4, dtype=torch.long), gen)
    retain = Batch(x[4:], torch.tensor([1, 2, 3, 4]), gen)
    metrics = method.step(forget, retain)
    lam = float(metrics["lambda"])
    g_f = method.g_forget.clone()
    g_r = method.flat.buffer - lam * g_f  # the buffer holds ∇L_r + λ∇L_f (no clipping here)
    assert lam == pytest.approx(expected_lambda(g_r, g_f, rule, 0.5), rel=1e-3, abs=1e-4)
    assert method.flat.check_bound()
