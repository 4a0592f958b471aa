"""`fastunlearn generate`: the .npz and .png it writes, checked against the stock diffusers pipeline and a plain
DDIM loop; determinism (same seed → same bytes); row i's noise independent of the rows after it; bad inputs as
exit code 2 with one line and no output file. Tiny models, 2 DDIM steps."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastunlearn.cli import main
from fastunlearn.cli_generate import generate_images, initial_noise

STEPS = 2


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory) -> Path:
    from fastunlearn.models.tiny_sd import save_tiny_sd

    return save_tiny_sd(tmp_path_factory.mktemp("sd") / "sd")


@pytest.fixture(scope="module")
def sd_concepts_dir(sd_dir, tmp_path_factory) -> Path:
    """The tiny SD with concepts naming classes, as zoo:digits-t2i records them."""
    path = tmp_path_factory.mktemp("sdc") / "sd"
    shutil.copytree(sd_dir, path)
    concepts = {"classes": ["zero", "one", "two"], "template": "a digit {}"}
    (path / "fastunlearn.json").write_text(json.dumps({"adapter": "t2i", "concepts": concepts}))
    return path


def _generate(*args: str) -> int:
    return main(["generate", *args, "--steps", str(STEPS), "--quiet", "--device", "cpu"])


def _reference_noise(seed: int, rows: int, shape) -> torch.Tensor:
    # The documented contract: row i is the (i+1)-th draw of randn(shape) from one seeded CPU generator.
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(tuple(shape), generator=g) for _ in range(rows)])


def test_initial_noise_row_i_does_not_depend_on_the_rows_after_it():
    # 3×5×5 = 75 values a row, not a multiple of 16: one big randn draw would change the early rows with n.
    few, many = initial_noise(7, 2, (3, 5, 5)), initial_noise(7, 5, (3, 5, 5))
    assert torch.equal(few, many[:2])
    assert torch.equal(many, _reference_noise(7, 5, (3, 5, 5)))
    assert not torch.equal(many[0], many[1])


def test_npz_t2i_matches_the_stock_pipeline(sd_dir, tmp_path):
    from diffusers import StableDiffusionPipeline

    prompts = ["a cat, a dog, and a bird", "c"]
    out = tmp_path / "sub" / "dir" / "gen.npz"  # parent folders created
    assert _generate("--model", str(sd_dir), "--prompt", prompts[0], "--prompt", prompts[1], "--num", "2",
                     "--seed", "5", "--guidance", "4.0", "--out", str(out)) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["gen.npz"]  # exactly that path, no temporary left
    data = np.load(out, allow_pickle=False)
    images, rows = data["images"], data["prompts"]
    assert images.dtype == np.float32 and images.shape == (4, 3, 16, 16)
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.std() > 0
    assert rows.dtype.kind == "U" and rows.tolist() == [prompts[0]] * 2 + [prompts[1]] * 2  # commas kept, verbatim
    assert (int(data["seed"]), int(data["steps"]), float(data["guidance"]), int(data["num"])) == (5, STEPS, 4.0, 2)
    assert "labels" not in data.files

    # Independent: diffusers' own StableDiffusionPipeline from the same initial latents, prompt-major.
    pipe = StableDiffusionPipeline.from_pretrained(sd_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    latents = _reference_noise(5, 4, (4, 8, 8))
    ref = pipe(prompt=rows.tolist(), num_inference_steps=STEPS, guidance_scale=4.0, latents=latents,
               output_type="pt").images * 2 - 1
    np.testing.assert_allclose(images, ref.numpy(), atol=2e-5)


def test_npz_ddpm_matches_a_plain_ddim_loop(tiny_model_dir, tmp_path):
    from diffusers import DDIMScheduler, UNet2DModel

    out = tmp_path / "gen.npz"
    assert _generate("--model", str(tiny_model_dir), "--class", "3", "--class", "7", "--num", "3", "--seed", "2",
                     "--out", str(out)) == 0
    data = np.load(out, allow_pickle=False)
    assert data["images"].dtype == np.float32 and data["images"].shape == (6, 1, 16, 16)
    assert data["labels"].dtype == np.int64 and data["labels"].tolist() == [3, 3, 3, 7, 7, 7]
    assert "prompts" not in data.files and float(data["guidance"]) == 1.0

    unet = UNet2DModel.from_pretrained(tiny_model_dir, subfolder="unet").eval()
    sched = DDIMScheduler.from_pretrained(tiny_model_dir, subfolder="scheduler")
    sched.set_timesteps(STEPS)
    x, y = _reference_noise(2, 6, (1, 16, 16)), torch.tensor([3, 3, 3, 7, 7, 7])
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t, class_labels=y).sample, t, x, eta=0.0).prev_sample
    np.testing.assert_allclose(data["images"], x.clamp(-1, 1).numpy(), atol=1e-5)


def test_png_is_a_prompt_major_grid_of_the_images(tiny_model_dir, tmp_path):
    args = ["--model", str(tiny_model_dir), "--class", "3", "--class", "7", "--num", "3", "--seed", "2"]
    assert _generate(*args, "--out", str(tmp_path / "g.png")) == 0
    assert _generate(*args, "--out", str(tmp_path / "g.npz")) == 0
    grid = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"))
    images = np.load(tmp_path / "g.npz")["images"]
    cell, gap = 64, 4  # 16×16 upscaled ×4; gaps of the grid helper
    assert grid.shape[0] == 2 * (cell + gap) + gap
    x0 = grid.shape[1] - gap - 3 * (cell + gap)  # the tiles sit right of the labels
    assert x0 > gap  # room for the labels
    for r in range(2):
        for c in range(3):
            tile = grid[gap + r * (cell + gap): gap + r * (cell + gap) + cell, x0 + c * (cell + gap):][:, :cell]
            expected = np.round((images[3 * r + c, 0] + 1) * 127.5).astype(np.uint8).repeat(4, 0).repeat(4, 1)
            np.testing.assert_array_equal(tile[..., 0], expected, err_msg=f"row {r} column {c}")
    labels = grid[:, :x0 - gap]
    assert (labels < 128).any()  # the class labels are drawn


def test_same_seed_same_bytes_other_seed_other_images(sd_dir, tmp_path, monkeypatch):
    import time

    args = ["--model", str(sd_dir), "--prompt", "x", "--num", "2"]
    assert _generate(*args, "--seed", "3", "--out", str(tmp_path / "a.npz")) == 0
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now + 400 * 86400)  # written "a year later": no clock in the file
    for name, seed in (("b", "3"), ("c", "4")):
        assert _generate(*args, "--seed", seed, "--out", str(tmp_path / f"{name}.npz")) == 0
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    a, c = np.load(tmp_path / "a.npz")["images"], np.load(tmp_path / "c.npz")["images"]
    assert np.abs(a - c).max() > 1e-2


def test_rows_of_a_prompt_list_do_not_depend_on_what_follows(sd_dir, tiny_model_dir):
    """[A] and [A, B] start with the same images. Same noise, but the sampler batches 2 vs 4 rows, and the CPU
    kernels may round differently per batch size (measured: ≤ 3e-6 on the tiny DDPM), hence the tolerance."""
    from fastunlearn.models import load_model

    sd = load_model(sd_dir)
    one, _ = generate_images(sd, prompts=["A"], num=2, seed=9, steps=STEPS)
    two, cond = generate_images(sd, prompts=["A", "B"], num=2, seed=9, steps=STEPS)
    assert cond == ["A", "A", "B", "B"]
    torch.testing.assert_close(one, two[:2], rtol=0, atol=1e-5)
    assert (two[:2] - two[2:]).abs().max() > 1e-2
    ddpm = load_model(tiny_model_dir)
    one, _ = generate_images(ddpm, classes=[3], num=2, seed=9, steps=STEPS)
    two, labels = generate_images(ddpm, classes=[3, 5], num=2, seed=9, steps=STEPS)
    assert labels.tolist() == [3, 3, 5, 5]
    torch.testing.assert_close(one, two[:2], rtol=0, atol=1e-5)
    assert (one[0] - one[1]).abs().max() > 1e-2  # each row its own noise


def test_prompts_file_equals_the_same_prompts_given_inline(sd_dir, tmp_path):
    file = tmp_path / "prompts.txt"
    file.write_text("a red, round thing\n\n   \nB\n")
    assert _generate("--model", str(sd_dir), "--prompts", str(file), "--num", "1", "--seed", "0",
                     "--out", str(tmp_path / "f.npz")) == 0
    assert _generate("--model", str(sd_dir), "--prompt", "a red, round thing", "--prompt", "B", "--num", "1",
                     "--seed", "0", "--out", str(tmp_path / "i.npz")) == 0
    f, i = np.load(tmp_path / "f.npz"), np.load(tmp_path / "i.npz")
    assert f["prompts"].tolist() == ["a red, round thing", "B"]
    np.testing.assert_array_equal(f["images"], i["images"])


def test_t2i_class_uses_the_concepts_prompt(sd_concepts_dir, tmp_path):
    assert _generate("--model", str(sd_concepts_dir), "--class", "2", "--class", "one", "--num", "1", "--seed", "1",
                     "--out", str(tmp_path / "c.npz")) == 0
    assert _generate("--model", str(sd_concepts_dir), "--prompt", "a digit two", "--prompt", "a digit one",
                     "--num", "1", "--seed", "1", "--out", str(tmp_path / "p.npz")) == 0
    c, p = np.load(tmp_path / "c.npz"), np.load(tmp_path / "p.npz")
    assert c["prompts"].tolist() == ["a digit two", "a digit one"] and c["labels"].tolist() == [2, 1]
    np.testing.assert_array_equal(c["images"], p["images"])


def test_unconditional_ddpm_needs_no_flag_and_refuses_classes(make_tiny_unet, tmp_path, capsys):
    from diffusers import DDPMScheduler

    from fastunlearn.models.ddpm import DDPMAdapter

    model = DDPMAdapter(make_tiny_unet(num_class_embeds=None), DDPMScheduler()).save_pretrained(tmp_path / "u")
    assert _generate("--model", str(model), "--num", "3", "--seed", "0", "--out", str(tmp_path / "u.npz")) == 0
    data = np.load(tmp_path / "u.npz")
    assert data["images"].shape == (3, 1, 16, 16) and "labels" not in data.files and "prompts" not in data.files
    assert _generate("--model", str(model), "--num", "3", "--seed", "0", "--out", str(tmp_path / "u.png")) == 0
    assert Image.open(tmp_path / "u.png").size[1] == 64 + 2 * 4  # one row
    capsys.readouterr()
    assert _generate("--model", str(model), "--class", "1", "--num", "1", "--seed", "0",
                     "--out", str(tmp_path / "x.npz")) == 2
    assert "unconditional: drop --class" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["no prompt", "class on t2i", "prompt on ddpm", "no class on ddpm", "class range",
                                  "bad extension", "missing model", "missing prompts file", "too long"])
def test_bad_input_is_exit_2_one_line_and_no_file(case, sd_dir, tiny_model_dir, tmp_path, capsys):
    sd, ddpm = ["--model", str(sd_dir)], ["--model", str(tiny_model_dir)]
    args, message = {
        "no prompt": (sd, "give what to draw with --prompt"),
        "class on t2i": (sd + ["--class", "1"], "names no classes"),
        "prompt on ddpm": (ddpm + ["--prompt", "a dog"], "takes no text prompts"),
        "no class on ddpm": (ddpm, "give the classes to draw with --class"),
        "class range": (ddpm + ["--class", "12"], "knows classes 0–9"),
        "bad extension": (sd + ["--prompt", "a", "--out", str(tmp_path / "g.jpg")], "use .png"),
        "missing model": (["--model", str(tmp_path / "nope"), "--prompt", "a"], "neither a zoo name"),
        "missing prompts file": (sd + ["--prompts", str(tmp_path / "none.txt")], "no such file"),
        "too long": (sd + ["--prompt", "x" * 40], "shorten it"),
    }[case]
    if "--out" not in args:
        args = args + ["--out", str(tmp_path / "out" / "g.npz")]
    assert _generate(*args, "--num", "1", "--seed", "0") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("fastunlearn: error:") and message in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "g.jpg").exists()
