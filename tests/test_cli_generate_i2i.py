"""`fastunlearn generate --images`: image-to-image completions into an .npz / .png, checked against a plain DDIM loop
on diffusers' ``DDIMScheduler`` from the documented noise and against the masked autoencoder's own forward;
determinism; other keys of the input ignored; bad inputs as exit code 2 with one line and no output file."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastunlearn.cli import main
from fastunlearn.models.i2i import build_tiny_inpaint, build_tiny_mae, load_i2i

STEPS = 2


@pytest.fixture(scope="module")
def inpaint_dir(tmp_path_factory) -> Path:
    return build_tiny_inpaint(seed=3).save_pretrained(tmp_path_factory.mktemp("inpaint") / "m")


@pytest.fixture(scope="module")
def mae_dir(tmp_path_factory) -> Path:
    return build_tiny_mae(seed=3).save_pretrained(tmp_path_factory.mktemp("mae") / "m")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """Three held-out digits and their labels (which the command must ignore)."""
    from fastunlearn.data.digits import load_digits_split

    test = load_digits_split("test")
    x = test.images[:3].numpy().astype(np.float32)
    path = tmp_path_factory.mktemp("in") / "in.npz"
    np.savez(path, images=x, labels=test.labels[:3].numpy())
    return path, x


def _generate(*args: str) -> int:
    return main(["generate", *args, "--steps", str(STEPS), "--quiet", "--device", "cpu"])


def _hole(mask: str) -> torch.Tensor:
    """Bool [1, 1, 16, 16] of the pixels generated, by slicing."""
    kind, k = mask.split(":")
    lo = (16 - int(k)) // 2
    square = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    square[..., lo:lo + int(k), lo:lo + int(k)] = True
    return square if kind == "center" else ~square


def _plain_ddim(unet, scheduler_config, x, noise, hole, steps):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(scheduler_config)
    sched.set_timesteps(steps)
    hole = hole.expand_as(x)
    cond = torch.cat([torch.where(hole, 0.0, x), hole.float()], 1)
    z = noise.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            z = torch.where(hole, z, x)
            eps = unet(torch.cat([z, cond], 1), torch.full((x.shape[0],), int(t))).sample
            z = sched.step(eps, t, z, eta=0.0).prev_sample
    return torch.where(hole, z.clamp(-1, 1), x)


def test_npz_inpaint_matches_a_plain_ddim_loop(inpaint_dir, inputs, tmp_path):
    path, x = inputs
    out = tmp_path / "out.npz"
    assert _generate("--model", str(inpaint_dir), "--images", str(path), "--mask", "outpaint:8", "--num", "2",
                     "--seed", "4", "--out", str(out)) == 0
    data = np.load(out, allow_pickle=False)
    assert sorted(data.files) == ["images", "mask", "model", "num", "seed", "steps"]  # labels are not copied
    assert str(data["mask"]) == "outpaint:8" and int(data["num"]) == 2 and int(data["seed"]) == 4
    done = torch.from_numpy(data["images"])
    assert done.shape == (6, 1, 16, 16) and done.dtype == torch.float32
    # row i·2 + j completes input i from the (i·2 + j + 1)-th randn draw of the seeded generator
    g = torch.Generator().manual_seed(4)
    noise = torch.stack([torch.randn(1, 16, 16, generator=g) for _ in range(6)])
    model = load_i2i(inpaint_dir)
    known = torch.from_numpy(x).repeat_interleave(2, 0)
    hole = _hole("outpaint:8")
    torch.testing.assert_close(done, _plain_ddim(model.unet, model.scheduler.config, known, noise, hole, STEPS),
                               rtol=1e-4, atol=1e-5)
    keep = ~hole.expand_as(known)
    assert torch.equal(done[keep], known[keep])  # the given pixels bitwise
    assert not torch.equal(done[0], done[1])  # two completions of one input differ in the hole


def test_same_seed_same_bytes_other_seed_other_images_and_default_num(inpaint_dir, inputs, tmp_path):
    path, _ = inputs
    args = ["--model", str(inpaint_dir), "--images", str(path)]
    assert _generate(*args, "--seed", "1", "--out", str(tmp_path / "a.npz")) == 0
    assert _generate(*args, "--seed", "1", "--out", str(tmp_path / "b.npz")) == 0
    assert _generate(*args, "--seed", "2", "--out", str(tmp_path / "c.npz")) == 0
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    a, c = (np.load(tmp_path / f"{n}.npz")["images"] for n in "ac")
    assert a.shape == (3, 1, 16, 16) and not np.array_equal(a, c)  # one completion per input by default
    assert str(np.load(tmp_path / "a.npz")["mask"]) == "center:8"  # the model's own mask by default


def test_mae_completion_and_png(mae_dir, inputs, tmp_path):
    path, x = inputs
    out = tmp_path / "out.npz"
    assert _generate("--model", str(mae_dir), "--images", str(path), "--num", "2", "--out", str(out)) == 0
    done = torch.from_numpy(np.load(out)["images"])
    model = load_i2i(mae_dir).eval()
    # the masked autoencoder's own forward: visible patches first (raster order), the 2×2 centre patches last
    with torch.no_grad():
        tiles = torch.tensor([1.0 if r in (1, 2) and col in (1, 2) else 0.0 for r in range(4) for col in range(4)])
        model.model.config.mask_ratio = 4 / 16 - 0.5 / 16
        order = (tiles + torch.arange(16) / 32).expand(3, -1)
        recon = model.model(torch.from_numpy(x), noise=order).logits
        pixels = model.model.unpatchify(recon, (16, 16)).clamp(-1, 1)
    hole = _hole("center:8").expand(3, -1, -1, -1)
    expected = torch.where(hole, pixels, torch.from_numpy(x)).repeat_interleave(2, 0)
    torch.testing.assert_close(done, expected, rtol=1e-4, atol=1e-5)
    png = tmp_path / "out.png"
    assert _generate("--model", str(mae_dir), "--images", str(path), "--num", "2", "--out", str(png)) == 0
    image = Image.open(png)
    assert image.height >= 3 * 64 and image.width >= 3 * 64  # a row per input: the masked input and 2 completions


@pytest.mark.parametrize("case, match", [
    ("ddpm", "only an image-to-image model"),
    ("no-images-key", "has no 'images' array"),
    ("wrong-size", "do not fit the model"),
    ("ints", "expected floats in \\[-1, 1\\]"),
    ("range", "expected \\[-1, 1\\]"),
    ("big-mask", "larger than the images"),
    ("guidance", "--guidance"),
    ("no-images-flag", "give the images to complete with --images"),
    ("mask-without-images", "--mask goes with --images"),
])
def test_bad_input_is_exit_2_one_line_and_no_file(case, match, inpaint_dir, tiny_model_dir, inputs, tmp_path, capsys):
    path, x = inputs
    model, images, extra = str(inpaint_dir), str(path), []
    if case == "ddpm":
        model = str(tiny_model_dir)
    elif case in ("no-images-key", "wrong-size", "ints", "range"):
        images = str(tmp_path / "bad.npz")
        arrays = {"no-images-key": {"pixels": x}, "wrong-size": {"images": np.zeros((2, 1, 8, 8), np.float32)},
                  "ints": {"images": np.zeros((2, 1, 16, 16), np.int64)},
                  "range": {"images": np.full((2, 1, 16, 16), 3.0, np.float32)}}[case]
        np.savez(images, **arrays)
    elif case == "big-mask":
        extra = ["--mask", "center:20"]
    elif case == "guidance":
        extra = ["--guidance", "3"]
    out = tmp_path / "out.npz"
    if case == "no-images-flag":
        code = _generate("--model", model, "--class", "1", "--num", "1", "--seed", "0", "--out", str(out))
    elif case == "mask-without-images":
        code = _generate("--model", str(tiny_model_dir), "--class", "1", "--num", "1", "--seed", "0", "--mask",
                         "center:8", "--out", str(out))
    else:
        code = _generate("--model", model, "--images", images, *extra, "--out", str(out))
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert re.search(match, err), err
    assert not out.exists()


def test_prompts_and_classes_still_need_num_and_seed(tiny_model_dir, tmp_path, capsys):
    assert _generate("--model", str(tiny_model_dir), "--class", "1", "--out", str(tmp_path / "o.npz")) == 2
    assert "--num N and --seed S are required" in capsys.readouterr().err


def test_eval_points_an_i2i_model_to_run_and_generate(inpaint_dir, capsys):
    assert main(["eval", "--model", str(inpaint_dir), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "is an image-to-image model" in err and "--images" in err and len(err.strip().splitlines()) == 1
