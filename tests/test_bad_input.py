"""Bad input, one table: every case fails in Python with a specific :class:`UserInputError` (or a subclass)
and on the command line with exit code 2 and exactly one line on stderr, before any training, and leaves
no output behind (neither ``out_dir`` nor a partial/temp dir beside it).

Each case builds what it needs in ``tmp_path`` from the tiny DDPM of ``conftest.py`` (16×16 grey, classes
0–9 + null class 10) and returns the ``fastunlearn.run`` keywords that differ from a valid 1-step,
no-evaluation job; the CLI flags are derived from the same keywords.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from PIL import Image

import fastunlearn
from fastunlearn.cli import main
from fastunlearn.config import UnlearnConfig
from fastunlearn.data.errors import DataError
from fastunlearn.errors import UserInputError


@dataclass
class Ctx:
    """What a case builds on: the valid tiny model and a scratch folder (outside the output's folder)."""

    model: Path
    tmp: Path
    outs: Path  #: the folder the output goes in

    def copy_model(self, name: str) -> Path:
        dst = self.tmp / name
        shutil.copytree(self.model, dst)
        return dst

    def npy(self, name: str, array: np.ndarray) -> str:
        path = self.tmp / f"{name}.npy"
        np.save(path, array)
        return str(path)

    def folder(self, name: str, files: dict[str, bytes | Image.Image]) -> str:
        root = self.tmp / name
        root.mkdir(parents=True)
        for rel, content in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Image.Image):
                content.save(root / rel)
            else:
                (root / rel).write_bytes(content)
        return str(root)


