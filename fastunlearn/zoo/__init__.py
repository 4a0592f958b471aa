"""The model zoo: small models the project trains itself and ships inside the package.

The build and test machines have no internet, so the default run needs weights that come
with the code. Each model lives in ``fastunlearn/zoo/models/<name>/`` in its library's format
(diffusers; transformers for ``digits-mae``; image-to-image models with their ``fastunlearn.json``)
with a ``training.json`` recording how ``python -m fastunlearn.zoo.train <name>`` made it.

References: ``"zoo:digits-ddpm"`` or the bare name ``"digits-ddpm"``.
"""

from __future__ import annotations

from pathlib import Path

from fastunlearn.data.errors import DataError

MODELS_DIR = Path(__file__).resolve().parent / "models"
ZOO_PREFIX = "zoo:"

#: Shipped models and what they are, in the order ``available()`` lists them.
DESCRIPTIONS: dict[str, str] = {
    "digits-ddpm": "class-conditional DDPM (UNet2DModel, 16×16 grey digits, label 10 = unconditional)",
    "digits-classifier": "CNN judge for 16×16 digits (logits over 10 classes, penultimate features)",
    "digits-svm": "second, independent judge: RBF-kernel SVM on the raw 16×16 pixels (scores over 10 classes)",
    "digits-t2i": "text-to-image latent diffusion in the Stable Diffusion layout (MiniLM text encoder, VAE 16×16 ↔ "
                  "8×8×4, UNet2DConditionModel): 'a handwritten digit seven' → a 16×16 grey digit",
    "digits-inpaint": "image-to-image: Palette-style diffusion inpainter (UNet2DModel on [x_t, masked image, mask], "
                      "DDIM) completing the centre 8×8 of a 16×16 digit",
    "digits-mae": "image-to-image: masked autoencoder (ViTMAEForPreTraining, 4×4 patches, norm_pix_loss=False) "
                  "completing the centre 8×8 of a 16×16 digit",
}
#: Models whose shipped directory is not the loadable one: it is assembled on first use (see :mod:`fastunlearn.zoo.t2i`).
ASSEMBLED = ("digits-t2i",)


class ZooError(DataError):
    """A zoo reference names no shipped model, or the model's files are missing."""


def available() -> dict[str, str]:
    """Names of the shipped models whose directory is present, with a one-line description."""
    return {
        name: desc for name, desc in DESCRIPTIONS.items()
        if (MODELS_DIR / name / "training.json").is_file()
    }


def is_zoo_ref(ref: str) -> bool:
    """Whether ``ref`` names a zoo model (``"zoo:NAME"`` or a bare shipped name)."""
    return isinstance(ref, str) and (ref.startswith(ZOO_PREFIX) or ref in DESCRIPTIONS)


def resolve(name_or_ref: str) -> Path:
    """The directory of a shipped model, from ``"zoo:NAME"`` or ``"NAME"``.

    Raises:
        ZooError: the name is unknown (the message lists what exists) or its files are
            missing (a source checkout without the trained weights).
    """
    name = name_or_ref[len(ZOO_PREFIX):] if name_or_ref.startswith(ZOO_PREFIX) else name_or_ref
    if name not in DESCRIPTIONS:
        listing = ", ".join(f"zoo:{n}" for n in DESCRIPTIONS)
        raise ZooError(f"unknown zoo model {name_or_ref!r}: the zoo has {listing}")
    path = MODELS_DIR / name
    if not (path / "training.json").is_file():
        raise ZooError(
            f"zoo model {name!r} is not present at {path}: "
            f"train it with `python -m fastunlearn.zoo.train {name}`"
        )
    if name in ASSEMBLED:
        from fastunlearn.zoo import t2i

        return t2i.assemble(path)
    return path


def load_classifier(name: str = "digits-classifier", device: str | None = None):
    """The shipped digits judge (a :class:`~fastunlearn.zoo.classifier.DigitsClassifier`), in eval mode."""
    from fastunlearn.zoo.classifier import DigitsClassifier

    # low_cpu_mem_usage=False: the default path wants `accelerate` and warns without it.
    model = DigitsClassifier.from_pretrained(resolve(name), low_cpu_mem_usage=False).eval()
    if device is not None:
        model = model.to(device)
    return model


def load_svm(name: str = "digits-svm", device: str | None = None):
    """The shipped second digits judge (a :class:`~fastunlearn.zoo.svm.DigitsSVM`), in eval mode."""
    from fastunlearn.zoo.svm import DigitsSVM

    model = DigitsSVM.from_pretrained(resolve(name)).eval()
    if device is not None:
        model = model.to(device)
    return model


def load_unet(name: str = "digits-ddpm", device: str | None = None):
    """The UNet of a shipped DDPM (``UNet2DModel``), in eval mode."""
    from diffusers import UNet2DModel

    model = UNet2DModel.from_pretrained(resolve(name), subfolder="unet", low_cpu_mem_usage=False).eval()
    if device is not None:
        model = model.to(device)
    return model


__all__ = [
    "MODELS_DIR", "ZooError", "available", "is_zoo_ref", "resolve", "load_classifier", "load_svm", "load_unet",
]
