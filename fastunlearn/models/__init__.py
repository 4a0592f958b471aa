"""Adapters over diffusers models: the one interface methods use (see docs/architecture.md).

- :mod:`fastunlearn.models.ddpm` — :class:`DDPMAdapter` over ``UNet2DModel`` + ``DDPMScheduler`` (pixel DDPMs);
- :mod:`fastunlearn.models.t2i` — :class:`T2IAdapter` over a ``StableDiffusionPipeline``'s components
  (text-to-image; conditioning by prompt ids into the adapter's prompt table);
- :mod:`fastunlearn.models.i2i` — :class:`~fastunlearn.models.i2i.InpaintAdapter` (Palette-style ``UNet2DModel``
  inpainter) and :class:`~fastunlearn.models.i2i.MAEAdapter` (``ViTMAEForPreTraining``): image-to-image models
  split into encoder and decoder, completing masked images (:mod:`fastunlearn.models.masks`);
- :mod:`fastunlearn.models.sampling` — the DDIM evaluation sampler;
- :mod:`fastunlearn.models.tiny_sd` — tiny random SD pipelines built offline (tests, benchmarks).

:func:`load_model` is the one entry point: it reads what a reference is (zoo name, directory, hub id, object)
and returns the adapter of its family.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fastunlearn.models.ddpm import DDPMAdapter, NoisedBatch, load_adapter

#: The model families and their adapters' ``family`` names.
FAMILIES = ("ddpm", "t2i", "i2i")


def family_of(adapter: Any) -> str:
    """``"ddpm"``, ``"t2i"`` or ``"i2i"``: the model family an adapter serves."""
    return getattr(adapter, "family", "ddpm")


def family_of_ref(model: Any) -> str:
    """The family of a model reference without loading its weights (reads ``model_index.json`` and
    ``fastunlearn.json`` only): ``"i2i"`` for an image-to-image model (a directory or zoo model whose sidecar says
    so, a ``ViTMAEForPreTraining``), ``"t2i"`` for a text-to-image pipeline (a zoo model, a directory, a pipeline
    object, a hub id naming Stable Diffusion), else ``"ddpm"``."""
    from fastunlearn.models import i2i, t2i

    if hasattr(model, "family"):
        return model.family
    if type(model).__name__.startswith("StableDiffusion"):
        return "t2i"
    if type(model).__name__ == "ViTMAEForPreTraining":
        return "i2i"
    if isinstance(model, (str, Path)):
        ref = str(model)
        from fastunlearn import zoo

        if zoo.is_zoo_ref(ref):
            try:
                path = zoo.resolve(ref)
            except Exception:  # noqa: BLE001 - a missing zoo model is load_model's error to report
                return "ddpm"
            return "i2i" if i2i.is_i2i_dir(path) else "t2i" if t2i.is_t2i_dir(path) else "ddpm"
        path = Path(ref).expanduser()
        if path.is_dir():
            return "i2i" if i2i.is_i2i_dir(path) else "t2i" if t2i.is_t2i_dir(path) else "ddpm"
        if not path.exists() and "stable-diffusion" in ref.lower():
            return "t2i"
    return "ddpm"


def load_model(model: Any, trust_pickle: bool = False) -> Any:
    """The adapter of any model reference: an adapter, a ``StableDiffusionPipeline``, ``ViTMAEForPreTraining`` or
    DDPM object, ``zoo:NAME``, a local directory (a ``fastunlearn.json`` saying ``"adapter": "i2i"`` is
    image-to-image; a ``model_index.json`` naming a text encoder is text-to-image; anything else goes to the
    DDPM loader) or a hub id (tried as a Stable Diffusion pipeline when its name says so, else as a DDPM)."""
    from fastunlearn.models import i2i, t2i

    if isinstance(model, (DDPMAdapter, t2i.T2IAdapter, i2i.I2IAdapter)):
        return model
    if type(model).__name__.startswith("StableDiffusion"):
        return t2i.from_pipeline(model)
    if type(model).__name__ == "ViTMAEForPreTraining":
        return i2i.MAEAdapter(model)
    if isinstance(model, (str, Path)):
        ref = str(model)
        from fastunlearn import zoo

        if zoo.is_zoo_ref(ref):
            path = zoo.resolve(ref)
            if i2i.is_i2i_dir(path):
                return i2i.load_i2i(path, trust_pickle=trust_pickle)
            if t2i.is_t2i_dir(path):
                return t2i.load_t2i(path)
            return load_adapter(ref, trust_pickle=trust_pickle)
        path = Path(ref).expanduser()
        if path.is_dir() and i2i.is_i2i_dir(path):
            return i2i.load_i2i(path, trust_pickle=trust_pickle)
        if path.is_dir() and t2i.is_t2i_dir(path):
            return t2i.load_t2i(path, trust_pickle=trust_pickle)
        if (not path.exists() and ref.count("/") == 1 and not ref.startswith((".", "/", "~"))
                and "stable-diffusion" in ref.lower()):
            return t2i.load_t2i(ref, trust_pickle=trust_pickle)
    return load_adapter(model, trust_pickle=trust_pickle)


__all__ = ["DDPMAdapter", "NoisedBatch", "load_adapter", "load_model", "family_of", "family_of_ref", "FAMILIES"]
