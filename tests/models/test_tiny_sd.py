"""The tiny offline Stable Diffusion builder: a real SD layout the stock classes load, deterministic per seed."""
from __future__ import annotations

import json
import warnings

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from fastunlearn.models.tiny_sd import build_tiny_sd, save_tiny_sd


def test_saved_tiny_pipeline_is_a_stock_sd_directory(tmp_path):
    out = save_tiny_sd(tmp_path / "sd", prediction_type="v_prediction", max_length=24)
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    assert not list(out.rglob("*.bin")) and list(out.rglob("*.safetensors"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.tokenizer.model_max_length == 24 and pipe.unet.config.cross_attention_dim == 32
    # the tokenizer is character level: one token per character, plus the start and end tokens
    assert len(pipe.tokenizer("a photo").input_ids) == len("aphoto") + 2
    assert pipe.tokenizer("a photo").input_ids != pipe.tokenizer("a phobo").input_ids
    pipe.set_progress_bar_config(disable=True)
    images = pipe("a photo", num_inference_steps=2, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 3, 16, 16) and torch.isfinite(images).all()


def test_build_is_deterministic_per_seed():
    a, b, c = build_tiny_sd(seed=3), build_tiny_sd(seed=3), build_tiny_sd(seed=4)
    for part in ("unet", "vae", "text_encoder"):
        sa, sb, sc = (getattr(p, part).state_dict() for p in (a, b, c))
        assert all(torch.equal(sa[k], sb[k]) for k in sa), part
        assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point() and sa[k].numel() > 1), part
