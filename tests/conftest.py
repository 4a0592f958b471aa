"""Shared fixtures: a tiny class-conditional DDPM (16×16 grey, 10 classes + null) saved to a temp dir.

It has the zoo digits model's interface (so the data selectors and the API accept it) with a few thousand
parameters, so tests exercise the real code paths in seconds.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Triton reads TRITON_INTERPRET when it is first imported (its own library functions are decorated then),
# and any test may import it first (torch.compile does): set it here, in the first conftest pytest loads,
# so the Triton kernels run in the interpreter on machines without a GPU.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a minute on 2 CPU cores")


def tiny_unet(num_class_embeds: int | None = 11, size: int = 16, channels: int = 1, seed: int = 0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size, in_channels=channels, out_channels=channels, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=4, attention_head_dim=8,
        num_class_embeds=num_class_embeds,
    )


@pytest.fixture(scope="session")
def make_tiny_unet():
    """The :func:`tiny_unet` factory, for tests that need a module rather than a directory (session-scoped: a
    plain function, usable from fixtures of any scope; ``from conftest import`` would find whichever
    ``conftest`` module is first on ``sys.path``)."""
    return tiny_unet


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    """A DDPMPipeline directory (unet/, scheduler/, fastunlearn.json with null label 10)."""
    from diffusers import DDPMScheduler

    from fastunlearn.models.ddpm import DDPMAdapter

    path = tmp_path / "tiny-ddpm"
    DDPMAdapter(tiny_unet(), DDPMScheduler(num_train_timesteps=1000), null_label=10).save_pretrained(path)
    return path


def hand_inpaint_completion(adapter, x, noise, steps: int):
    """An inpainter's completion of ``x`` written out here, independent of the library's sampler: DDIM (eta 0) on
    diffusers' ``DDIMScheduler`` from ``noise``, raw UNet calls on ``[x_t, masked image, mask]`` with the 8×8
    centre hole of a 16×16 image by slicing, the known pixels pasted back."""
    import torch
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(adapter.scheduler.config)
    sched.set_timesteps(steps)
    hole = torch.zeros_like(x, dtype=torch.bool)
    hole[:, :, 4:12, 4:12] = True
    cond = torch.cat([torch.where(hole, 0.0, x), hole.float()], 1)
    z = noise.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            z = torch.where(hole, z, x)
            eps = adapter.unet(torch.cat([z, cond], 1), torch.full((x.shape[0],), int(t))).sample
            z = sched.step(eps, t, z, eta=0.0).prev_sample
    return torch.where(hole, z.clamp(-1, 1), x)


@pytest.fixture(scope="session")
def inpaint_by_hand():
    """:func:`hand_inpaint_completion`, the reference the inpainter's completions are checked against (a fixture
    for the reason :func:`make_tiny_unet` is one)."""
    return hand_inpaint_completion
