"""Safe loading: what a model directory or file must be before any weights are read.

Weights load only from safetensors: a pickle (``.bin``, ``.pt``, ``.ckpt``, ...) can run code when loaded, so it
is refused with the lines that convert it once in a session the user trusts, unless ``trust_pickle``. A
truncated safetensors file, a config that is not the model class the adapter expects, and NaN/Inf weights are
refused too, each as a :class:`fastunlearn.errors.UserInputError` naming the file or tensor. The checks are the
adapters' shared gate (``models/ddpm.py`` uses them today).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from fastunlearn.errors import UserInputError

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

#: Files that hold pickled weights: loading them runs whatever code the pickle names.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_SAFE_WEIGHTS = "diffusion_pytorch_model.safetensors"
_PICKLE_WEIGHTS = "diffusion_pytorch_model.bin"


def _convert_hint(unet_dir: Path) -> str:
    """The few lines that turn a trusted pickle UNet directory into safetensors (one line each, ``;``-ended
    so the CLI's one-line message is still valid Python)."""
    return (
        "Convert it once, in a Python session you trust:\n"
        "    from diffusers import UNet2DModel;\n"
        f"    unet = UNet2DModel.from_pretrained('{unet_dir}', use_safetensors=False);\n"
        f"    unet.save_pretrained('{unet_dir}', safe_serialization=True);\n"
        "or, if you trust the file, pass --trust-pickle (trust_pickle=True)."
    )


def _state_dict_snippet(path: Path) -> str:
    return (
        "Convert it once, in a Python session you trust (from the config of the architecture it was trained "
        "with):\n"
        "    import torch; from diffusers import UNet2DModel;\n"
        f"    unet = UNet2DModel.from_config(UNet2DModel.load_config('CONFIG_DIR')); unet.load_state_dict(torch.load('{path}'));\n"
        "    unet.save_pretrained('MODEL_DIR/unet', safe_serialization=True);\n"
        "then pass --model MODEL_DIR."
    )


def _pickle_file_hint(path: Path) -> str:
    return (
        f"{path} is a pickle file ({path.suffix}): loading it can run arbitrary code, and it carries no model "
        "config, so fastunlearn loads models only from diffusers directories with safetensors weights. "
        + _state_dict_snippet(path)
        + " A file holding a whole pickled UNet2DModel or DDPMPipeline loads directly with --trust-pickle "
        "(trust_pickle=True), if you trust it."
    )


def _check_unet_dir(unet_dir: Path, ref: str, trust_pickle: bool = False) -> None:
    config = unet_dir / "config.json"
    if not config.is_file():
        pickles = sorted(p.name for p in unet_dir.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES) \
            if unet_dir.is_dir() else []
        extra = (f"; it holds {pickles[0]}, a pickle checkpoint: "
                 f"{_pickle_file_hint(unet_dir / pickles[0])}") if pickles else ""
        raise UserInputError(
            f"{ref} is not a diffusers model directory: expected model_index.json with unet/ and scheduler/, "
            f"or a UNet2DModel directory with config.json{extra}"
        )
    try:
        described = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{config} is not valid JSON: {exc}") from None
    class_name = described.get("_class_name") if isinstance(described, dict) else None
    if class_name != "UNet2DModel":
        what = f"describes {class_name!r}" if class_name else "is not a diffusers model config (no _class_name)"
        raise UserInputError(f"{ref}: the DDPM adapter needs a UNet2DModel, but {config} {what}")
    if (unet_dir / _SAFE_WEIGHTS).is_file():
        _check_safetensors(unet_dir / _SAFE_WEIGHTS)
        return
    if (unet_dir / _PICKLE_WEIGHTS).is_file():
        if not trust_pickle:
            raise UserInputError(
                f"model directory {unet_dir} holds only pickle weights ({_PICKLE_WEIGHTS}): loading a pickle "
                f"can run arbitrary code, so fastunlearn loads only {_SAFE_WEIGHTS}. " + _convert_hint(unet_dir)
            )
        return
    raise UserInputError(
        f"model directory {unet_dir} has no weights: expected {' or '.join(_WEIGHT_FILES)} next to config.json"
    )


def _check_safetensors(path: Path) -> None:
    """Open the header (cheap: no tensor is read): a truncated or corrupt file fails here, by name."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
    except (SafetensorError, OSError) as exc:
        raise UserInputError(
            f"model weights {path} are truncated or corrupt ({exc}); re-download or re-save the model"
        ) from None


def first_non_finite(module: torch.nn.Module) -> tuple[str, int, int] | None:
    """(name, count of NaN/Inf values, numel) of the first floating-point tensor of ``module``'s state that
    holds a NaN/Inf; None when every weight is finite."""
    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name, int((~torch.isfinite(tensor)).sum()), tensor.numel()
    return None


def refuse_non_finite(unet: torch.nn.Module, ref: str) -> None:
    """Refuse a model whose weights hold NaN/Inf, naming the first bad tensor (unlearning cannot fix it,
    and every loss and metric downstream would be NaN)."""
    found = first_non_finite(unet)
    if found is not None:
        name, bad, numel = found
        raise UserInputError(
            f"{ref} has non-finite weights: {name} holds {bad} NaN/Inf value(s) of {numel}; "
            "this model cannot be unlearned (retrain or re-export it)"
        )
