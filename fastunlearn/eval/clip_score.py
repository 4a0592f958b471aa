"""CLIP score: how well generated images still match their prompts, by a CLIP model the user supplies.

For an image x and its prompt p, with f_I and f_T the CLIP model's projected image and text embeddings,

    CLIPScore(x, p) = 100 · max(0, cos(f_I(x), f_T(p)))

— the definition of Hessel et al. (2021) with w = 100, exactly as torchmetrics'
:class:`~torchmetrics.multimodal.clip_score.CLIPScore` computes it, so numbers are comparable with the
concept-erasing papers that quote it (ESD, AdvUnlearn, ... on ``openai/clip-vit-large-patch14``). A set's
score is the mean over its images. After erasing a concept, the score of the erased prompts' generations
should fall and that of the retained prompts' stay put.

Images go through the model's own ``CLIPImageProcessor`` (resize, centre crop, normalisation) as uint8 RGB,
as torchmetrics hands them over; grey images (one channel) are repeated to three. Prompts are tokenised by
the model's tokenizer and never truncated: a prompt longer than the text encoder's positions is a
:class:`~fastunlearn.errors.UserInputError`.

The model is a reference to a local directory or a hub id (``CLIPModel`` + its tokenizer and image processor,
``transformers``). Nothing is downloaded unless the user's own hub settings allow it; :func:`load_clip` loads a
reference once per process and keeps the last one loaded.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from fastunlearn.errors import UserInputError

#: The weight w of CLIPScore = w · max(0, cos) (Hessel et al., 2021; torchmetrics).
CLIP_SCORE_WEIGHT = 100.0

_LOADED: dict[tuple[str, str], "ClipScorer"] = {}


def _pooled(out: Any) -> torch.Tensor:
    """The projected embedding from ``get_*_features``: a tensor (transformers 4) or an output whose
    ``pooler_output`` holds it (transformers 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipScorer:
    """A ``CLIPModel`` with its tokenizer and image processor, scoring images against prompts.

    Args:
        model: a ``transformers.CLIPModel`` (eval mode is set here).
        tokenizer: its tokenizer (``CLIPTokenizer`` or fast).
        image_processor: its ``CLIPImageProcessor``.
        reference: where it came from (recorded in results), or None.
    """

    def __init__(self, model: Any, tokenizer: Any, image_processor: Any, reference: str | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.reference = reference

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_text_tokens(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    def to(self, device: torch.device | str) -> "ClipScorer":
        self.model.to(device)
        return self

    def check_prompts(self, prompts: Sequence[str]) -> None:
        """Raise a :class:`UserInputError` for a prompt the text encoder cannot take whole."""
        for p in dict.fromkeys(prompts):
            n = len(self.tokenizer(p, truncation=False).input_ids)
            if n > self.max_text_tokens:
                raise UserInputError(
                    f"prompt {p!r} is {n} tokens long but the CLIP model {self.reference or ''} takes at most "
                    f"{self.max_text_tokens}; the CLIP score never truncates a prompt: shorten it")

    @torch.inference_mode()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-norm projected text embeddings ``[P, d]`` (float32, CPU)."""
        prompts = list(prompts)
        self.check_prompts(prompts)
        tok = self.tokenizer(prompts, padding=True, return_tensors="pt")
        device = self.device
        feats = _pooled(self.model.get_text_features(input_ids=tok.input_ids.to(device),
                                                     attention_mask=tok.attention_mask.to(device)))
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu()

    @torch.inference_mode()
    def image_embeddings(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Unit-norm projected image embeddings ``[N, d]`` (float32, CPU) of images ``[N, 1|3, H, W]`` in [-1, 1]."""
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise UserInputError(f"the CLIP score needs images [N, 1|3, H, W], got shape {tuple(images.shape)}")
        device = self.device
        out = []
        for start in range(0, images.shape[0], batch_size):
            x = ((images[start:start + batch_size].detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
            x = x.to(torch.uint8)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            arrays = list(x.permute(0, 2, 3, 1).numpy())
            pixels = self.image_processor(images=arrays, return_tensors="pt",
                                          input_data_format="channels_last").pixel_values
            dtype = next(self.model.parameters()).dtype
            feats = _pooled(self.model.get_image_features(pixel_values=pixels.to(device, dtype)))
            out.append(torch.nn.functional.normalize(feats.float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, 0)

    def cosine(self, images: torch.Tensor, prompts: str | Sequence[str]) -> torch.Tensor:
        """cos(f_I(x_i), f_T(p_i)) per image ``[N]``; ``prompts``: one for all images or one per image."""
        if isinstance(prompts, str):
            prompts = [prompts] * images.shape[0]
        prompts = list(prompts)
        if len(prompts) != images.shape[0]:
            raise UserInputError(f"{len(prompts)} prompts were given for {images.shape[0]} images")
        distinct = list(dict.fromkeys(prompts))
        text = self.text_embeddings(distinct)
        rows = torch.tensor([distinct.index(p) for p in prompts], dtype=torch.long)
        return (self.image_embeddings(images) * text[rows]).sum(dim=-1)

    def scores(self, images: torch.Tensor, prompts: str | Sequence[str]) -> torch.Tensor:
        """CLIPScore per image ``[N]``: 100 · max(0, cos) (see the module docstring)."""
        return CLIP_SCORE_WEIGHT * self.cosine(images, prompts).clamp_min(0.0)

    def score(self, images: torch.Tensor, prompts: str | Sequence[str]) -> float:
        """The mean CLIPScore of ``images`` against their prompts (torchmetrics' ``CLIPScore`` value)."""
        return float(self.scores(images, prompts).mean())


def load_clip(ref: str | Path | ClipScorer, device: torch.device | str | None = None) -> ClipScorer:
    """A :class:`ClipScorer` from a local ``CLIPModel`` directory or a hub id (loaded once: the last reference
    loaded is kept), or ``ref`` itself when it already is one.

    Raises:
        UserInputError: the reference does not load as a CLIP model with its tokenizer and image processor.
    """
    if isinstance(ref, ClipScorer):
        return ref.to(device) if device is not None else ref
    path = Path(str(ref)).expanduser()
    name = str(path.resolve()) if path.is_dir() else str(ref)
    key = (name, str(device or "cpu"))
    if key in _LOADED:
        return _LOADED[key]
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = CLIPModel.from_pretrained(name)
            tokenizer = AutoTokenizer.from_pretrained(name)
            processor = CLIPImageProcessor.from_pretrained(name)
    except (OSError, ValueError, KeyError, TypeError, EnvironmentError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"directory {path}" if path.is_dir() else f"{str(ref)!r} (not a local directory; the hub lookup)"
        raise UserInputError(f"cannot load the CLIP model {where}: {first}. The CLIP score needs a CLIPModel "
                             "with its tokenizer and preprocessor_config.json (e.g. a saved "
                             "openai/clip-vit-large-patch14)") from None
    scorer = ClipScorer(model.to(device or "cpu"), tokenizer, processor, reference=str(ref))
    _LOADED.clear()
    _LOADED[key] = scorer
    return scorer


def clip_score(images: torch.Tensor, prompts: str | Sequence[str], clip: str | Path | ClipScorer) -> float:
    """The mean CLIPScore of ``images`` (``[N, 1|3, H, W]`` in [-1, 1]) against ``prompts`` (one, or one per
    image) under the CLIP model ``clip`` (a reference or a loaded :class:`ClipScorer`)."""
    return load_clip(clip).score(images, prompts)


__all__ = ["ClipScorer", "load_clip", "clip_score", "CLIP_SCORE_WEIGHT"]
