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
