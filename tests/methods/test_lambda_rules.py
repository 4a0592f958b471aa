"""EraseDiff's λ rules against their formulas (METHODS.md): on synthetic gradients through the op, and on the
real gradients of one EraseDiff step (the combined gradient must equal ∇L_r + λ∇L_f, with both gradients from
plain autograd on an independent copy of the model and λ from the rule's formula).
"""
from __future__ import annotations

import pytest
import torch

from fastunlearn.methods import Batch, get
from fastunlearn.methods.base import MethodConfig, parse_options
from fastunlearn.models.ddpm import DDPMAdapter
from fastunlearn.ops import bilevel_combine

from _erasediff_oracle import PlainEraseDiff, record_erasediff_step


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


@pytest.mark.parametrize("rule,eta", [("bome", 3.0), ("cosine", 1.0), ("fixed", 0.5)])
def test_erasediff_step_combines_its_gradients_by_the_rule(rule: str, eta: float, make_tiny_unet, monkeypatch):
    """λ and the combined buffer of one step against ∇L_r, ∇L_f from plain autograd on an independent copy
    of the model (same redrawn batch) and λ from :func:`expected_lambda` on those gradients — nothing taken
    from the method's own values. η is chosen so λ > 0 on this tiny model (⟨∇L_r,∇L_f⟩/‖∇L_f‖² ≈ 2.4, cos ≈ 0.5)."""
    adapter = DDPMAdapter(make_tiny_unet(), null_label=10)
    plain = PlainEraseDiff(adapter.unet, adapter.scheduler.alphas_cumprod, lr=1e-3, rule=rule, eta=eta,
                           grad_clip=0.0, target="pseudo_label", pseudo_classes=list(range(1, 10)))
    method = get("erasediff")()
    options = parse_options("erasediff", {"target": "pseudo_label", "lambda_rule": rule, "eta": eta,
                                          "grad_clip": 0.0, "ema_decay": 0.0})
    method.setup(adapter, MethodConfig(lr=1e-3, options=options, forget_classes=(0,)))
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(11)) * 2 - 1
    y_f, y_r = torch.zeros(4, dtype=torch.long), torch.tensor([1, 2, 3, 4])
    with record_erasediff_step(method, monkeypatch) as rec:
        gen = torch.Generator().manual_seed(1)  # one step generator for both sides, as the engine hands it
        metrics = method.step(Batch(x[:4], y_f, gen), Batch(x[4:], y_r, gen))
    want = plain.step(x[:4], y_f, x[4:], y_r, torch.Generator().manual_seed(1))
    g_r = torch.cat([g.reshape(-1) for g in want.g_r])
    g_f = torch.cat([g.reshape(-1) for g in want.g_f])
    lam = expected_lambda(g_r, g_f, rule, eta)
    assert lam > 0, "λ = 0 would leave ∇L_f out of the combined gradient and the check without power"
    assert float(metrics["lambda"]) == pytest.approx(lam, rel=1e-4, abs=1e-6)
    combined = torch.cat([g.reshape(-1) for g in rec.adam_grads[0]])  # what Adam read (no clip here)
    want_combined = g_r + lam * g_f
    torch.testing.assert_close(combined, want_combined, rtol=1e-4, atol=1e-6 * float(want_combined.abs().max()))
    assert method.flat.check_bound()