@dataclass
class Spec:
    """A case's input: run() keywords (merged over the valid base), extra CLI flags, environment."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)  #: CLI-only extras (e.g. --config FILE, -o KEY=VALUE)
    python: Callable[[dict[str, Any]], Any] | None = None  #: the Python call, when not run(**kwargs)
    env: dict[str, str] = field(default_factory=dict)


def _grey(size: int = 16) -> Image.Image:
    return Image.fromarray((np.arange(size * size, dtype=np.uint8).reshape(size, size) * 3))


# ---------------------------------------------------------------------- bad models
def _missing_weights(ctx: Ctx) -> Spec:
    d = ctx.copy_model("no-weights")
    (d / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    return Spec({"model": str(d)})


def _truncated_safetensors(ctx: Ctx) -> Spec:
    d = ctx.copy_model("truncated")
    f = d / "unet" / "diffusion_pytorch_model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    return Spec({"model": str(d)})


def _random_pt_dir(ctx: Ctx) -> Spec:
    d = ctx.tmp / "a-checkpoint"
    d.mkdir()
    torch.save({"state_dict": {"w": torch.randn(3)}}, d / "model.pt")
    return Spec({"model": str(d)})


def _config_not_a_unet(ctx: Ctx) -> Spec:
    d = ctx.tmp / "bert"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    return Spec({"model": str(d)})


def _weights_do_not_match_config(ctx: Ctx) -> Spec:
    d = ctx.copy_model("mismatch")
    cfg_path = d / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["block_out_channels"] = [16, 32]
    cfg_path.write_text(json.dumps(cfg))
    return Spec({"model": str(d)})


def _nan_weights(ctx: Ctx) -> Spec:
    from safetensors.torch import load_file, save_file

    d = ctx.copy_model("nan")
    f = d / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(f)
    state["mid_block.resnets.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    save_file(state, f)
    return Spec({"model": str(d)})


def _pickle_only_dir(ctx: Ctx) -> Spec:
    from diffusers import UNet2DModel

    d = ctx.copy_model("pickled")
    UNet2DModel.from_pretrained(d, subfolder="unet").save_pretrained(d / "unet", safe_serialization=False)
    (d / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    return Spec({"model": str(d)})


def _pt_file(ctx: Ctx) -> Spec:
    from diffusers import UNet2DModel

    path = ctx.tmp / "unet.ckpt"
    torch.save(UNet2DModel.from_pretrained(ctx.model, subfolder="unet").state_dict(), path)
    return Spec({"model": str(path)})


# ---------------------------------------------------------------------- bad data
def _class_only_sets(**kw) -> Callable[[Ctx], Spec]:
    return lambda ctx: Spec(kw)


def _empty_forget_folder(ctx: Ctx) -> Spec:
    return Spec({"forget": ctx.folder("empty", {"notes.txt": b"no images here"})})


def _unreadable_image(ctx: Ctx) -> Spec:
    return Spec({"forget": ctx.folder("broken", {"a.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 20})})


def _label_not_in_model(ctx: Ctx) -> Spec:
    return Spec({"forget": ctx.folder("labelled", {"12/a.png": _grey()})})


def _unlabelled_no_null_class(ctx: Ctx) -> Spec:
    # The bare UNet directory has no sidecar: a conditional model with no null class for unlabelled images.
    return Spec({"model": str(ctx.model / "unet"), "forget": ctx.folder("plain", {"a.png": _grey()})})


def _npy(array: np.ndarray) -> Callable[[Ctx], Spec]:
    return lambda ctx: Spec({"forget": ctx.npy("forget", array)})


def _in_memory_images(ctx: Ctx) -> Spec:
    # Python passes the images themselves; the CLI can only name a file, here one that is not an array.
    (ctx.tmp / "images.txt").write_text("1 2 3")
    return Spec({"forget": str(ctx.tmp / "images.txt")},
                python=lambda kw: fastunlearn.run(**{**kw, "forget": torch.zeros(4, 1, 16, 16)}))


# ---------------------------------------------------------------------- bad options, config and output
def _config_file_unknown_key(ctx: Ctx) -> Spec:
    path = ctx.tmp / "job.yaml"
    path.write_text("steps: 1\nlearning_rate: 0.001\n")

    def python(kw):
        return fastunlearn.api.run_config(UnlearnConfig.from_yaml(path, base=UnlearnConfig.from_dict(kw)))
    return Spec(argv=["--config", str(path)], python=python)


def _unknown_option(ctx: Ctx) -> Spec:
    return Spec(argv=["-o", "lambda=3"], python=lambda kw: fastunlearn.run(**kw, options={"lambda": 3}))


def _out_parent_is_a_file(ctx: Ctx) -> Spec:
    blocker = ctx.outs / "a-file"
    blocker.write_text("not a folder")
    return Spec({"out_dir": str(blocker / "out")})


def _out_is_a_file(ctx: Ctx) -> Spec:
    (ctx.outs / "out").write_text("not a folder")
    return Spec()


#: id → (build the case, the message the error must match, the exception class)
CASES: dict[str, tuple[Callable[[Ctx], Spec], str, type[Exception]]] = {
    # forget/retain sets: empty, overlapping, mismatched with the model
    "forget-empty-folder": (_empty_forget_folder, r"holds no image file", DataError),
    "forget-unknown-class": (_class_only_sets(forget="class:42"),
                             r"forget set is empty: the selector `class:42` matched no sample \(classes present: 0–9\)",
                             DataError),
    "forget-index-out-of-range": (_class_only_sets(forget="index:5000"), r"outside the data set's indices 0–1796",
                                  DataError),
    "retain-empty": (_class_only_sets(forget="class:0-9"), r"retain set is empty", DataError),
    "retain-unknown-class": (_class_only_sets(retain="class:42"), r"retain set is empty", DataError),
    "forget-retain-overlap": (_class_only_sets(forget="class:0", retain="class:0,1"),
                              r"in both the forget and the retain set", DataError),
    "forget-label-not-in-model": (_label_not_in_model, r"forget labels contain class 12 but the model knows classes 0–9",
                                  UserInputError),
    "forget-unlabelled-no-null-class": (_unlabelled_no_null_class, r"no class labels and this conditional model has no null class",
                                        UserInputError),
    "forget-unreadable-image": (_unreadable_image, r"cannot read image file .*a\.png", DataError),
    # images of the wrong size, channels or dtype
    "images-wrong-size": (_npy(np.zeros((4, 1, 32, 32), np.float32)),
                          r"do not fit the model: expected \[N, 1, 16, 16\].* got 1×32×32", DataError),
    "images-wrong-channels": (_npy(np.zeros((4, 3, 16, 16), np.float32)),
                              r"do not fit the model: .* got 3×16×16", DataError),
    "images-wrong-dtype": (_npy(np.zeros((4, 1, 16, 16), np.uint8)), r"have dtype uint8; expected floats in \[-1, 1\]",
                           DataError),
    "images-out-of-range": (_npy(np.full((4, 1, 16, 16), 255.0, np.float32)), r"range over \[255, 255\]; expected \[-1, 1\]",
                            DataError),
    "images-nan": (_npy(np.full((4, 1, 16, 16), np.nan, np.float32)), r"hold NaN or Inf", DataError),
    "images-in-memory": (_in_memory_images, r"(in-memory array of shape \(4, 1, 16, 16\)|is a file, not a \.npy array)",
                         DataError),
    # unknown class / method / option / backend / attention / device / scope
    "unknown-method": (_class_only_sets(method="bogus"), r"unknown method 'bogus'", UserInputError),
    "unknown-option": (_unknown_option, r"unknown option 'lambda'", UserInputError),
    "unknown-option-value": (_class_only_sets(lambda_rule="median"), r"unknown erasediff lambda_rule 'median'",
                             UserInputError),
    "unknown-kernel-backend": (lambda ctx: Spec(env={"FASTUNLEARN_BACKEND": "bogus"}),
                               r"FASTUNLEARN_BACKEND='bogus' is not a backend", UserInputError),
    "unknown-attention-backend": (_class_only_sets(attention="bogus"), r"unknown attention backend 'bogus'",
                                  UserInputError),
    "unknown-device": (_class_only_sets(device="tpu"), r"unknown device 'tpu'", UserInputError),
    "unknown-scope": (_class_only_sets(scope="decoder"), r"unknown parameter scope 'decoder'", UserInputError),
    # numbers out of range
    "steps-zero": (_class_only_sets(steps=0), r"steps must be a positive integer, got 0", UserInputError),
    "steps-negative": (_class_only_sets(steps=-3), r"steps must be a positive integer, got -3", UserInputError),
    "batch-size-zero": (_class_only_sets(batch_size=0), r"batch_size must be a positive integer, got 0", UserInputError),
    "lr-zero": (_class_only_sets(lr=0.0), r"lr must be a positive number, got 0", UserInputError),
    "lr-negative": (_class_only_sets(lr=-0.01), r"lr must be a positive number, got -0.01", UserInputError),
    # models: missing, corrupt, not diffusers, not a UNet, NaN, pickle
    "model-missing-weights": (_missing_weights, r"has no weights", UserInputError),
    "model-truncated-safetensors": (_truncated_safetensors, r"diffusion_pytorch_model\.safetensors are truncated or corrupt",
                                    UserInputError),
    "model-dir-with-random-pt": (_random_pt_dir, r"not a diffusers model directory.*model\.pt, a pickle checkpoint",
                                 UserInputError),
    "model-config-not-a-unet": (_config_not_a_unet, r"needs a UNet2DModel, .* is not a diffusers model config",
                                UserInputError),
    "model-weights-do-not-match-config": (_weights_do_not_match_config, r"cannot load the UNet of model directory .*size mismatch for conv_in\.weight",
                                          UserInputError),
    "model-nan-weights": (_nan_weights, r"non-finite weights: mid_block\.resnets\.0\.conv1\.weight holds 1 NaN/Inf",
                          UserInputError),
    "model-pickle-only-dir": (_pickle_only_dir, r"holds only pickle weights .*save_pretrained\(.*safe_serialization=True\).*--trust-pickle",
                              UserInputError),
    "model-pickle-file": (_pt_file, r"unet\.ckpt is a pickle file .*safe_serialization=True.*--trust-pickle",
                          UserInputError),
    # config file, output directory
    "config-file-unknown-key": (_config_file_unknown_key, r"unknown config key 'learning_rate'", UserInputError),
    "out-parent-is-a-file": (_out_parent_is_a_file, r"cannot create output directory .*a-file is a file", UserInputError),
    "out-is-a-file": (_out_is_a_file, r"output path .*out exists and is a file", UserInputError),
}

_FLAGS = {"model": "--model", "forget": "--forget", "retain": "--retain", "method": "--method", "steps": "--steps",
          "batch_size": "--batch-size", "lr": "--lr", "out_dir": "--out", "device": "--device",
          "attention": "--attention", "scope": "--scope", "lambda_rule": "--lambda-rule"}


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture
def case_setup(request, tiny_model_dir, tmp_path, monkeypatch):
    build, message, error = CASES[request.param]
    outs = tmp_path / "outs"  # the output's folder: nothing may appear in it
    outs.mkdir()
    ctx = Ctx(model=tiny_model_dir, tmp=tmp_path / "inputs", outs=outs)
    ctx.tmp.mkdir()
    spec = build(ctx)
    for key, value in spec.env.items():
        monkeypatch.setenv(key, value)
    kwargs = {"model": str(tiny_model_dir), "forget": "class:0", "steps": 1, "batch_size": 2,
              "out_dir": str(outs / "out"), "evaluate": False, "progress": False, "device": "cpu", **spec.kwargs}
    argv = ["run", "--no-eval", "--quiet"]
    for key, value in kwargs.items():
        if key in _FLAGS:
            argv += [_FLAGS[key], str(value)]
    return spec, kwargs, argv + spec.argv, message, error, outs


def _no_output(outs: Path, before: list[str]) -> None:
    assert _listing(outs) == before, f"output left behind: {sorted(set(_listing(outs)) - set(before))}"


@pytest.mark.parametrize("case_setup", list(CASES), indirect=True)
def test_python_raises_a_specific_error(case_setup, monkeypatch):
    spec, kwargs, _, message, error, outs = case_setup
    before = _listing(outs)
    # A bad input must fail before any step runs.
    monkeypatch.setattr("fastunlearn.engine.train", _no_training)
    with pytest.raises(error, match=f"(?s){message}") as info:
        if spec.python is not None:
            spec.python(kwargs)
        else:
            fastunlearn.run(**kwargs)
    assert isinstance(info.value, UserInputError)
    _no_output(outs, before)


@pytest.mark.parametrize("case_setup", list(CASES), indirect=True)
def test_cli_exits_2_with_one_line(case_setup, capsys, monkeypatch):
    _, _, argv, message, _, outs = case_setup
    before = _listing(outs)
    monkeypatch.setattr("fastunlearn.engine.train", _no_training)
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in captured.err and err.count("\n") == 0, captured.err
    assert err.startswith("fastunlearn: error: "), err
    assert re.search(message, err, re.S), (message, err)
    _no_output(outs, before)


def _no_training(*args, **kwargs):
    raise AssertionError("a bad input reached the training loop")


def test_cases_cover_the_issue():
    assert len(CASES) >= 20


def test_cli_process_one_line_no_traceback(tiny_model_dir, tmp_path):
    """The real process (warnings, logging and all): one line on stderr, exit code 2, no output."""
    nan_dir = _nan_weights(Ctx(model=tiny_model_dir, tmp=tmp_path, outs=tmp_path / "outs")).kwargs["model"]
    proc = subprocess.run(
        [sys.executable, "-m", "fastunlearn", "run", "--model", nan_dir, "--steps", "1", "--no-eval", "--quiet",
         "--out", str(tmp_path / "outs" / "out")],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastunlearn: error: ") and "non-finite weights" in lines[0], proc.stderr
    assert not (tmp_path / "outs").exists()


# ---------------------------------------------------------------------- safe loading
def test_pickle_dir_loads_with_the_trust_flag(tiny_model_dir, tmp_path):
    from fastunlearn.models.ddpm import load_adapter

    d = _pickle_only_dir(Ctx(model=tiny_model_dir, tmp=tmp_path, outs=tmp_path / "outs")).kwargs["model"]
    with pytest.raises(UserInputError, match="holds only pickle weights"):
        load_adapter(d)
    adapter = load_adapter(d, trust_pickle=True)
    reference = load_adapter(tiny_model_dir)
    for (name, a), b in zip(adapter.unet.state_dict().items(), reference.unet.state_dict().values()):
        assert torch.equal(a, b), name
    out = tmp_path / "outs" / "out"
    result = fastunlearn.run(model=d, steps=1, batch_size=2, out_dir=out, evaluate=False, progress=False,
                             device="cpu", trust_pickle=True)
    assert (result.out_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()  # written back safe
    assert main(["run", "--model", d, "--steps", "1", "--batch-size", "2", "--no-eval", "--quiet", "--device", "cpu",
                 "--trust-pickle", "--out", str(tmp_path / "outs" / "cli")]) == 0


def test_pickled_module_file_loads_only_with_the_trust_flag(tiny_model_dir, tmp_path):
    from diffusers import UNet2DModel

    from fastunlearn.models.ddpm import load_adapter

    path = tmp_path / "whole-unet.pt"
    torch.save(UNet2DModel.from_pretrained(tiny_model_dir, subfolder="unet"), path)
    with pytest.raises(UserInputError, match="is a pickle file"):
        load_adapter(path)
    assert load_adapter(path, trust_pickle=True).image_shape == (1, 16, 16)
    state_only = _pt_file(Ctx(model=tiny_model_dir, tmp=tmp_path, outs=tmp_path / "outs")).kwargs["model"]
    with pytest.raises(UserInputError, match="holds a (Ordered)?[Dd]ict, not a UNet2DModel.*state dict"):
        load_adapter(state_only, trust_pickle=True)


def test_hub_load_asks_for_safetensors(tiny_model_dir, monkeypatch):
    from diffusers import DDPMScheduler, UNet2DModel

    from fastunlearn.models.ddpm import load_adapter

    seen = []
    real_unet, real_sched = UNet2DModel.from_pretrained, DDPMScheduler.from_pretrained

    def unet(repo_id, subfolder=None, **kw):
        seen.append(kw.get("use_safetensors"))
        return real_unet(tiny_model_dir, subfolder=subfolder)

    monkeypatch.setattr(UNet2DModel, "from_pretrained", unet)
    monkeypatch.setattr(DDPMScheduler, "from_pretrained", lambda repo_id, subfolder=None, **kw: real_sched(
        tiny_model_dir, subfolder=subfolder))
    load_adapter("someone/ddpm")
    load_adapter("someone/ddpm", trust_pickle=True)
    assert seen == [True, None]


def test_engine_checkpoints_load_with_weights_only(tiny_model_dir, tmp_path):
    """A real run's checkpoint (model, Adam state, EMA, every RNG, fingerprint) is plain data."""
    from fastunlearn.api import _partial_dir, run_config
    from fastunlearn.engine import checkpoint as ckpt

    out = tmp_path / "out"
    cfg = UnlearnConfig.from_dict(dict(model=str(tiny_model_dir), steps=2, batch_size=2, out_dir=str(out),
                                       evaluate=False, progress=False, device="cpu", checkpoint_every=1,
                                       options={"ema_decay": 0.9}))

    def stop(step):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_config(cfg, on_step=stop)
    path = ckpt.latest_checkpoint(_partial_dir(out) / "checkpoints")
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["step"] == 2 and state["method"]["ema"] is not None
    assert ckpt.load_checkpoint(path)["rng"]["numpy"][0] == "MT19937"


