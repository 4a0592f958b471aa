"""Tests of fastunlearn.models.sampling (kept here with the eval fixtures it shares)."""
import pytest
import torch

from fastunlearn.models.sampling import ddim_sample


def test_deterministic_shape_range(tiny_unet, tiny_scheduler):
    labels = torch.tensor([0, 1, 2, 0, 1])
    a = ddim_sample(tiny_unet, tiny_scheduler, 5, labels, steps=4, generator=torch.Generator().manual_seed(3))
    b = ddim_sample(tiny_unet, tiny_scheduler.config, 5, labels, steps=4, batch_size=2,
                    generator=torch.Generator().manual_seed(3))
    assert a.shape == (5, 1, 8, 8) and a.dtype == torch.float32
    assert a.min() >= -1 and a.max() <= 1
    assert torch.allclose(a, b, atol=1e-5)  # independent of batch_size
    c = ddim_sample(tiny_unet, tiny_scheduler, 5, labels, steps=4, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(a, c)


def test_guidance_and_unconditional(tiny_unet, tiny_scheduler):
    g = torch.Generator().manual_seed(0)
    plain = ddim_sample(tiny_unet, tiny_scheduler, 3, 1, steps=3, null_label=3, generator=g)
    guided = ddim_sample(tiny_unet, tiny_scheduler, 3, 1, steps=3, guidance_scale=3.0, null_label=3,
                         generator=torch.Generator().manual_seed(0))
    assert guided.shape == plain.shape and not torch.allclose(plain, guided)
    uncond = ddim_sample(tiny_unet, tiny_scheduler, 2, None, steps=3, null_label=3,
                         generator=torch.Generator().manual_seed(0))
    same = ddim_sample(tiny_unet, tiny_scheduler, 2, [3, 3], steps=3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(uncond, same)
    assert ddim_sample(tiny_unet, tiny_scheduler, 0, None, steps=2, null_label=3).shape == (0, 1, 8, 8)


def test_errors(tiny_unet, tiny_scheduler):
    with pytest.raises(ValueError, match="need null_label"):
        ddim_sample(tiny_unet, tiny_scheduler, 2, None, steps=2)
    with pytest.raises(ValueError, match="classifier-free guidance"):
        ddim_sample(tiny_unet, tiny_scheduler, 2, 0, steps=2, guidance_scale=2.0)
    with pytest.raises(ValueError, match="class_labels has 3 entries but n = 2"):
        ddim_sample(tiny_unet, tiny_scheduler, 2, [0, 1, 2], steps=2)
    with pytest.raises(TypeError, match="scheduler_config_or_scheduler"):
        ddim_sample(tiny_unet, 5, 2, 0, steps=2)
