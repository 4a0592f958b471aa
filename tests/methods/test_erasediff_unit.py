"""EraseDiff on tiny models: targets, unconditional models, inner steps on a scratch copy, EMA, registry."""
from __future__ import annotations

import pytest
import torch

from fastunlearn.errors import UserInputError
from fastunlearn.methods import Batch, get
from fastunlearn.methods.base import MethodConfig, parse_options
from fastunlearn.models.ddpm import DDPMAdapter

from _erasediff_oracle import PlainEraseDiff, record_erasediff_step


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
        _run(make_tiny_unet(num_class_embeds=None), target="pseudo_label")


def test_unconditional_forgetting_uses_the_null_branch(make_tiny_unet, monkeypatch):
    """With ``unconditional=True`` the forget rows are seen under the null label: ∇L_f equals plain autograd of
    the MSE of ε_θ(x_t, t, ∅) against the pseudo-label target, on an independent copy of the model."""
    unet = make_tiny_unet()
    adapter = DDPMAdapter(unet, null_label=10)
    plain = PlainEraseDiff(unet, adapter.scheduler.alphas_cumprod, lr=1e-3, rule="bome", eta=0.5, grad_clip=0.0,
                           target="pseudo_label", pseudo_classes=list(range(1, 10)))
    method = get("erasediff")()
    options = parse_options("erasediff", {"target": "pseudo_label", "eta": 0.5, "ema_decay": 0.0,
                                          "retain_null_prob": 0.0})
    method.setup(adapter, MethodConfig(lr=1e-3, options=options, forget_classes=(0,), unconditional=True))
    x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(7)) * 2 - 1
    with record_erasediff_step(method, monkeypatch) as rec:
        gen = torch.Generator().manual_seed(3)
        method.step(Batch(x[:4], torch.zeros(4, dtype=torch.long), gen), Batch(x[4:], torch.tensor([1, 2, 3, 4]), gen))
    want = plain.step(x[:4], torch.full((4,), 10), x[4:], torch.tensor([1, 2, 3, 4]), torch.Generator().manual_seed(3))
    assert_flat_close(method.flat.views(rec.g_inner[0]), want.g_f, "∇L_f under the null label")


def assert_flat_close(actual: list[torch.Tensor], want: list[torch.Tensor], what: str, rtol: float = 1e-4,
                      atol_rel: float = 1e-6) -> None:
    """Per-parameter tensors equal within ``rtol`` and an atol of ``atol_rel``·max|want| (never all zero)."""
    a = torch.cat([x.detach().reshape(-1).double() for x in actual])
    w = torch.cat([x.detach().reshape(-1).double() for x in want])
    scale = float(w.abs().max())
    assert scale > 0, f"{what}: the expected tensor is all zero, the comparison would have no power"
    torch.testing.assert_close(a, w, rtol=rtol, atol=atol_rel * scale, msg=lambda m: f"{what}: {m}")


# (λ rule, η, forget target, single_forward); every case clips (grad_clip below the combined gradient's norm)
# and has λ > 0 (on this tiny model ⟨∇L_r,∇L_f⟩/‖∇L_f‖² ≈ 2 under pseudo_label: η = 3 keeps BOME's λ > 0).
STEP_CASES = [
    ("bome", 3.0, "pseudo_label", False),
    ("cosine", 0.5, "pseudo_label", False),
    ("fixed", 0.1, "pseudo_label", False),
    ("bome", 0.5, "uniform", False),
    ("fixed", 0.1, "pseudo_label", True),
]