def test_a_pickle_checkpoint_is_refused(tmp_path):
    from fastunlearn.engine import checkpoint as ckpt

    import argparse

    path = ckpt.checkpoint_path(tmp_path, 1)
    # Anything that is not plain data (here an argparse.Namespace): weights_only refuses to build it.
    torch.save({"step": 1, "x": argparse.Namespace(a=1)}, path)
    with pytest.raises(UserInputError, match="safely"):
        ckpt.load_checkpoint(path)


def test_a_failed_run_without_checkpoints_leaves_nothing(tiny_model_dir, tmp_path):
    """A crash mid-training with nothing to resume from removes its partial dir; with a checkpoint it stays."""
    from fastunlearn.api import _partial_dir, run_config

    out = tmp_path / "outs" / "out"

    def crash(step):
        raise RuntimeError("killed")

    cfg = dict(model=str(tiny_model_dir), steps=2, batch_size=2, out_dir=str(out), evaluate=False, progress=False,
               device="cpu")
    with pytest.raises(RuntimeError, match="killed"):
        run_config(UnlearnConfig.from_dict(cfg), on_step=crash)
    assert _listing(tmp_path / "outs") == []
    with pytest.raises(RuntimeError, match="killed"):
        run_config(UnlearnConfig.from_dict({**cfg, "checkpoint_every": 1}), on_step=crash)
    assert (_partial_dir(out) / "checkpoints").is_dir()
