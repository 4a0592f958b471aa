"""EraseDiff on tiny models: targets, unconditional models, inner steps on a scratch copy, EMA, registry."""
from __future__ import annotations

import pytest
import torch

from fastunlearn.errors import UserInputError
from fastunlearn.methods import Batch, get
from fastunlearn.methods.base import MethodConfig, parse_options
from fastunlearn.models.ddpm import DDPMAdapter


def _run(unet, steps=2, unconditional=False, **options):
    adapter = DDPMAdapter(unet, null_label=10 if unet.config.num_class_embeds else None)
    method = get("erasediff")()
    method.setup(adapter, MethodConfig(lr=1e-3, options=parse_options("erasediff", options), forget_classes=(0,),
                                       unconditional=unconditional))
    metrics = []
    for step in range(steps):
        gen = torch.Generator().manual_seed(step)
        x = torch.rand(8, 1, 16, 16, generator=gen) * 2 - 1
        metrics.append(method.step(Batch(x[:4], torch.zeros(4, dtype=torch.long), gen),
                                   Batch(x[4:], torch.tensor([1, 2, 3, 4]), gen)))
    method.finalize()
    return adapter, metrics


def test_inner_steps_report_q_hat_without_touching_the_update(make_tiny_unet):
    plain, _ = _run(make_tiny_unet(), ema_decay=0.0)
    inner, metrics = _run(make_tiny_unet(), ema_decay=0.0, inner_steps=2)
    assert "q_hat" in metrics[-1] and torch.isfinite(metrics[-1]["q_hat"])
    for a, b in zip(plain.unet.parameters(), inner.unet.parameters()):
        assert torch.equal(a, b)


def test_unconditional_model_supports_uniform_only(make_tiny_unet):
    _, metrics = _run(make_tiny_unet(num_class_embeds=None), target="uniform")
    assert float(metrics[-1]["skipped"]) == 0.0
    with pytest.raises(UserInputError, match="needs a class-conditional model"):
        _run(make_tiny_unet(num_class_embeds=None))


def test_unconditional_forgetting_uses_the_null_branch(make_tiny_unet):
    _, metrics = _run(make_tiny_unet(), unconditional=True)
    assert float(metrics[-1]["loss_forget"]) >= 0


def test_ema_is_what_finalize_leaves(make_tiny_unet):
    start = [p.detach().clone() for p in make_tiny_unet().parameters()]
    adapter, _ = _run(make_tiny_unet(), steps=1, ema_decay=0.5)
    live_minus_start = [p.detach() - s for p, s in zip(adapter.unet.parameters(), start)]
    raw, _ = _run(make_tiny_unet(), steps=1, ema_decay=0.0)
    for delta, p, s in zip(live_minus_start, raw.unet.parameters(), start):
        torch.testing.assert_close(delta, 0.5 * (p.detach() - s))


def test_registry_errors():
    with pytest.raises(UserInputError, match="known methods: erasediff"):
        get("esd")
    with pytest.raises(UserInputError, match="its options: target, lambda_rule"):
        parse_options("erasediff", {"lamda_rule": "bome"})
