"""Text-to-image jobs end to end on a tiny offline Stable Diffusion: every method that applies runs, the output is a
pipeline directory the stock ``StableDiffusionPipeline`` loads, and user mistakes are caught before anything is
written."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fastunlearn
from fastunlearn.errors import UserInputError

SMALL = dict(steps=2, images_per_prompt=4, batch_size=4, eval_steps=2, progress=False)


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    from fastunlearn.models.tiny_sd import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("sd") / "in")


def _unet_weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(directory / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.mark.parametrize("method", ["esd", "erasediff", "salun", "finetune", "gradient_ascent"])
def test_method_runs_and_reloads(sd_dir: Path, tmp_path: Path, method: str):
    from diffusers import StableDiffusionPipeline

    out = tmp_path / "out"
    extra = dict(ddim_steps=4, trajectories=1) if method == "esd" else {}  # a small bank
    result = fastunlearn.run(model=str(sd_dir), forget="prompt:a photo of a dog", retain="prompt:a cat;a red car",
                             method=method, out_dir=str(out), **SMALL, **extra)
    assert result.train["steps"] == 2
    before, after = _unet_weights(sd_dir), _unet_weights(out)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "the UNet did not change"
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None)
    image = pipe("a photo of a dog", num_inference_steps=2, output_type="np").images
    assert image.shape == (1, 16, 16, 3)
    for name in ("report.html", "manifest.json", "metrics.json", "config.yaml", "fastunlearn.json"):
        assert (out / name).is_file()
    # unchanged components are the source's files (hard links where the file system allows)
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").read_bytes() == \
        (sd_dir / "vae" / "diffusion_pytorch_model.safetensors").read_bytes()


def test_scope_limits_what_changes(sd_dir: Path, tmp_path: Path):
    out = tmp_path / "out"
    fastunlearn.run(model=str(sd_dir), forget="prompt:a photo of a dog", retain="prompt:a cat", method="finetune",
                    scope="xattn", out_dir=str(out), **SMALL)
    before, after = _unet_weights(sd_dir), _unet_weights(out)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".attn2." in k for k in changed)


@pytest.mark.parametrize("kwargs, match", [
    (dict(forget="prompt:a dog", retain="prompt:a dog"), "both the forget and the retain side"),
    (dict(forget="class:0"), "text-to-image model"),
    (dict(forget="prompt:a dog", unconditional=True), "unconditional"),
    (dict(forget="prompt:a dog", method="erasediff"), "needs prompts to keep"),
    (dict(forget="prompt:" + "z" * 40, retain="prompt:a cat"), "tokens long"),
    (dict(forget="prompt:a dog", retain="prompt:a cat", scope="nonsense"), "unknown parameter scope"),
])
def test_bad_input_writes_nothing(sd_dir: Path, tmp_path: Path, kwargs, match):
    out = tmp_path / "out"
    with pytest.raises(UserInputError, match=match):
        fastunlearn.run(model=str(sd_dir), out_dir=str(out), **{**SMALL, **kwargs})
    assert not out.exists()


def test_digits_t2i_run_is_verifiable(tmp_path: Path, monkeypatch):
    """A judged text-to-image run records its forget-metric protocol; `verify` re-measures it from the saved
    pipeline and catches a manifest whose figure was edited."""
    import json

    from fastunlearn.eval.manifest import verify

    monkeypatch.setenv("FASTUNLEARN_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    result = fastunlearn.run(model="zoo:digits-t2i", forget="prompt:a handwritten digit zero", method="esd", steps=5,
                             out_dir=str(out), eval_per_class=4, progress=False)
    v = json.loads((out / "manifest.json").read_text())["verification"]
    assert v["kind"] == "t2i" and v["forget_prompts"] == ["a handwritten digit zero"]
    assert v["value"] == result.metrics_after["forget_accuracy"]
    assert verify(out).ok
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["verification"]["value"] = 1.0 - v["value"] if v["value"] <= 0.5 else 0.0
    (out / "manifest.json").write_text(json.dumps(manifest))
    res = verify(out)
    assert not res.ok and res.mismatches == ["forget_metric.forget_accuracy"]
