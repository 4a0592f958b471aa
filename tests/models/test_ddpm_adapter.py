"""DDPMAdapter: loading from every kind of reference, saving in diffusers layout, batches, clear errors."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from fastunlearn.errors import UserInputError
from fastunlearn.models.ddpm import DDPMAdapter, load_adapter


def test_local_pipeline_dir_round_trip(tiny_model_dir, tmp_path):
    adapter = load_adapter(str(tiny_model_dir))
    assert adapter.conditional and adapter.null_label == 10 and adapter.num_classes == 10
    assert adapter.image_shape == (1, 16, 16)
    out = adapter.save_pretrained(tmp_path / "saved")
    unet = UNet2DModel.from_pretrained(out, subfolder="unet")
    for (name, a), b in zip(adapter.unet.state_dict().items(), unet.state_dict().values()):
        assert torch.equal(a, b), name
    assert DDPMPipeline.from_pretrained(out).scheduler.config.num_train_timesteps == 1000
    assert load_adapter(out).null_label == 10


def test_bare_unet_dir_module_and_pipeline(tiny_model_dir, make_tiny_unet):
    bare = load_adapter(tiny_model_dir / "unet")  # no sidecar, no scheduler: defaults, no null class
    assert bare.conditional and bare.null_label is None and bare.num_classes == 11
    assert load_adapter(make_tiny_unet(), null_label=10).num_classes == 10
    pipe = DDPMPipeline(unet=make_tiny_unet(None), scheduler=DDPMScheduler())
    uncond = load_adapter(pipe)
    assert not uncond.conditional and uncond.num_classes is None


def test_noised_batch_is_seeded_and_matches_the_schedule(make_tiny_unet):
    adapter = DDPMAdapter(make_tiny_unet(), DDPMScheduler(), null_label=10)
    x0 = torch.rand(6, 1, 16, 16) * 2 - 1
    a = adapter.noised_batch(x0, torch.arange(6), torch.Generator().manual_seed(3))
    b = adapter.noised_batch(x0, torch.arange(6), torch.Generator().manual_seed(3))
    assert torch.equal(a.x_t, b.x_t) and torch.equal(a.t, b.t)
    torch.testing.assert_close(a.x_t, DDPMScheduler().add_noise(x0, a.noise, a.t))
    assert adapter.predict(a.x_t, a.t, a.labels).shape == x0.shape


def test_generate_conditional_and_unconditional(make_tiny_unet):
    adapter = DDPMAdapter(make_tiny_unet(), DDPMScheduler(), null_label=10)
    imgs = adapter.generate(3, [0, 1, 2], steps=2, generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (3, 1, 16, 16) and imgs.abs().max() <= 1
    assert adapter.generate(2, None, steps=2).shape == (2, 1, 16, 16)
    with pytest.raises(UserInputError, match="null class"):
        DDPMAdapter(make_tiny_unet(), DDPMScheduler()).generate(2, None, steps=2)


def test_scopes(make_tiny_unet):
    adapter = DDPMAdapter(make_tiny_unet())
    assert 0 < len(adapter.parameters("attention")) < len(adapter.parameters("all"))
    with pytest.raises(UserInputError, match="unknown parameter scope"):
        adapter.parameters("decoder")


def test_directory_without_weights(tiny_model_dir):
    for f in (tiny_model_dir / "unet").glob("diffusion_pytorch_model.*"):
        f.unlink()
    with pytest.raises(UserInputError, match="has no weights"):
        load_adapter(tiny_model_dir)


def test_non_diffusers_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserInputError, match="not a diffusers model directory"):
        load_adapter(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(UserInputError, match="needs a UNet2DModel"):
        load_adapter(tmp_path)


def test_image_size_and_channel_mismatch(make_tiny_unet):
    adapter = DDPMAdapter(make_tiny_unet(size=32, channels=3))
    with pytest.raises(UserInputError, match=r"expected 3×32×32 .* got 1×16×16"):
        adapter.check_images(torch.zeros(2, 1, 16, 16), "forget images")


def test_hub_id_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    # The hub reads HF_HUB_OFFLINE at import; patch the constant too, or the lookup waits on the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserInputError, match="cannot load model 'nobody-here/no-such-ddpm'"):
        load_adapter("nobody-here/no-such-ddpm")
    with pytest.raises(UserInputError, match="neither a zoo name"):
        load_adapter("no/such/path")


def test_hub_id_resolves_through_from_pretrained(tiny_model_dir, monkeypatch):
    """A hub id goes to diffusers' from_pretrained with subfolders (served here from a local copy)."""
    calls = []
    real_unet, real_sched = UNet2DModel.from_pretrained, DDPMScheduler.from_pretrained

    def fake(real):
        def load(repo_id, subfolder=None, **kw):
            calls.append((repo_id, subfolder))
            return real(tiny_model_dir, subfolder=subfolder)
        return load

    monkeypatch.setattr(UNet2DModel, "from_pretrained", fake(real_unet))
    monkeypatch.setattr(DDPMScheduler, "from_pretrained", fake(real_sched))
    adapter = load_adapter("google/ddpm-cifar10-32")
    assert calls == [("google/ddpm-cifar10-32", "unet"), ("google/ddpm-cifar10-32", "scheduler")]
    assert adapter.image_shape == (1, 16, 16)


def test_hub_load_of_an_unconditional_ddpm_prints_no_accelerate_warning(tmp_path, make_tiny_unet):
    """A real hub lookup (from an offline cache holding a tiny unconditional DDPM, in a fresh process so the
    hub reads HF_HOME): it loads, and diffusers' "`accelerate` was not found" warning is not printed."""
    import os
    import subprocess
    import sys

    rev = "0" * 40
    repo = tmp_path / "hf" / "hub" / "models--org--uncond-ddpm"
    DDPMPipeline(unet=make_tiny_unet(num_class_embeds=None), scheduler=DDPMScheduler()) \
        .save_pretrained(repo / "snapshots" / rev, safe_serialization=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    code = ("from fastunlearn.models.ddpm import load_adapter\n"
            "a = load_adapter('org/uncond-ddpm')\n"
            "print('conditional', a.conditional, a.image_shape)\n")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "conditional False (1, 16, 16)" in out.stdout
    assert "accelerate" not in out.stderr + out.stdout
    assert "local_dir_use_symlinks" not in out.stderr
