"""EraseDiff's two ways of getting ∇L_f and ∇L_r (two passes, or one forward of [forget; retain]) agree."""
import copy

import torch

from fastunlearn.methods import base as methods
from fastunlearn.models.ddpm import DDPMAdapter


def _step(adapter, single_forward: bool):
    a = copy.copy(adapter)
    a.unet = copy.deepcopy(adapter.unet)
    m = methods.get("erasediff")()
    opts = methods.parse_options("erasediff", {"single_forward": single_forward})
    m.setup(a, methods.MethodConfig(lr=1e-3, options=opts, forget_classes=(0,), retain_classes=(1, 2, 3)))
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(12, 1, 16, 16, generator=gen) * 2 - 1
    labels = torch.tensor([0] * 6 + [1, 2, 3, 1, 2, 3])
    metrics = m.step(methods.Batch(images[:6], labels[:6], torch.Generator().manual_seed(1)),
                     methods.Batch(images[6:], labels[6:], torch.Generator().manual_seed(2)))
    return metrics, m.flat.buffer.clone(), m.g_forget.clone()


def test_two_pass_and_single_forward_give_the_same_update(make_tiny_unet):
    from diffusers import DDPMScheduler

    adapter = DDPMAdapter(make_tiny_unet(), DDPMScheduler(num_train_timesteps=1000), null_label=10)
    m2, combined2, g_f2 = _step(adapter, single_forward=False)
    m1, combined1, g_f1 = _step(adapter, single_forward=True)
    for key in ("loss_forget", "loss_retain", "lambda"):
        assert torch.allclose(m1[key], m2[key], rtol=1e-5, atol=1e-7), key
    assert torch.allclose(g_f1, g_f2, rtol=1e-4, atol=1e-7)
    assert torch.allclose(combined1, combined2, rtol=1e-4, atol=1e-7)
    assert g_f2.abs().sum() > 0
