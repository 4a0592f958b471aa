"""The fast path: per-device defaults, each switch changes speed and never results (beyond its stated
tolerance), the non-finite guard skips steps on the device and aborts a run that keeps failing, and an
out-of-memory step is re-raised with what to change."""
from __future__ import annotations

import copy

import pytest
import torch

from fastunlearn.api import run_config
from fastunlearn.config import UnlearnConfig
from fastunlearn.engine import FastPath, LoopSettings, SampleSet, prepare_model, resolve_fast_path, train
from fastunlearn.engine.fastpath import attention_layers, auto_precision, cpu_has_native_bf16, set_attention, xformers_status
from fastunlearn.errors import NumericalError, OutOfMemoryError, UserInputError
from fastunlearn.methods import Batch, get
from fastunlearn.methods.base import MethodConfig, parse_options
from fastunlearn.models.ddpm import DDPMAdapter

CPU = torch.device("cpu")


def _cfg(**kw) -> UnlearnConfig:
    return UnlearnConfig.from_dict(kw)


def test_cpu_auto_defaults():
    fast = resolve_fast_path(_cfg(), CPU)
    assert fast == FastPath(precision=auto_precision(CPU), compile=False, attention="sdpa", channels_last=False,
                            fused_optimizer=True, cuda_graphs=False, grad_checkpointing=False)
    forced = resolve_fast_path(_cfg(precision="bf16", compile=True, channels_last=True, fused_optimizer=False,
                                    attention="eager", grad_checkpointing=True), CPU)
    assert (forced.precision, forced.compile, forced.channels_last, forced.fused_optimizer, forced.attention,
            forced.grad_checkpointing) == ("bf16", True, True, False, "eager", True)


def test_auto_precision_follows_native_bf16(monkeypatch):
    from fastunlearn.engine import fastpath

    assert auto_precision(CPU) == ("bf16" if cpu_has_native_bf16() else "fp32")
    monkeypatch.setattr(fastpath, "cpu_has_native_bf16", lambda: False)
    assert auto_precision(CPU) == "fp32"
    monkeypatch.setattr(fastpath, "cpu_has_native_bf16", lambda: True)
    assert auto_precision(CPU) == "bf16"


@pytest.mark.parametrize("kw, match", [
    ({"cuda_graphs": True}, "cuda_graphs needs a CUDA device"),
    ({"attention": "flash"}, "unknown attention backend 'flash'"),
    ({"compile": "sometimes"}, "compile must be auto, true or false"),
    ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ({"max_skipped_steps": 0}, "max_skipped_steps must be a positive integer"),
])
def test_bad_switches_are_user_errors(kw, match):
    with pytest.raises(UserInputError, match=match):
        resolve_fast_path(_cfg(**kw).resolved(), CPU)


@pytest.mark.skipif(xformers_status()[0], reason="xformers is usable here")
def test_xformers_asked_for_but_unusable_says_why():
    with pytest.raises(UserInputError, match="attention 'xformers' is not available: xformers"):
        resolve_fast_path(_cfg(attention="xformers"), CPU)


def _inputs(seed=0, n=4):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 1000, (n,), generator=g),
            torch.randint(0, 10, (n,), generator=g))


@pytest.mark.parametrize("fast", [FastPath(attention="eager"), FastPath(channels_last=True),
                                  FastPath(grad_checkpointing=True)], ids=["eager-attention", "channels-last",
                                                                          "grad-checkpointing"])
def test_switch_keeps_outputs_and_gradients(make_tiny_unet, fast):
    """Against the CPU default (SDPA, contiguous, no checkpointing): same prediction and weight gradients."""
    x, t, y = _inputs()
    results = []
    for f in (FastPath(), fast):
        adapter = prepare_model(DDPMAdapter(make_tiny_unet(), null_label=10), CPU, f)
        pred = adapter.predict(x, t, y)
        pred.square().mean().backward()
        results.append((pred.detach(), [p.grad.clone() for p in adapter.unet.parameters()]))
    (p0, g0), (p1, g1) = results
    torch.testing.assert_close(p1, p0, rtol=1e-5, atol=1e-5)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_set_attention_routes_every_layer(make_tiny_unet):
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    unet = make_tiny_unet()
    layers = attention_layers(unet)
    assert len(layers) == 4  # AttnDownBlock2D 1, mid block 1, AttnUpBlock2D 2
    set_attention(unet, "eager")
    assert all(type(layer.processor) is AttnProcessor for layer in layers)
    set_attention(unet, "sdpa")
    assert all(type(layer.processor) is AttnProcessor2_0 for layer in layers)


def _erasediff(unet, fused: bool, **options):
    adapter = DDPMAdapter(unet, null_label=10)
    method = get("erasediff")()
    method.setup(adapter, MethodConfig(lr=1e-3, options=parse_options("erasediff", {"ema_decay": 0.0, **options}),
                                       forget_classes=(0,), fused_optimizer=fused))
    return adapter, method


