"""Shared fixtures of the attack tests: a saved tiny Stable Diffusion pipeline (CLIP encoder, random weights) and
two saved tiny pipelines that differ (an "unlearned" model and its "base")."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sd_dir(tmp_path_factory) -> Path:
    from fastunlearn.models.tiny_sd import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("attack_sd") / "sd", seed=0)


@pytest.fixture(scope="session")
def other_sd_dir(tmp_path_factory) -> Path:
    from fastunlearn.models.tiny_sd import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("attack_sd_other") / "sd", seed=1)


@pytest.fixture
def sd(sd_dir):
    """A fresh adapter over the tiny pipeline (tests may register prompts or move it)."""
    from fastunlearn.models import load_model

    return load_model(sd_dir)
