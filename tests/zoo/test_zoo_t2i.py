"""zoo:digits-t2i: assembled from the package and the installed MiniLM encoder, loadable by the stock
StableDiffusionPipeline, recorded quality at the bar, and prompts followed when re-measured here."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastunlearn import zoo
from fastunlearn.zoo import t2i as zt
from fastunlearn.zoo.train import CONFIGS, config_to_json


@pytest.fixture
def cache(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("FASTUNLEARN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_assembled_in_the_cache_once(cache: Path):
    path = zoo.resolve("zoo:digits-t2i")
    assert path.parent == cache / "zoo"
    assert zoo.resolve("digits-t2i") == path  # built once, reused
    enc = path / "text_encoder"
    assert json.loads((enc / "config.json").read_text())["use_attention_mask"] is True
    assert zt.sha256(enc / "model.safetensors") == zt.sha256(zt.encoder_dir() / "model.safetensors")
    shipped = zoo.MODELS_DIR / "digits-t2i"
    assert not (shipped / "text_encoder").exists(), "the encoder's weights must not be in the package"
    for name in ("unet", "vae", "tokenizer", "scheduler"):
        assert (path / name).is_dir()


def test_other_encoder_weights_are_refused(cache: Path, tmp_path: Path, monkeypatch):
    fake = tmp_path / "minilm"
    fake.mkdir()
    (fake / "config.json").write_text((zt.encoder_dir() / "config.json").read_text())
    (fake / "model.safetensors").write_bytes(b"not the trained-with weights")
    monkeypatch.setattr(zt, "encoder_dir", lambda: fake)
    with pytest.raises(zoo.ZooError, match="SHA-256"):
        zoo.resolve("zoo:digits-t2i")


def test_recorded_config_and_quality():
    record = json.loads((zoo.MODELS_DIR / "digits-t2i" / "training.json").read_text())
    assert record["config"] == config_to_json(CONFIGS["digits-t2i"])
    assert record["concepts"] == zt.concepts()
    canonical = record["quality"]["trained"][zt.TEMPLATE]
    assert min(canonical["by_digit"]) >= 0.9, canonical  # the bar: each digit, its canonical prompt


def test_prompts_are_followed(cache: Path):
    """Re-measured here (few images, DDIM-10 as the run's evaluation): the model draws the digit it is asked for."""
    from fastunlearn.models import load_model
    from fastunlearn.zoo import load_classifier

    adapter = load_model("zoo:digits-t2i")
    judge = load_classifier()
    prompts = [zt.caption(zt.TEMPLATE, d) for d in (0, 3, 7)] + ["the number seven", "7", "seven"]
    want = torch.tensor([0, 3, 7, 7, 7, 7]).repeat_interleave(8)
    labels = [p for p in prompts for _ in range(8)]
    images = adapter.generate(len(labels), labels, steps=10, generator=torch.Generator().manual_seed(0))
    assert images.shape == (len(labels), 1, 16, 16)
    assert float((judge(images).argmax(1) == want).float().mean()) >= 0.9


def test_stock_pipeline_loads_it_without_fastunlearn(cache: Path):
    path = zoo.resolve("zoo:digits-t2i")
    code = (
        "import sys, torch\n"
        "from diffusers import StableDiffusionPipeline\n"
        f"pipe = StableDiffusionPipeline.from_pretrained({str(path)!r}, safety_checker=None)\n"
        "out = pipe('a handwritten digit seven', num_inference_steps=4, output_type='np',\n"
        "           generator=torch.Generator().manual_seed(0)).images\n"
        "assert out.shape == (1, 16, 16, 1), out.shape\n"
        "assert 'fastunlearn' not in sys.modules\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


def test_zoo_command(cache: Path, capsys):
    from fastunlearn.cli import main

    assert main(["zoo", "list"]) == 0
    listing = capsys.readouterr().out
    assert "zoo:digits-t2i" in listing and "zoo:digits-ddpm" in listing
    assert main(["zoo", "path", "digits-t2i"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == zoo.resolve("digits-t2i") and (path / "text_encoder" / "model.safetensors").is_file()
