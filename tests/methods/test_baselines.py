"""The baselines (finetune, gradient_ascent, salun, selective_amnesia): units on a tiny UNet, and short runs
on the shipped digits DDPM in which the forget class's generation accuracy goes down.

The digits runs drive the engine's loop directly and judge only the forget class (24 generations, 8 DDIM
steps, the same seeded noise before and after): 6–40 s each on the shared 2-core machine at load ~5 (Selective
Amnesia, with its replay sampling and Fisher in setup, 33 s; 92 s at load ~10). Fine-tune does not forget at
such budgets (that is its point as a baseline); its test checks that it runs and leaves the forget class drawn.
"""
from __future__ import annotations

import pytest
import torch

from fastunlearn import zoo
from fastunlearn.errors import UserInputError
from fastunlearn.methods import base as methods
from fastunlearn.methods.base import Batch, MethodConfig
from fastunlearn.methods.salun import SalUn, relabel_table
from fastunlearn.methods.selective_amnesia import per_sample_sq_grads
from fastunlearn.models.ddpm import DDPMAdapter

BASELINES = ("finetune", "gradient_ascent", "salun", "selective_amnesia")
HAVE_ZOO = "digits-ddpm" in zoo.available() and "digits-classifier" in zoo.available()
needs_zoo = pytest.mark.skipif(not HAVE_ZOO, reason="the zoo's digits models are not trained in this checkout")


def _batch(n: int, classes, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor(classes)[torch.randint(0, len(classes), (n,), generator=g)]
    return Batch(images=torch.rand(n, 1, 16, 16, generator=g) * 2 - 1, labels=labels, generator=g)


def _setup(name: str, adapter, lr: float = 1e-3, **options):
    method = methods.get(name)()
    method.setup(adapter, MethodConfig(lr=lr, options=methods.parse_options(name, options), forget_classes=(0,),
                                       retain_classes=tuple(range(1, 10))))
    return method


# ---------------------------------------------------------------------- units (tiny UNet)
@pytest.mark.parametrize("name,options", [("finetune", {}), ("gradient_ascent", {"variant": "neggrad"}),
                                          ("gradient_ascent", {}), ("salun", {}),
                                          ("selective_amnesia", {"replay_per_class": 2, "sample_steps": 2}),
                                          ("selective_amnesia", {"replay": "real", "replay_per_class": 1, "sample_steps": 2})])
def test_step_returns_device_scalars_and_moves_weights(make_tiny_unet, name, options):
    adapter = DDPMAdapter(make_tiny_unet(), null_label=10)
    method = _setup(name, adapter, **options)
    before = [p.detach().clone() for p in adapter.unet.parameters()]
    metrics = method.step(_batch(4, [0], 1), _batch(4, list(range(1, 10)), 2))
    assert metrics and all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in metrics.values())
    assert float(metrics["skipped"]) == 0.0
    assert any(not torch.equal(b, p) for b, p in zip(before, adapter.unet.parameters()))
    state = method.state_dict()
    method.load_state_dict(state)
    method.finalize()


def test_salun_mask_keeps_half_on_the_params_device(make_tiny_unet):
    adapter = DDPMAdapter(make_tiny_unet(), null_label=10)
    method = _setup("salun", adapter)
    keep = method.compute_mask([_batch(8, [0], 3)])
    assert keep.dtype == torch.bool and keep.device == method.params[0].device
    assert keep.numel() == method.flat.numel
    assert 0.45 <= keep.float().mean().item() <= 0.55
    # The mask is applied: weights it drops do not move in a step, and it survives a state round trip.
    before = torch.cat([p.detach().reshape(-1) for p in method.params]).clone()
    method.step(_batch(4, [0], 4), _batch(4, [1, 2], 5))
    moved = torch.cat([p.detach().reshape(-1) for p in method.params]) != before
    assert not moved[~keep].any() and moved[keep].any()
    fresh = _setup("salun", DDPMAdapter(make_tiny_unet(), null_label=10))
    fresh.load_state_dict(method.state_dict())
    assert torch.equal(~fresh.drop, keep)