def _batches(step: int):
    gen = torch.Generator().manual_seed(step)
    x = torch.rand(8, 1, 16, 16, generator=gen) * 2 - 1
    return Batch(x[:4], torch.zeros(4, dtype=torch.long), gen), Batch(x[4:], torch.tensor([1, 2, 3, 4]), gen)


def test_fused_and_unfused_adam_agree(make_tiny_unet):
    unet = make_tiny_unet()
    (a0, m0), (a1, m1) = _erasediff(copy.deepcopy(unet), False), _erasediff(copy.deepcopy(unet), True)
    for step in range(3):
        m0.step(*_batches(step))
        m1.step(*_batches(step))
    # Adam divides by √v̂: last-bit differences of the two kernels show up as ≤ 1% of one step (lr 1e-3).
    for p, q in zip(a0.unet.parameters(), a1.unet.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)


def test_non_finite_step_is_skipped_on_the_device(make_tiny_unet, monkeypatch):
    """A NaN gradient: the fused optimizer leaves weights, moments and its step count exactly as they were."""
    adapter, method = _erasediff(make_tiny_unet(), True)
    method.step(*_batches(0))
    weights = [p.detach().clone() for p in method.params]
    state = copy.deepcopy(method.optimizer.state_dict())
    real = adapter.predict
    monkeypatch.setattr(adapter, "predict", lambda *a, **k: real(*a, **k) * float("nan"))
    metrics = method.step(*_batches(1))
    assert float(metrics["skipped"]) == 1.0
    for p, w in zip(method.params, weights):
        assert torch.equal(p.detach(), w)
    after = method.optimizer.state_dict()["state"]
    for k, s in state["state"].items():
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(after[k][name], s[name]), name
    monkeypatch.setattr(adapter, "predict", real)
    assert float(method.step(*_batches(2))["skipped"]) == 0.0


def test_run_aborts_after_consecutive_skips_and_writes_nothing(tiny_model_dir, tmp_path, monkeypatch):
    real = DDPMAdapter.predict
    monkeypatch.setattr(DDPMAdapter, "predict", lambda self, *a, **k: real(self, *a, **k) * float("nan"))
    out = tmp_path / "out"
    cfg = UnlearnConfig.from_dict(dict(model=str(tiny_model_dir), steps=20, batch_size=2, lr=1e-3, out_dir=str(out),
                                       evaluate=False, progress=False, device="cpu", log_every=4,
                                       max_skipped_steps=3))
    with pytest.raises(NumericalError, match=r"4 consecutive steps \(up to step 4\) had a non-finite gradient"):
        run_config(cfg)
    assert not out.exists()


def test_out_of_memory_is_reraised_with_what_to_change(make_tiny_unet, tmp_path):
    class Exhausted:
        def step(self, forget, retain):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

        def state_dict(self):
            return {}

    adapter = prepare_model(DDPMAdapter(make_tiny_unet(), null_label=10), CPU)
    data = SampleSet(torch.zeros(4, 1, 16, 16), torch.zeros(4, dtype=torch.long))
    with pytest.raises(OutOfMemoryError, match=r"batch size 16 per side .* Try a smaller --batch-size, --grad-checkpointing"):
        train(adapter, Exhausted(), data, data, LoopSettings(steps=2, batch_size=16, progress=False), tmp_path)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_default_fast_path_step_matches_fp32(make_tiny_unet):
    """bf16 autocast + compile + SDPA + channels-last + fused Adam: one EraseDiff step, loss close to fp32's."""
    cuda = torch.device("cuda")
    fast = resolve_fast_path(_cfg(), cuda)
    assert fast.compile and fast.channels_last and fast.fused_optimizer
    losses = []
    for f in (FastPath(), fast):
        adapter = prepare_model(DDPMAdapter(make_tiny_unet(), null_label=10), cuda, f)
        method = get("erasediff")()
        method.setup(adapter, MethodConfig(lr=1e-3, options=parse_options("erasediff", {}), forget_classes=(0,),
                                           fused_optimizer=f.fused_optimizer))
        fb, rb = _batches(0)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=f.precision == "bf16"):
            metrics = method.step(fb, rb)
        losses.append(float(metrics["loss_retain"]))
    assert losses[1] == pytest.approx(losses[0], rel=5e-2)


def test_non_finite_weights_are_never_saved(make_tiny_unet):
    from fastunlearn.engine.loop import check_finite_weights

    adapter = DDPMAdapter(make_tiny_unet(), null_label=10)
    check_finite_weights(adapter)  # finite: no error
    with torch.no_grad():
        adapter.unet.conv_out.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(NumericalError, match=r"conv_out\.weight holds NaN/Inf\); nothing was saved"):
        check_finite_weights(adapter)
