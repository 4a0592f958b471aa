"""Image-to-image adapters (Palette-style inpainter, masked autoencoder) and mask transforms, at 16×16×1.

Every numerical check compares with an independent path: the UNet's own forward observed through hooks on its
modules, ``model.vit`` / ``ViTMAEForPreTraining.forward`` called with a hand-built patch ordering, a DDIM loop
on diffusers' ``DDIMScheduler`` (tests/conftest.py, ``inpaint_by_hand``), and masks drawn by slicing — never the adapter's own intermediates.
"""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from diffusers import UNet2DModel
from transformers import ViTMAEForPreTraining

from fastunlearn.errors import UserInputError
from fastunlearn.models import family_of, family_of_ref, load_model
from fastunlearn.models.i2i import (FrozenEncoder, InpaintAdapter, MAEAdapter, build_tiny_inpaint, build_tiny_mae,
                                    load_i2i)
from fastunlearn.models.masks import FILL, parse_mask, patch_tiles

torch.set_num_threads(1)
SHAPE = (1, 16, 16)
HOLE = (slice(4, 12), slice(4, 12))  # center:8 on 16×16, by hand


def images(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, *SHAPE, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def hole_mask(n: int = 1) -> torch.Tensor:
    m = torch.zeros(n, 1, 16, 16)
    m[:, :, HOLE[0], HOLE[1]] = 1
    return m


@pytest.fixture(scope="module")
def inpaint() -> InpaintAdapter:
    return build_tiny_inpaint(seed=0)


@pytest.fixture(scope="module")
def mae() -> MAEAdapter:
    return build_tiny_mae(seed=0)


# ---------------------------------------------------------------------- masks
def test_center_mask_is_the_middle_square():
    m = parse_mask("center:8", SHAPE)
    t = m.tensor(3)
    assert t.shape == (3, 1, 16, 16) and t.dtype == torch.float32
    assert torch.equal(t, hole_mask(3))
    assert m.spec == "center:8" and m.hole_pixels == 64
    x = images()
    masked = m.apply(x)
    assert torch.equal(masked[:, :, HOLE[0], HOLE[1]], torch.full((3, 1, 8, 8), FILL))
    keep = hole_mask(1)[0, 0] == 0
    assert torch.equal(masked[:, :, keep], x[:, :, keep])


def test_outpaint_is_the_complement_and_non_square_images_centre():
    assert torch.equal(parse_mask("outpaint:8", SHAPE).tensor(2), 1 - hole_mask(2))
    assert parse_mask("outpaint:8", SHAPE).hole_pixels == 256 - 64
    m = parse_mask(" Center : 4 ", (8, 12))  # (H, W), spaces and case forgiven
    want = torch.zeros(8, 12)
    want[2:6, 4:8] = 1
    assert torch.equal(m.tensor(1)[0, 0], want) and m.spec == "center:4"


@pytest.mark.parametrize("spec, words", [
    ("square:8", "unknown mask"), ("center", "unknown mask"), ("center:x", "whole number"),
    ("center:0", "at least 1"), ("outpaint:-2", "at least 1"), ("center:17", "larger than the images"),
    ("center:16", "whole 16×16"), ("outpaint:16", "nothing is left to generate"), ("center:7", "K = 6 or 8"),
    (8, "a mask is a string"),
])
def test_bad_mask_specs(spec, words):
    with pytest.raises(UserInputError, match=words):
        parse_mask(spec, SHAPE)


def test_a_mask_of_another_size_is_refused():
    with pytest.raises(UserInputError, match="made for 8×8"):
        parse_mask(parse_mask("center:4", (8, 8)), SHAPE)
    with pytest.raises(UserInputError, match="made for 16×16"):
        parse_mask("center:8", SHAPE).apply(torch.zeros(1, 1, 8, 8))


def test_patch_tiles():
    tiles = patch_tiles(parse_mask("center:8", SHAPE), 4)  # 4×4 grid of 4×4 patches: rows 1–2, columns 1–2
    assert tiles.tolist() == [i in (5, 6, 9, 10) for i in range(16)]
    assert int(patch_tiles(parse_mask("center:8", SHAPE), 2).sum()) == 16
    assert int(patch_tiles(parse_mask("outpaint:8", SHAPE), 4).sum()) == 12
    for spec in ("center:6", "center:4"):  # a 6-wide hole, or one starting at pixel 6: patches half seen
        with pytest.raises(UserInputError, match="4×4 patches"):
            patch_tiles(parse_mask(spec, SHAPE), 4)


# ---------------------------------------------------------------------- inpainter: encoder = the UNet's own internals
def plain_input(unet_adapter: InpaintAdapter, x, t, noise):
    """[x_t, masked image, mask] by hand (float64 schedule, hole by slicing)."""
    ab = unet_adapter.scheduler.alphas_cumprod.double()[t].view(-1, 1, 1, 1)
    x_t = x.clone()
    noisy = (ab.sqrt() * x.double() + (1 - ab).sqrt() * noise.double()).float()
    x_t[:, :, HOLE[0], HOLE[1]] = noisy[:, :, HOLE[0], HOLE[1]]
    cond = x.clone()
    cond[:, :, HOLE[0], HOLE[1]] = 0
    return torch.cat([x_t, cond, hole_mask(x.shape[0])], 1)


def test_inpaint_encoder_features_are_the_unets_own(inpaint):
    unet = inpaint.unet
    x = images()
    t, noise = inpaint.encoder_noise(3, torch.Generator().manual_seed(1))
    seen, skips = {}, []
    names = inpaint.feature_names()
    modules = dict(unet.named_modules())
    hooks = [modules[n].register_forward_hook(lambda mod, args, out, n=n: seen.__setitem__(n, out)) for n in names]
    hooks += [b.register_forward_pre_hook(lambda mod, args: skips.append((args[0], args[1])))
              for b in unet.up_blocks]
    try:
        with torch.no_grad():
            unet(plain_input(inpaint, x, t, noise), t)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        feats = inpaint.encoder_features(x, "center:8", t, noise)
        flat = inpaint.encode(x, None, t, noise)
    assert len(feats) == len(names)
    for f, n in zip(feats, names):
        torch.testing.assert_close(f, seen[n], rtol=1e-5, atol=1e-6, msg=n)
    # the list is exactly the skip connections the decoder reads (in down order) plus the mid block's output
    read = [r for _, res in skips for r in reversed(res)][::-1]
    assert len(read) == len(feats) - 1
    for f, r in zip(feats[:-1], read):
        torch.testing.assert_close(f, r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(feats[-1], skips[0][0], rtol=1e-5, atol=1e-6)
    # flat = each map scaled by √(F/n_k): mean over a row = Σ_k mean_k of the map (the authors' per-map sum)
    sizes = [seen[n][0].numel() for n in names]
    want = torch.cat([seen[n].flatten(1) * math.sqrt(sum(sizes) / k) for n, k in zip(names, sizes)], 1)
    torch.testing.assert_close(flat, want, rtol=1e-5, atol=1e-6)
    other = inpaint.encode(images(seed=5), None, t, noise)
    per_map = sum(((seen[n] - g) ** 2).mean() for n, g in zip(names, inpaint.encoder_features(images(seed=5), None,
                                                                                             t, noise)))
    torch.testing.assert_close(((flat - other) ** 2).mean(), per_map, rtol=1e-4, atol=1e-7)


def test_inpaint_scopes_split_the_unet(inpaint):
    every = {n for n, _ in inpaint.unet.named_parameters()}
    enc = {n for n, _ in inpaint.named_parameters("encoder")}
    dec = {n for n, _ in inpaint.named_parameters("decoder")}
    assert enc and dec and not enc & dec and enc | dec == every == {n for n, _ in inpaint.named_parameters("all")}
    assert {n.split(".")[0] for n in enc} == {"conv_in", "time_embedding", "down_blocks", "mid_block"}
    assert {n.split(".")[0] for n in dec} == {"up_blocks", "conv_norm_out", "conv_out"}
    with pytest.raises(UserInputError, match="unknown parameter scope"):
        inpaint.parameters("attention")


def test_inpaint_encoding_touches_only_encoder_weights(inpaint):
    model = inpaint.scratch_copy()
    t, noise = model.encoder_noise(2, torch.Generator().manual_seed(0))
    model.encode(images(2), None, t, noise).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters("encoder"))
    assert all(p.grad is None for p in model.parameters("decoder"))


def test_frozen_encoder_is_theta0_without_the_decoder(inpaint, mae):
    for adapter in (inpaint, mae):
        model = adapter.scratch_copy()
        t, noise = model.encoder_noise(2, torch.Generator().manual_seed(3))
        x = images(2)
        teacher = model.frozen_encoder()
        assert isinstance(teacher, FrozenEncoder)
        own = sum(p.numel() for p in teacher.module.parameters())
        assert own == sum(p.numel() for p in model.parameters("encoder")) + (
            0 if adapter is inpaint else model.model.vit.embeddings.position_embeddings.numel())
        assert not any(p.requires_grad for p in teacher.module.parameters())
        before = model.encode(x, None, t, noise).detach()
        # not bitwise: frozen weights (requires_grad=False) take another CPU kernel path, ~1e-6 apart
        torch.testing.assert_close(teacher.encode(x, None, t, noise), before, rtol=1e-5, atol=1e-5)
        with torch.no_grad():
            for p in model.parameters("encoder"):
                p.add_(0.1)
        assert not torch.allclose(model.encode(x, None, t, noise), before, atol=1e-3)
        torch.testing.assert_close(teacher.encode(x, None, t, noise), before, rtol=1e-5, atol=1e-5)


def test_encoder_noise_draws_from_the_generator(inpaint, mae):
    t1, n1 = inpaint.encoder_noise(6, torch.Generator().manual_seed(4))
    t2, n2 = inpaint.encoder_noise(6, torch.Generator().manual_seed(4), rows=slice(2, 5))
    assert t1.dtype == torch.long and 0 <= int(t1.min()) and int(t1.max()) < 1000 and n1.shape == (6, *SHAPE)
    assert torch.equal(t1[2:5], t2) and torch.equal(n1[2:5], n2)
    g = torch.Generator().manual_seed(4)
    state = g.get_state()
    assert mae.encoder_noise(6, g) == (None, None) and torch.equal(g.get_state(), state)
    with pytest.raises(UserInputError, match="encoder_noise"):
        inpaint.encode(images(), None, None, None)


def test_inpaint_training_pair_is_palettes_loss(inpaint):
    x = images()
    t, noise = inpaint.encoder_noise(3, torch.Generator().manual_seed(2))
    with torch.no_grad():
        pred, target = inpaint.training_pair(x, None, t, noise)
        eps = inpaint.unet(plain_input(inpaint, x, t, noise), t).sample
    torch.testing.assert_close(pred, eps * hole_mask(3), rtol=1e-5, atol=1e-6)
    assert torch.equal(target, noise * hole_mask(3))


# ---------------------------------------------------------------------- masked autoencoder
def hand_ordering() -> torch.Tensor:
    """Visible patches first, the hole's patches (5, 6, 9, 10 of the 4×4 grid) last."""
    order = torch.arange(16, dtype=torch.float32)
    order[[5, 6, 9, 10]] += 100
    return order


def test_mae_encoder_is_the_vit_on_the_visible_patches(mae):
    x = images()
    reference = copy.deepcopy(mae.model)
    reference.config.mask_ratio = 0.25
    with torch.no_grad():
        out = reference.vit(x, noise=hand_ordering().expand(3, -1))
        full = reference(x, noise=hand_ordering().expand(3, -1))
        flat = mae.encode(x)
    assert out.mask[0].tolist() == [float(i in (5, 6, 9, 10)) for i in range(16)]
    assert out.last_hidden_state.shape == (3, 1 + 12, 16)
    torch.testing.assert_close(flat, out.last_hidden_state.flatten(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mae.encoder_features(x)[0], out.last_hidden_state, rtol=1e-5, atol=1e-6)
    hidden = x.clone()
    hidden[:, :, HOLE[0], HOLE[1]] = -x[:, :, HOLE[0], HOLE[1]]  # what the hole holds never reaches the encoder
    assert torch.equal(mae.encode(hidden), flat)
    # completion: the model's own reconstruction, unpatchified, in the hole only
    recon = reference.unpatchify(full.logits, (16, 16)).clamp(-1, 1)
    done = mae.complete(x, num=2)
    want = torch.where(hole_mask(3).bool(), recon, x)
    torch.testing.assert_close(done, want.repeat_interleave(2, 0), rtol=1e-5, atol=1e-6)
    keep = ~hole_mask(1)[0, 0].bool()
    assert torch.equal(done[:, :, keep], x.repeat_interleave(2, 0)[:, :, keep])
    pred, target = mae.training_pair(x)
    torch.testing.assert_close(pred, reference.unpatchify(full.logits, (16, 16)) * hole_mask(3), rtol=1e-5, atol=1e-6)
    assert torch.equal(target, x * hole_mask(3))


def test_mae_scopes_and_mask_checks(mae):
    every = {n for n, _ in mae.model.named_parameters()}
    fixed = {"vit.embeddings.position_embeddings", "decoder.decoder_pos_embed"}
    enc = {n for n, _ in mae.named_parameters("encoder")}
    dec = {n for n, _ in mae.named_parameters("decoder")}
    assert not enc & dec and enc | dec == every - fixed == {n for n, _ in mae.named_parameters("all")}
    assert all(n.startswith("vit.") for n in enc) and all(n.startswith("decoder.") for n in dec)
    with pytest.raises(UserInputError, match="4×4 patches"):
        mae.encode(images(), "center:6")
    with pytest.raises(UserInputError, match="4×4 patches"):
        build_tiny_mae(mask="center:4")
    outer = mae.encode(images(), "outpaint:8")  # the centre 2×2 patches seen
    assert outer.shape == (3, (1 + 4) * 16)


# ---------------------------------------------------------------------- completion
def test_inpaint_completion(inpaint, inpaint_by_hand):
    x = images(2)
    noise = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(7))
    done = inpaint.complete(x, generator=torch.Generator().manual_seed(7), steps=5, num=2)
    torch.testing.assert_close(done, inpaint_by_hand(inpaint, x.repeat_interleave(2, 0), noise, 5),
                               rtol=1e-4, atol=1e-5)
    keep = ~hole_mask(1)[0, 0].bool()
    assert torch.equal(done[:, :, keep], x.repeat_interleave(2, 0)[:, :, keep])  # bitwise
    assert float(done.abs().max()) <= 1.0
    again = inpaint.complete(x, generator=torch.Generator().manual_seed(7), steps=5, num=2, batch_size=1)
    torch.testing.assert_close(again, done, rtol=0, atol=1e-5)  # same generator, any batch size (CPU kernels differ)
    assert torch.equal(inpaint.complete(x, generator=torch.Generator().manual_seed(7), steps=5, num=2), done)
    other = inpaint.complete(x, generator=torch.Generator().manual_seed(8), steps=5, num=2)
    assert not torch.equal(other, done)
    assert not torch.equal(done[0], done[1])  # two completions of one row differ in the hole
    inpaint.train()
    inpaint.complete(x, steps=1)
    assert inpaint.unet.training  # the mode it was in comes back
    inpaint.eval()


def test_outpaint_completion_keeps_the_centre(inpaint):
    x = images(2)
    done = inpaint.complete(x, "outpaint:8", generator=torch.Generator().manual_seed(0), steps=3)
    assert torch.equal(done[:, :, HOLE[0], HOLE[1]], x[:, :, HOLE[0], HOLE[1]])


# ---------------------------------------------------------------------- saving and loading
def test_inpaint_round_trip(inpaint, tmp_path):
    out = inpaint.save_pretrained(tmp_path / "inpaint")
    assert json.loads((out / "fastunlearn.json").read_text()) == {
        "adapter": "i2i", "arch": "inpaint", "mask": "center:8", "image_shape": [1, 16, 16]}
    assert family_of_ref(str(out)) == "i2i"
    back = load_model(str(out)).eval()  # from_pretrained gives eval mode; train mode takes other CPU kernels
    inpaint.eval()
    assert isinstance(back, InpaintAdapter) and family_of(back) == "i2i" and back.mask.spec == "center:8"
    stock = UNet2DModel.from_pretrained(out / "unet", low_cpu_mem_usage=False)
    for a, b in zip(stock.state_dict().values(), inpaint.unet.state_dict().values()):
        assert torch.equal(a, b)
    x = images(2)
    t, noise = inpaint.encoder_noise(2, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(back.encode(x, None, t, noise), inpaint.encode(x, None, t, noise))
        assert torch.equal(back.training_pair(x, None, t, noise)[0], inpaint.training_pair(x, None, t, noise)[0])
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert torch.equal(back.complete(x, generator=g(), steps=3), inpaint.complete(x, generator=g(), steps=3))
    assert load_i2i(out, mask="outpaint:8").mask.spec == "outpaint:8"


def test_mae_round_trip(mae, tmp_path):
    out = mae.save_pretrained(tmp_path / "mae")
    assert json.loads((out / "fastunlearn.json").read_text())["arch"] == "mae"
    back = load_model(out).eval()
    mae.eval()
    assert isinstance(back, MAEAdapter) and family_of_ref(out) == "i2i"
    stock = ViTMAEForPreTraining.from_pretrained(out)
    assert stock.config.norm_pix_loss is False
    assert family_of_ref(stock) == "i2i" and isinstance(load_model(stock), MAEAdapter)
    x = images(2)
    assert torch.equal(back.complete(x), mae.complete(x))
    with torch.no_grad():
        assert torch.equal(back.encode(x), mae.encode(x))


def test_mae_save_and_load_print_nothing(mae, tmp_path, capfd):
    """transformers' "Loading weights" / "Writing model shards" bars stay out of a run's output, and its own
    progress-bar setting is given back."""
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    capfd.readouterr()
    load_model(mae.save_pretrained(tmp_path / "mae"))
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
    assert hf_logging.is_progress_bar_enabled()


def test_bad_directories(tmp_path, mae):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(UserInputError, match="not an image-to-image model directory"):
        load_i2i(plain)
    out = mae.save_pretrained(tmp_path / "mae")
    (out / "fastunlearn.json").write_text(json.dumps({"adapter": "i2i", "arch": "gan"}))
    with pytest.raises(UserInputError, match="unknown image-to-image architecture 'gan'"):
        load_i2i(out)
    (out / "fastunlearn.json").write_text(json.dumps({"adapter": "i2i", "arch": "mae"}))
    (out / "model.safetensors").rename(out / "pytorch_model.bin")
    with pytest.raises(UserInputError, match="pickle"):
        load_i2i(out)


# ---------------------------------------------------------------------- bad input
def test_images_that_do_not_fit(inpaint, mae):
    t, noise = inpaint.encoder_noise(2, torch.Generator().manual_seed(0))
    for bad in (torch.zeros(2, 1, 8, 8), torch.zeros(2, 3, 16, 16), torch.zeros(1, 16, 16)):
        for call in (lambda: inpaint.encode(bad, None, t, noise), lambda: inpaint.complete(bad, steps=1),
                     lambda: mae.encode(bad), lambda: mae.complete(bad)):
            with pytest.raises(UserInputError, match=r"expected \[N, 1, 16, 16\]"):
                call()
    with pytest.raises(UserInputError, match="noise"):
        inpaint.encode(images(2), None, t, noise[:1])
    with pytest.raises(UserInputError, match="at least 1"):
        inpaint.complete(images(2), num=0)


def test_models_the_adapters_refuse():
    from transformers import ViTMAEConfig

    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(4, 8), norm_num_groups=2,
                       layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"))
    with pytest.raises(UserInputError, match="in_channels must be"):
        InpaintAdapter(unet)
    cfg = ViTMAEConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
                       num_attention_heads=2, intermediate_size=16, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                       decoder_num_attention_heads=2, decoder_intermediate_size=16, norm_pix_loss=True)
    with pytest.raises(UserInputError, match="norm_pix_loss"):
        MAEAdapter(ViTMAEForPreTraining(cfg))
    cfg.norm_pix_loss = False
    fresh = ViTMAEForPreTraining(cfg)
    with pytest.raises(UserInputError, match="init_mae_position_tables"):
        MAEAdapter(fresh)


def test_position_tables_are_the_sin_cos_embedding():
    model = build_tiny_mae().model
    # patch (row 0, column 1) of the 4×4 grid, table row 2 (row 0 is CLS), 16 wide: [sin, cos of the column | sin,
    # cos of the row] as the original MAE code lays it out (and its checkpoints hold), frequencies 1/10000^(k/4)
    omega = 1.0 / 10000 ** (torch.arange(4, dtype=torch.float64) / 4)
    row, col = 0.0, 1.0
    want = torch.cat([torch.sin(col * omega), torch.cos(col * omega), torch.sin(row * omega), torch.cos(row * omega)])
    for table in (model.vit.embeddings.position_embeddings, model.decoder.decoder_pos_embed):
        torch.testing.assert_close(table[0, 2].double(), want, rtol=1e-6, atol=1e-6)
        assert torch.equal(table[0, 0], torch.zeros(16))  # the CLS row
