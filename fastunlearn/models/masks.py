"""Mask transforms of image-to-image models: which pixels a model generates and which it is given.

A mask is written as a short string, ``KIND:K``:

- ``center:K`` — a K×K hole in the middle of the image (the inpainting of Li et al., ICLR 2024: the model
  generates the centre from the ring around it);
- ``outpaint:K`` — the centre K×K pixels are kept, everything around them is generated.

:func:`parse_mask` turns a spec into a :class:`Mask` for one image size. Its tensor is 1 on the pixels to
generate (the *hole*) and 0 on the pixels the model is given, the convention of Palette's ``mask`` (Saharia et
al., 2022). :meth:`Mask.apply` gives the *masked image* a model is conditioned on: the known pixels as they are
and :data:`FILL` (0, mid-grey in the [-1, 1] image space) in the hole — a fixed value rather than Palette's
Gaussian fill, so the conditioning is a deterministic function of the image (the mask channel tells the model
where the hole is).

Rules (each broken one is a :class:`~fastunlearn.errors.UserInputError` that says what to write instead):

- K ≥ 1 and K ≤ the shorter image side; the hole may not be the whole image (``center:16`` on 16×16 leaves
  nothing to complete from, ``outpaint:16`` nothing to generate);
- the K×K square must sit exactly in the middle: (H − K) and (W − K) even. ``center:7`` on a 16×16 image cannot
  be centred, and fastunlearn does not shift it by half a pixel: choose an even K (or an odd K on odd sides);
- non-square images are accepted: the square sits in the middle of the H×W image.

:func:`patch_tiles` is the check a patch model (the masked autoencoder) needs on top: the hole must be a union
of whole p×p patches, since a patch is either seen or generated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from fastunlearn.errors import UserInputError

#: Mask kinds and what they generate.
KINDS = {"center": "a K×K hole in the middle is generated", "outpaint": "the centre K×K is kept, the rest generated"}
#: The value the hole holds in a masked image (:meth:`Mask.apply`), in the [-1, 1] image space.
FILL = 0.0


@dataclass(frozen=True)
class Mask:
    """A mask transform for images of one size (build it with :func:`parse_mask`).

    Attributes:
        kind: ``"center"`` or ``"outpaint"``.
        size: K, the side of the centre square.
        height, width: the image size it applies to.
    """

    kind: str
    size: int
    height: int
    width: int

    @property
    def spec(self) -> str:
        """The string this mask was parsed from (canonical form), e.g. ``"center:8"``."""
        return f"{self.kind}:{self.size}"

    def __str__(self) -> str:
        return self.spec

    @property
    def box(self) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` of the centre K×K square (bottom/right exclusive)."""
        top, left = (self.height - self.size) // 2, (self.width - self.size) // 2
        return top, left, top + self.size, left + self.size

    def hole(self) -> torch.Tensor:
        """Bool ``[H, W]``: True on the pixels to generate."""
        top, left, bottom, right = self.box
        square = torch.zeros(self.height, self.width, dtype=torch.bool)
        square[top:bottom, left:right] = True
        return square if self.kind == "center" else ~square

    @property
    def hole_pixels(self) -> int:
        """Number of pixels to generate per channel."""
        inner = self.size * self.size
        return inner if self.kind == "center" else self.height * self.width - inner

    def tensor(self, n: int = 1, device: torch.device | str | None = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``[n, 1, H, W]`` of {0, 1}: 1 on the pixels to generate, 0 on the pixels given."""
        return self.hole().to(device=device, dtype=dtype).expand(n, 1, self.height, self.width)

    def check(self, images: torch.Tensor, what: str = "images") -> None:
        """Raise a :class:`UserInputError` unless ``images`` are ``[N, C, H, W]`` of this mask's size."""
        if images.dim() != 4 or tuple(images.shape[2:]) != (self.height, self.width):
            got = "×".join(str(s) for s in images.shape[2:]) if images.dim() == 4 else f"shape {tuple(images.shape)}"
            raise UserInputError(f"{what} do not fit mask {self.spec}: it was made for {self.height}×{self.width} "
                                 f"images (height×width), got {got}")

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The masked image ``x ⊙ (1 − m) + FILL · m``: the known pixels of ``x`` ([N, C, H, W]) exactly, the hole
        set to :data:`FILL` (0), in ``x``'s dtype and device."""
        self.check(x)
        m = self.hole().to(x.device)
        return x.masked_fill(m, FILL)

    def paste(self, generated: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        """``generated`` in the hole, ``known`` elsewhere (bitwise: a completion keeps the given pixels exactly)."""
        self.check(known)
        return torch.where(self.hole().to(known.device), generated.to(known.dtype), known)


def parse_mask(spec: "str | Mask", image_shape: Sequence[int]) -> Mask:
    """A :class:`Mask` from ``"center:K"`` / ``"outpaint:K"`` for images of ``image_shape`` (``(C, H, W)`` or
    ``(H, W)``). A :class:`Mask` is checked against the shape and returned as it is. Every mistake in the spec is
    a :class:`UserInputError` naming what would work."""
    if len(image_shape) not in (2, 3):
        raise UserInputError(f"image_shape must be (C, H, W) or (H, W), got {tuple(image_shape)}")
    height, width = (int(s) for s in tuple(image_shape)[-2:])
    if isinstance(spec, Mask):
        if (spec.height, spec.width) != (height, width):
            raise UserInputError(f"mask {spec.spec} was made for {spec.height}×{spec.width} images, but the images are "
                                 f"{height}×{width}")
        return spec
    if not isinstance(spec, str):
        raise UserInputError(f"a mask is a string such as 'center:8' or 'outpaint:8', got {type(spec).__name__}")
    kinds = ", ".join(f"{k}:K ({v})" for k, v in KINDS.items())
    kind, sep, k = spec.strip().partition(":")
    kind, k = kind.strip().lower(), k.strip()
    if not sep or kind not in KINDS:
        raise UserInputError(f"unknown mask {spec!r}: expected one of {kinds}, e.g. 'center:{height // 2}'")
    try:
        size = int(k)
    except ValueError:
        raise UserInputError(f"mask {spec!r}: K must be a whole number of pixels, "
                             f"e.g. '{kind}:{height // 2}'") from None
    if size <= 0:
        raise UserInputError(f"mask {spec!r}: K must be at least 1 pixel, got {size}")
    if size > min(height, width):
        raise UserInputError(f"mask {spec!r} is larger than the images: a {size}×{size} square does not fit in "
                             f"{height}×{width} (height×width); K can be at most {min(height, width)}")
    if size == height and size == width:
        what = "nothing is left to complete from" if kind == "center" else "nothing is left to generate"
        raise UserInputError(f"mask {spec!r} covers the whole {height}×{width} image: {what}; use K < {height}")
    odd = [name for name, side in (("height", height), ("width", width)) if (side - size) % 2]
    if odd:
        side = height if odd[0] == "height" else width
        fits = [c for c in (size - 1, size + 1) if 1 <= c <= min(height, width) and (height - c) % 2 == 0
                and (width - c) % 2 == 0 and not (c == height and c == width)]
        hint = f"; use K = {' or '.join(map(str, fits))}" if fits else ""
        raise UserInputError(f"mask {spec!r} cannot sit in the middle of the image: {side} − {size} pixels of "
                             f"{odd[0]} do not split evenly on both sides (fastunlearn does not shift a mask by half "
                             f"a pixel){hint}")
    return Mask(kind=kind, size=size, height=height, width=width)


def patch_tiles(mask: Mask, patch: int) -> torch.Tensor:
    """Bool ``[(H/p)·(W/p)]`` in raster order (the order of a ViT's patch sequence): True for the patches in the
    hole. Raises a :class:`UserInputError` naming the patch size when the hole is not a union of whole p×p
    patches (or the image does not divide into them)."""
    patch = int(patch)
    if mask.height % patch or mask.width % patch:
        raise UserInputError(f"{mask.height}×{mask.width} images do not divide into {patch}×{patch} patches")
    hole = mask.hole()
    grid = hole.reshape(mask.height // patch, patch, mask.width // patch, patch).permute(0, 2, 1, 3)
    grid = grid.reshape(grid.shape[0] * grid.shape[1], patch * patch)
    tiles = grid.all(dim=1)
    if not torch.equal(tiles, grid.any(dim=1)):
        top, left, _, _ = mask.box
        fits = [k for k in range(patch, min(mask.height, mask.width), patch)
                if ((mask.height - k) // 2) % patch == 0 and ((mask.width - k) // 2) % patch == 0
                and (mask.height - k) % 2 == 0 and (mask.width - k) % 2 == 0]
        hint = f"; masks that tile: {', '.join(f'{mask.kind}:{k}' for k in fits)}" if fits else ""
        raise UserInputError(f"mask {mask.spec} does not tile into the model's {patch}×{patch} patches: its square "
                             f"starts at pixel ({top}, {left}) and is {mask.size} wide, so some patches would be half "
                             f"seen and half generated (the hole must be a union of whole patches){hint}")
    return tiles


def as_mask(mask: "str | Mask | None", image_shape: Sequence[int], default: Mask | None = None) -> Mask:
    """``mask`` parsed for ``image_shape``, or ``default`` when it is None (an adapter's own mask)."""
    if mask is None:
        if default is None:
            raise UserInputError("no mask was given and the model records none: pass one, e.g. 'center:8'")
        return default
    return parse_mask(mask, image_shape)


__all__ = ["Mask", "parse_mask", "patch_tiles", "as_mask", "KINDS", "FILL"]