def test_salun_mask_resumes_under_another_memory_layout(make_tiny_unet):
    """A checkpointed mask belongs to parameters, not to buffer positions: saved from a contiguous model and
    loaded into a channels-last one (whose flat buffer orders conv weights differently), every parameter
    keeps the same weights."""
    method = _setup("salun", DDPMAdapter(make_tiny_unet(), null_label=10))
    keep = method.compute_mask([_batch(8, [0], 3)])
    want = [v.contiguous() for v in method.flat.views(keep)]
    unet = make_tiny_unet().to(memory_format=torch.channels_last)
    assert any(p.dim() == 4 and not p.is_contiguous() for p in unet.parameters())
    fresh = _setup("salun", DDPMAdapter(unet, null_label=10))
    fresh.load_state_dict(method.state_dict())
    got = [v.contiguous() for v in fresh.flat.views(~fresh.drop)]
    assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want))


@needs_zoo
def test_salun_mask_on_the_digits_model_keeps_half():
    from fastunlearn.models.ddpm import load_adapter

    adapter = load_adapter("zoo:digits-ddpm")
    method = _setup("salun", adapter)
    keep = method.compute_mask([_batch(16, [0], 6)], draws=2)
    assert keep.device == next(adapter.unet.parameters()).device
    assert abs(keep.float().mean().item() - 0.5) < 0.01


def test_relabel_steps_over_forgotten_classes():
    assert relabel_table(10, [0]).tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 1]
    assert relabel_table(4, [1, 2])[1].item() == 3 and relabel_table(4, [3, 0])[3].item() == 1
    with pytest.raises(UserInputError):
        relabel_table(2, [0, 1])