@pytest.mark.parametrize("rule,eta,target,single_forward", STEP_CASES, ids=lambda v: str(v))
def test_steps_match_plain_pytorch_on_an_independent_copy(make_tiny_unet, monkeypatch, rule, eta, target,
                                                          single_forward):
    """Two EraseDiff steps against :class:`PlainEraseDiff` (autograd, λ formula, clip_grad_norm_, torch Adam on
    a deep copy of the model): the two gradient buffers before the combine, λ, the gradient Adam reads, and
    the weights after each step. Adam divides by √v + 1e-8, so an element whose gradient is ~1e-8 (the two
    gradients cancelling) moves by an amount sensitive to float rounding: the weights are compared to 5e-4 of
    the update's size, far below the lr-sized change any wrong gradient, λ, clip or Adam state makes."""
    lr, clip = 1e-3, 0.05
    unet = make_tiny_unet()
    adapter = DDPMAdapter(unet, null_label=10)
    plain = PlainEraseDiff(unet, adapter.scheduler.alphas_cumprod, lr=lr, rule=rule, eta=eta, grad_clip=clip,
                           target=target, pseudo_classes=list(range(1, 10)))
    method = get("erasediff")()
    options = parse_options("erasediff", {"target": target, "lambda_rule": rule, "eta": eta, "grad_clip": clip,
                                          "ema_decay": 0.0, "single_forward": single_forward})
    method.setup(adapter, MethodConfig(lr=lr, options=options, forget_classes=(0,)))
    start = [p.detach().clone() for p in method.params]
    y_f, y_r = torch.zeros(4, dtype=torch.long), torch.tensor([1, 2, 3, 4])
    with record_erasediff_step(method, monkeypatch) as rec:
        for step in range(2):
            x = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(50 + step)) * 2 - 1
            gen = torch.Generator().manual_seed(step)
            metrics = method.step(Batch(x[:4], y_f, gen), Batch(x[4:], y_r, gen))
            want = plain.step(x[:4], y_f, x[4:], y_r, torch.Generator().manual_seed(step))
            assert want.norm > 2 * clip, "the clip must be active for the test to check it"
            assert_flat_close(method.flat.views(rec.g_inner[step]), want.g_f, f"step {step}: ∇L_f (g_forget)")
            assert_flat_close(method.flat.views(rec.g_outer[step]), want.g_r, f"step {step}: ∇L_r (optimizer buffer)")
            assert rec.lam[step] == pytest.approx(want.lam, rel=1e-4, abs=1e-6)
            assert float(metrics["lambda"]) == pytest.approx(want.lam, rel=1e-4, abs=1e-6)
            if rule != "fixed":
                assert want.lam > 0, "λ clamped to 0 would not test the combine"
            assert_flat_close(rec.adam_grads[step], want.g, f"step {step}: clipped ∇L_r + λ∇L_f read by Adam")
            assert_flat_close([p - s for p, s in zip(method.params, start)], [p - s for p, s in zip(plain.params, start)],
                              f"step {step}: weight update", rtol=1e-3, atol_rel=5e-4)
            assert float(metrics["loss_forget"]) == pytest.approx(want.loss_f, rel=1e-5)
            assert float(metrics["loss_retain"]) == pytest.approx(want.loss_r, rel=1e-5)


def test_ema_is_what_finalize_leaves(make_tiny_unet):
    start = [p.detach().clone() for p in make_tiny_unet().parameters()]
    adapter, _ = _run(make_tiny_unet(), steps=1, ema_decay=0.5)
    live_minus_start = [p.detach() - s for p, s in zip(adapter.unet.parameters(), start)]
    raw, _ = _run(make_tiny_unet(), steps=1, ema_decay=0.0)
    for delta, p, s in zip(live_minus_start, raw.unet.parameters(), start):
        torch.testing.assert_close(delta, 0.5 * (p.detach() - s))


def test_registry_errors():
    with pytest.raises(UserInputError, match="known methods: advunlearn, erasediff"):
        get("no-such-method")
    with pytest.raises(UserInputError, match="its options: target, lambda_rule"):
        parse_options("erasediff", {"lamda_rule": "bome"})


@pytest.mark.parametrize("source", ["live", "frozen"])
def test_pseudo_label_target_comes_from_the_chosen_model(make_tiny_unet, source):
    """After a step has moved θ, the pseudo-label target is ε under c′ of θ (live) or of θ₀ (frozen), computed here
    by plain UNet calls on copies taken before and after the step."""
    import copy

    unet = make_tiny_unet()
    original = copy.deepcopy(unet).eval()
    adapter, _ = _run(unet, steps=2, ema_decay=0.0, pseudo_label_from=source)  # θ has moved from θ₀
    m = get("erasediff")()  # a method over the moved model, to read the target its next step would use
    m.setup(adapter, MethodConfig(lr=1e-3, options=parse_options("erasediff", {"pseudo_label_from": source}),
                                  forget_classes=(0,)))
    if source == "frozen":  # setup copies the model it is given: θ₀ of this method is the trained θ
        m._target_model = DDPMAdapter(original, null_label=10)
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(4, 1, 16, 16, generator=gen) * 2 - 1
    batch = Batch(x, torch.zeros(4, dtype=torch.long), torch.Generator().manual_seed(9))
    nb, target = m._forget_inputs(batch)
    replay = torch.Generator().manual_seed(9)
    torch.randint(0, 1000, (4,), generator=replay)
    torch.randn(x.shape, generator=replay)
    c_prime = m._pseudo_classes[torch.randint(0, len(m._pseudo_classes), (4,), generator=replay)]
    live = copy.deepcopy(adapter.unet).eval()
    with torch.no_grad():
        want = (original if source == "frozen" else live)(nb.x_t, nb.t, class_labels=c_prime).sample
        other = (live if source == "frozen" else original)(nb.x_t, nb.t, class_labels=c_prime).sample
    torch.testing.assert_close(target, want)
    assert not torch.allclose(target, other)  # θ moved: the two sources differ


def test_frozen_source_is_copied_at_setup(make_tiny_unet):
    adapter = DDPMAdapter(make_tiny_unet(), null_label=10)
    m = get("erasediff")()
    m.setup(adapter, MethodConfig(lr=1e-3, options=parse_options("erasediff", {"pseudo_label_from": "frozen"}),
                                  forget_classes=(0,)))
    assert m._target_model is not adapter and m._target_model.unet is not adapter.unet
    assert all(not p.requires_grad for p in m._target_model.parameters("all"))
    with pytest.raises(UserInputError, match="live or frozen"):
        parse_options("erasediff", {"pseudo_label_from": "both"})
