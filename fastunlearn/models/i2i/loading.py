"""Reading image-to-image model directories (``fastunlearn.json`` names the architecture): :func:`load_i2i`,
:func:`is_i2i_dir`, :func:`arch_of_ref`."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastunlearn.errors import UserInputError
from fastunlearn.models.i2i.base import ARCHS, DEFAULT_MASK, SIDECAR, I2IAdapter
from fastunlearn.models.i2i.inpaint import InpaintAdapter
from fastunlearn.models.i2i.mae import MAEAdapter, _QuietTransformers
from fastunlearn.models.masks import Mask
from fastunlearn.models.safe_loading import refuse_non_finite


def _read_sidecar(directory: Path) -> dict | None:
    f = directory / SIDECAR
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{f} is not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else None


def is_i2i_dir(directory: Path) -> bool:
    """Whether ``directory`` holds an image-to-image model (its ``fastunlearn.json`` says ``"adapter": "i2i"``)."""
    try:
        data = _read_sidecar(Path(directory)) if Path(directory).is_dir() else None
    except UserInputError:
        return False
    return bool(data) and data.get("adapter") == "i2i"


def _load_mae(directory: Path, trust_pickle: bool) -> Any:
    from transformers import ViTMAEForPreTraining

    from fastunlearn.models.safe_loading import _check_safetensors

    safe = directory / "model.safetensors"
    if safe.is_file():
        _check_safetensors(safe)
    elif not trust_pickle:
        pickles = sorted(p.name for p in directory.glob("*.bin"))
        what = (f"only pickle weights ({pickles[0]}): loading a pickle can run arbitrary code" if pickles
                else "no weights")
        raise UserInputError(f"masked-autoencoder directory {directory} has {what}; fastunlearn loads "
                             "model.safetensors (pass --trust-pickle / trust_pickle=True only for a file you trust)")
    try:
        with _QuietTransformers():
            return ViTMAEForPreTraining.from_pretrained(directory, use_safetensors=safe.is_file() or not trust_pickle)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"cannot load the masked autoencoder in {directory}: {first}") from None


def arch_of_ref(model: Any) -> str | None:
    """The architecture (``"inpaint"`` or ``"mae"``) of an image-to-image model reference — an adapter, a zoo name
    or a directory, read from its ``fastunlearn.json`` without loading weights — or None when it is not one."""
    if isinstance(model, I2IAdapter):
        return model.arch
    if not isinstance(model, (str, Path)):
        return None
    from fastunlearn import zoo

    ref = str(model)
    try:
        directory = zoo.resolve(ref) if zoo.is_zoo_ref(ref) else Path(ref).expanduser()
        data = _read_sidecar(directory) if directory.is_dir() else None
    except Exception:  # noqa: BLE001 - an unreadable reference is load_i2i's error to report
        return None
    arch = data.get("arch") if data and data.get("adapter") == "i2i" else None
    return arch if arch in ARCHS else None


def load_i2i(ref: str | Path, mask: "str | Mask | None" = None,
             trust_pickle: bool = False) -> "InpaintAdapter | MAEAdapter":
    """The adapter of a directory written by ``save_pretrained`` (or a zoo name of an image-to-image model).

    ``fastunlearn.json`` names the architecture and the model's mask; ``mask`` overrides the recorded one.
    Weights load from safetensors only unless ``trust_pickle``; NaN/Inf weights are refused.
    """
    ref = str(ref)
    from fastunlearn import zoo

    directory = zoo.resolve(ref) if zoo.is_zoo_ref(ref) else Path(ref).expanduser()
    if not directory.is_dir():
        raise UserInputError(f"image-to-image model {ref!r} is not a directory")
    data = _read_sidecar(directory)
    if not data or data.get("adapter") != "i2i":
        raise UserInputError(f"{directory} is not an image-to-image model directory: its {SIDECAR} must say "
                             '{"adapter": "i2i", "arch": "inpaint" | "mae", ...}')
    arch = data.get("arch")
    chosen = mask if mask is not None else data.get("mask", DEFAULT_MASK)
    if arch == "inpaint":
        from diffusers import DDPMScheduler

        from fastunlearn.models.ddpm import _load_unet
        from fastunlearn.models.safe_loading import _check_unet_dir

        where = f"inpainting model {directory}"
        _check_unet_dir(directory / "unet", where, trust_pickle)
        unet = _load_unet(directory / "unet", where, trust_pickle)
        refuse_non_finite(unet, where)
        sched = directory / "scheduler"
        try:
            scheduler = DDPMScheduler.from_pretrained(sched) if (sched / "scheduler_config.json").is_file() else None
        except (OSError, ValueError, TypeError) as exc:
            raise UserInputError(f"cannot read the scheduler config of {where}: {exc}") from None
        return InpaintAdapter(unet, scheduler, mask=chosen)
    if arch == "mae":
        model = _load_mae(directory, trust_pickle)
        refuse_non_finite(model, f"masked autoencoder {directory}")
        return MAEAdapter(model, mask=chosen)
    raise UserInputError(f"{directory / SIDECAR}: unknown image-to-image architecture {arch!r}; expected one of "
                         f"{', '.join(ARCHS)}")
