"""manifest.json: stable hashes, and `verify` passes on an untouched output and names what was altered."""
from __future__ import annotations

import json
import time

import pytest
import torch

from fastunlearn.eval.manifest import (build_manifest, sample_hashes, verify, weight_hashes, write_manifest)

PROTOCOL = {"kind": "conditional", "classes": [0, 1], "n_per_class": 4, "steps": 2, "seed": 7,
            "judge": "zoo:digits-classifier"}
WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def _forget_accuracy(model_dir) -> float:
    """The api's evaluation protocol, computed independently of manifest.verify."""
    from fastunlearn.eval.classifier import generation_accuracy
    from fastunlearn.models.ddpm import load_adapter
    from fastunlearn.zoo import load_classifier

    adapter = load_adapter(model_dir)
    adapter.unet.eval()

    def sample_fn(n, class_labels, generator=None):
        return adapter.generate(n, class_labels, steps=PROTOCOL["steps"], generator=generator)

    res = generation_accuracy(sample_fn, load_classifier(), PROTOCOL["classes"], PROTOCOL["n_per_class"],
                              generator=torch.Generator().manual_seed(PROTOCOL["seed"]))
    return res["accuracy_by_class"][0]


@pytest.fixture
def out_dir(tiny_model_dir):
    images = torch.rand(5, 1, 16, 16) * 2 - 1
    value = _forget_accuracy(tiny_model_dir)
    now = time.time()
    manifest = build_manifest(
        selector="class:0", forget_images=images, forget_indices=torch.arange(5), retain_description="classes 1–9",
        method="erasediff", hyperparameters={"lr": 1e-4, "steps": 3}, weights_before=b"original weights",
        weights_after=tiny_model_dir, metrics_before={"forget_accuracy": 1.0},
        metrics_after={"forget_accuracy": value, "kind": "conditional"}, started_at=now - 5, ended_at=now,
        device="cpu", forget_classes=[0], eval_protocol=PROTOCOL, model="tiny")
    write_manifest(tiny_model_dir, manifest)
    return tiny_model_dir


def test_hashes_are_stable_and_sensitive(tiny_model_dir):
    x = torch.rand(4, 1, 16, 16)
    assert sample_hashes(x) == sample_hashes(x.clone()) == sample_hashes(x.double())  # hashed as float32
    y = x.clone()
    y[2, 0, 3, 3] += 1e-3
    assert [a == b for a, b in zip(sample_hashes(x), sample_hashes(y))] == [True, True, False, True]
    assert sample_hashes(x[:, :, ::2, ::2]) == sample_hashes(x[:, :, ::2, ::2].contiguous())
    w = weight_hashes(tiny_model_dir)
    assert list(w["files"]) == [WEIGHTS] and w == weight_hashes(tiny_model_dir)


def test_manifest_content(out_dir):
    m = json.loads((out_dir / "manifest.json").read_text())
    assert m["forgotten"]["count"] == 5 and len(m["forgotten"]["sample_sha256"]) == 5
    assert m["forgotten"]["indices"] == [0, 1, 2, 3, 4] and m["forgotten"]["selector"] == "class:0"
    assert m["method"] == {"name": "erasediff", "hyperparameters": {"lr": 1e-4, "steps": 3}}
    assert m["weights"]["before"]["files"] == {"<bytes>": weight_hashes(b"original weights")["files"]["<bytes>"]}
    assert m["library"]["version"] and m["library"]["git"]["commit"]
    assert m["verification"]["metric"] == "forget_accuracy" and m["verification"]["n_per_class"] == 4
    assert m["started_at"] < m["ended_at"]


def test_verify_passes_untouched_and_names_a_flipped_byte(out_dir):
    res = verify(out_dir)
    assert res.ok, res.lines()
    assert set(res.checks) == {f"weights.after.{WEIGHTS}", "forget_metric.forget_accuracy"}

    weights = out_dir / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01
    weights.write_bytes(bytes(data))
    res = verify(out_dir, rerun_metric=False)
    assert not res.ok and res.mismatches == [f"weights.after.{WEIGHTS}"]


def test_verify_catches_a_wrong_recorded_metric(out_dir):
    path = out_dir / "manifest.json"
    m = json.loads(path.read_text())
    value = m["verification"]["value"]
    m["verification"]["value"] = value + 0.5 if value <= 0.5 else value - 0.5  # tolerance here: 1/4
    path.write_text(json.dumps(m))
    res = verify(out_dir)
    assert res.mismatches == ["forget_metric.forget_accuracy"]


def _cli(argv):
    import argparse

    from fastunlearn.cli_eval import add_subcommands

    parser = argparse.ArgumentParser(prog="fastunlearn")
    add_subcommands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_verify_exit_codes(out_dir, tmp_path, capsys):
    from fastunlearn.errors import UserInputError

    assert _cli(["verify", str(out_dir)]) == 0
    assert "matches its manifest" in capsys.readouterr().out
    weights = out_dir / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x80
    weights.write_bytes(bytes(data))
    assert _cli(["verify", str(out_dir), "--no-metric"]) == 1
    assert f"MISMATCH in weights.after.{WEIGHTS}" in capsys.readouterr().out
    with pytest.raises(UserInputError, match="no manifest.json"):
        _cli(["verify", str(tmp_path / "nothing")])
