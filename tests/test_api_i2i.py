"""Image-to-image jobs end to end on tiny inpainters and masked autoencoders saved to a temp dir: ``fastunlearn.run``
trains the encoder only and writes the model, the report (completion grids, the encoder's t-SNE) and a manifest
that ``verify`` re-measures; the evaluation is recomputed here from its completions with a plain DDIM loop on
diffusers' ``DDIMScheduler`` (tests/conftest.py, ``inpaint_by_hand``) and plain judge calls; user mistakes are caught before anything is written."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import fastunlearn
from fastunlearn.errors import UserInputError
from fastunlearn.models.i2i import build_tiny_inpaint, build_tiny_mae, load_i2i

SMALL = dict(steps=2, batch_size=4, eval_per_class=3, eval_steps=2, progress=False)


@pytest.fixture(scope="module")
def inpaint_dir(tmp_path_factory) -> Path:
    return build_tiny_inpaint(seed=1).save_pretrained(tmp_path_factory.mktemp("inpaint") / "m")


@pytest.fixture(scope="module")
def mae_dir(tmp_path_factory) -> Path:
    return build_tiny_mae(seed=1).save_pretrained(tmp_path_factory.mktemp("mae") / "m")


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    unet = directory / "unet" / "diffusion_pytorch_model.safetensors"
    return load_file(unet if unet.is_file() else directory / "model.safetensors")


ENCODER = {"inpaint": ("conv_in.", "time_embedding.", "down_blocks.", "mid_block."), "mae": ("vit.",)}


@pytest.mark.parametrize("arch", ["inpaint", "mae"])
def test_run_end_to_end(arch, inpaint_dir, mae_dir, tmp_path):
    source = inpaint_dir if arch == "inpaint" else mae_dir
    out = tmp_path / "out"
    result = fastunlearn.run(model=str(source), method="i2i", forget="class:0", out_dir=str(out), lr=1e-2, **SMALL)
    # the encoder trained, the decoder bitwise as it was
    before, after = _weights(source), _weights(out)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(ENCODER[arch]) for k in changed)
    assert load_i2i(out).arch == arch
    # the evaluation: the common schema, kind i2i
    m = json.loads((out / "metrics.json").read_text())
    for res in (m["before"], m["after"]):
        assert res["kind"] == "i2i"
        assert res["headline"] == ["forget_accuracy", "retain_accuracy", "forget_accuracy_svm", "retain_accuracy_svm",
                                   "cosine_forget", "cosine_retain"]
        assert res["n"]["forget_accuracy"] == 3 and res["n"]["retain_accuracy"] == 27
        assert res["detail"]["classes"] == list(range(10)) and res["detail"]["mask"] == "center:8"
        assert len(res["tsne"]["x"]) == 30 and res["tsne"]["class"][:4] == [0, 0, 0, 1]
        assert set(res["fid_forget"]["by_class"]) == {"0"} and res["fid"]["classes"] == list(range(1, 10))
    assert "cosine_retain" in result.table()
    report = (out / "report.html").read_text()
    assert "Encoder embeddings (t-SNE)" in report and "alt='t-SNE of the encoder embeddings'" in report
    assert "<th>masked input</th>" in report and "forget FID (completions vs originals)" in report
    assert (out / "tsne.png").is_file() and result.paths["tsne"] == out / "tsne.png"
    # the manifest records the protocol, and verify re-measures it from the saved model
    from fastunlearn.eval.manifest import verify

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["verification"]["kind"] == "i2i" and manifest["verification"]["forget_classes"] == [0]
    assert verify(out).ok
    manifest["verification"]["value"] = 1.0 - manifest["verification"]["value"]  # a figure edited afterwards
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert not verify(out).ok


def test_mask_and_proxy_retain(inpaint_dir, tmp_path):
    """--mask replaces the model's own (training, evaluation and the saved sidecar); proxy:mnist trains on the
    MNIST digits of the retained classes."""
    out = tmp_path / "out"
    result = fastunlearn.run(model=str(inpaint_dir), method="i2i", forget="class:0-4", retain="proxy:mnist",
                             mask="outpaint:8", out_dir=str(out), **{**SMALL, "evaluate": False})
    assert json.loads((out / "fastunlearn.json").read_text())["mask"] == "outpaint:8"
    assert result.config.mask == "outpaint:8"
    kept = json.loads((out / "manifest.json").read_text())["kept"]["description"]
    assert "classes 5–9" in kept and "proxy:mnist" in kept and "dropped" in kept


# ---------------------------------------------------------------------- the evaluation, recomputed
def _class_seed(seed: int, c: int) -> int:  # the documented contract, written out
    s = np.random.SeedSequence([seed, c]).generate_state(2, np.uint32)
    return (int(s[0]) << 32 | int(s[1])) & ((1 << 63) - 1)


def _noise(seed: int, rows: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randn(1, 16, 16, generator=g) for _ in range(rows)])


def test_evaluation_recomputed_from_its_completions(inpaint_by_hand):
    from fastunlearn.data.digits import load_digits_split
    from fastunlearn.eval.evaluate import digits_judges
    from fastunlearn.eval.i2i import encoder_embeddings, evaluate_i2i

    adapter = build_tiny_inpaint(seed=2).eval()
    cfg = SimpleNamespace(eval_per_class=3, eval_steps=2, eval_seed=5)
    judges = digits_judges(adapter)
    res = evaluate_i2i(adapter, cfg, [0], [1, 2], judges)
    test = load_digits_split("test")
    originals = {c: test.images[test.labels == c][:3] for c in (0, 1, 2)}
    for c, x in originals.items():  # each class completed by DDIM from its own seeded noise
        torch.testing.assert_close(res["images"][c], inpaint_by_hand(adapter, x, _noise(_class_seed(5, c), 3), 2),
                                   rtol=1e-4, atol=1e-5)
    cnn, svm = judges[""], judges["svm"]
    with torch.no_grad():
        for suffix, judge in (("", cnn), ("_svm", svm)):
            hits = {c: int((judge(res["images"][c]).argmax(1) == c).sum()) for c in (0, 1, 2)}
            assert res["forget_accuracy" + suffix] == pytest.approx(hits[0] / 3)
            assert res["retain_accuracy" + suffix] == pytest.approx((hits[1] + hits[2]) / 6)
        cos = {c: torch.nn.functional.normalize(cnn.features(res["images"][c]), dim=1).mul(
            torch.nn.functional.normalize(cnn.features(x), dim=1)).sum(1) for c, x in originals.items()}
    assert res["cosine_forget"] == pytest.approx(float(cos[0].mean()), abs=1e-5)
    assert res["cosine_retain"] == pytest.approx(float(torch.cat([cos[1], cos[2]]).mean()), abs=1e-5)
    assert res["n"] == {"forget_accuracy": 3, "retain_accuracy": 6, "forget_accuracy_svm": 3,
                        "retain_accuracy_svm": 6, "cosine_forget": 3, "cosine_retain": 6}
    assert res["means"] == ["cosine_forget", "cosine_retain"]
    assert res["fid"]["classes"] == [1, 2] and res["fid_forget"]["overall"]["n_fake"] == 3
    assert res["tsne"]["class"] == [0, 0, 0, 1, 1, 1, 2, 2, 2] and res["tsne"]["timestep"] == 999
    # the t-SNE embeds the encoder's rows at t = T − 1 with each row's completion noise
    x = torch.cat(list(originals.values()))
    noise = torch.cat([_noise(_class_seed(5, c), 3) for c in (0, 1, 2)])
    torch.testing.assert_close(encoder_embeddings(adapter, x, noise),
                               adapter.encode(x, None, torch.full((9,), 999), noise), rtol=0, atol=1e-6)
    # a class's completions do not depend on which other classes are evaluated
    other = evaluate_i2i(adapter, cfg, [0], [7], judges[""], tsne=False)
    assert torch.equal(other["images"][0], res["images"][0]) and "tsne" not in other


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(mask="center:20"), "larger than the images"),
    (dict(mask="center:7"), "cannot sit in the middle"),
    (dict(method="esd"), "does not apply to image-to-image models"),
    (dict(method="erasediff"), "does not apply to image-to-image models"),
    (dict(retain="class:0,1"), "in both the forget and the retain set of class 0"),
    (dict(forget="class:0-9", retain="proxy:mnist"), "is empty once the forget classes"),
    (dict(forget="prompt:a dog"), "names prompts"),
    (dict(unconditional=True), "unconditional"),
    (dict(scope="all"), "trains the encoder only"),
])
def test_bad_input_writes_nothing(inpaint_dir, tmp_path, kwargs, match):
    out = tmp_path / "out"
    with pytest.raises(UserInputError, match=match):
        fastunlearn.run(model=str(inpaint_dir), **{"method": "i2i", "forget": "class:0", "out_dir": str(out),
                                                   **SMALL, **kwargs})
    assert not out.exists()


def test_bad_input_other_models(mae_dir, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    small = build_tiny_inpaint(size=8, mask="center:4").save_pretrained(tmp_path / "small")
    cases = [(dict(model=str(small)), "forget images do not fit the model: expected \\[N, 1, 8, 8\\]"),
             (dict(model=str(mae_dir), mask="center:4"), "does not tile into the model's 4×4 patches"),
             (dict(model=str(tiny_model_dir)), "unlearns an image-to-image model"),
             (dict(model=str(tiny_model_dir), method="erasediff", mask="center:8"), "for image-to-image models")]
    for kwargs, match in cases:
        with pytest.raises(UserInputError, match=match):
            fastunlearn.run(**{"method": "i2i", "forget": "class:0", "out_dir": str(out), **SMALL, **kwargs})
        assert not out.exists()