@pytest.mark.parametrize("scope", ["all", "attention"])
def test_fisher_via_torch_func_equals_a_per_sample_loop(make_tiny_unet, scope):
    unet = make_tiny_unet(num_class_embeds=3, size=8).double()
    adapter = DDPMAdapter(unet)  # per_sample_sq_grads reaches the model only through the adapter
    g = torch.Generator().manual_seed(0)
    n = 5
    x = torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64)
    eps = torch.randn(n, 1, 8, 8, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (n,), generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    named = dict(unet.named_parameters())
    names = [k for k in named if scope == "all" or ".attentions." in k]
    assert 0 < len(names) <= len(named)
    fast = per_sample_sq_grads(adapter, names, x, t, y, eps, chunk=2)
    params = [named[n] for n in names]
    slow = [torch.zeros_like(p) for p in params]
    for i in range(n):
        pred = unet(x[i:i + 1], t[i:i + 1], class_labels=y[i:i + 1]).sample
        grads = torch.autograd.grad(((pred - eps[i:i + 1]) ** 2).mean(), params, allow_unused=True)
        for s, gr in zip(slow, grads):
            if gr is not None:
                s += gr ** 2
    for name, a, b in zip(names, fast, slow):
        torch.testing.assert_close(a.double(), b, rtol=1e-6, atol=1e-12, msg=name)
    assert sum(float(s.sum()) for s in slow) > 0


@pytest.mark.parametrize("name,options,words", [
    ("gradient_ascent", {"variant": "neg"}, "variant"),
    ("gradient_ascent", {"alpha": -1}, "alpha"),
    ("salun", {"sparsity": 1.0}, "sparsity"),
    ("salun", {"mask_draws": 0}, "mask_draws"),
    ("selective_amnesia", {"replay": "cached"}, "replay"),
    ("selective_amnesia", {"lam": -1}, "lam"),
    ("selective_amnesia", {"fisher_chunk": 0}, "fisher_chunk"),
    ("finetune", {"ema_decay": 1.0}, "ema_decay"),
    ("finetune", {"alpha": 1.0}, "unknown option"),
])
def test_options_validation(name, options, words):
    with pytest.raises(UserInputError, match=words):
        methods.parse_options(name, options)


@pytest.mark.parametrize("name", ["salun", "selective_amnesia"])
def test_label_methods_refuse_unconditional(make_tiny_unet, name):
    adapter = DDPMAdapter(make_tiny_unet(), null_label=10)
    with pytest.raises(UserInputError, match="unconditional"):
        methods.get(name)().setup(adapter, MethodConfig(lr=1e-4, options=methods.parse_options(name, {}),
                                                        forget_classes=(0,), unconditional=True))


def test_defaults_and_registry():
    for name in BASELINES:
        d = methods.get(name).defaults(False, {})
        assert set(d) == {"steps", "batch_size", "lr"} and d["lr"] > 0


# ---------------------------------------------------------------------- the digits model
@pytest.fixture(scope="module")
def digits():
    from fastunlearn.data.selection import select_forget_retain
    from fastunlearn.engine import SampleSet
    from fastunlearn.models.ddpm import load_adapter

    judge = zoo.load_classifier()
    sets = select_forget_retain("class:0")

    def forget_accuracy(adapter) -> float:
        adapter.unet.eval()
        images = adapter.generate(24, torch.zeros(24, dtype=torch.long), steps=8,
                                  generator=torch.Generator().manual_seed(11))
        with torch.no_grad():
            return (judge(images).argmax(1) == 0).float().mean().item()

    base = forget_accuracy(load_adapter("zoo:digits-ddpm"))
    return {"sets": sets, "acc": forget_accuracy, "base": base,
            "forget": SampleSet(sets.forget_images, sets.forget_labels),
            "retain": SampleSet(sets.retain_images, sets.retain_labels)}


def _short_run(digits, tmp_path, name: str, steps: int, lr: float | None = None, **options) -> float:
    from fastunlearn.engine import LoopSettings, prepare_model, train
    from fastunlearn.models.ddpm import load_adapter

    adapter = load_adapter("zoo:digits-ddpm")
    prepare_model(adapter, torch.device("cpu"))
    d = methods.get(name).defaults(False, options)
    method = _setup(name, adapter, lr=lr or d["lr"], **options)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the engine's choice for this model on the CPU
    try:
        train(adapter, method, digits["forget"], digits["retain"],
              LoopSettings(steps=steps, batch_size=d["batch_size"], progress=False), tmp_path)
        method.finalize()
        return digits["acc"](adapter)
    finally:
        torch.set_num_threads(threads)


#: Steps per short run: where the benchmark's evaluation saw the forget accuracy ≤ 30% (bench_methods.py).
STEPS = {"neggrad": 20, "neggrad_plus": 50, "salun": 60, "selective_amnesia": 30}


@needs_zoo
@pytest.mark.parametrize("label,name,options", [
    ("neggrad", "gradient_ascent", {"variant": "neggrad"}),
    ("neggrad_plus", "gradient_ascent", {}),
    ("salun", "salun", {}),
    # A smaller replay/Fisher draw than the default (its setup is the method's cost; the forgetting comes
    # from the surrogate term and does not need the full pool).
    ("selective_amnesia", "selective_amnesia", {"replay_per_class": 6, "sample_steps": 10}),
])
def test_forget_accuracy_goes_down_on_digits(digits, tmp_path, label, name, options):
    assert digits["base"] >= 0.8
    after = _short_run(digits, tmp_path, name, STEPS[label], **options)
    assert after <= digits["base"] - 0.5, (label, digits["base"], after)


@needs_zoo
def test_finetune_runs_and_keeps_drawing_the_class(digits, tmp_path):
    after = _short_run(digits, tmp_path, "finetune", 10)
    assert after >= digits["base"] - 0.2, (digits["base"], after)
