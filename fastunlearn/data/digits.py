"""The embedded data set: UCI hand-written digits, as shipped inside scikit-learn.

The build and test machines have no internet, so the default data must come with an
installed package. ``sklearn.datasets.load_digits`` holds 1,797 grey-scale 8×8 digits
(pixel values 0–16, 10 classes) inside the wheel: nothing is downloaded.

Preprocessing (fixed, so the shipped models and every user see the same images):

1. scale 0–16 to [-1, 1] (``x / 8 - 1``), the range diffusion models are trained in;
2. bilinear resize 8×8 → 12×12 (``align_corners=False``), which smooths the blocky
   originals so a UNet with two down-sampling stages has something to work with;
3. pad 2 px of background (-1) on every side → 16×16, so the digit stays centred and a
   few pixels of shift augmentation never cut strokes off.

The split is stratified by class and seeded (:data:`SPLIT_SEED`, :data:`TEST_FRACTION`),
so "train" and "test" are the same 1,437 / 360 images on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

#: Seed of the stratified train/test split. Changing it changes which images the shipped
#: models were trained on, so it is part of the zoo's recorded training config.
SPLIT_SEED: int = 20240105
#: Fraction of each class held out for the test split (the rest is the train split).
TEST_FRACTION: float = 0.2
#: Side of the 8×8 originals after the bilinear resize, before padding.
RESIZED_SIDE: int = 12
#: Background pixels added on each side after resizing.
PAD: int = 2
#: Final image side: ``RESIZED_SIDE + 2 * PAD``.
IMAGE_SIDE: int = RESIZED_SIDE + 2 * PAD
#: Number of digit classes.
NUM_CLASSES: int = 10
#: Total number of images in ``load_digits``.
NUM_IMAGES: int = 1797

SPLITS = ("train", "test", "all")


@dataclass(frozen=True)
class DigitsData:
    """A set of preprocessed digits.

    Attributes:
        images: float32 ``[N, 1, 16, 16]`` in [-1, 1], background -1.
        labels: int64 ``[N]`` digit classes 0–9.
        indices: int64 ``[N]`` positions in the original 1,797-image ``load_digits`` order,
            so any subset can be traced back to the source data.
    """

    images: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, mask_or_index: torch.Tensor) -> "DigitsData":
        """Rows selected by a boolean mask or an index tensor (positions in this set)."""
        return DigitsData(
            self.images[mask_or_index], self.labels[mask_or_index], self.indices[mask_or_index]
        )


def preprocess(raw: np.ndarray) -> torch.Tensor:
    """Turn ``load_digits`` pixel rows (``[N, 64]`` or ``[N, 8, 8]``, 0–16) into ``[N,1,16,16]``.

    Exposed so that the exact transform of the shipped models is reusable (e.g. by tests).
    """
    x = torch.as_tensor(np.asarray(raw, dtype=np.float32)).reshape(-1, 1, 8, 8)
    x = x / 8.0 - 1.0
    x = F.interpolate(x, size=(RESIZED_SIDE, RESIZED_SIDE), mode="bilinear", align_corners=False)
    x = F.pad(x, (PAD, PAD, PAD, PAD), value=-1.0)
    return x.clamp_(-1.0, 1.0).contiguous()


def _stratified_test_mask(labels: np.ndarray) -> np.ndarray:
    """Per class, mark ``round(TEST_FRACTION * n_class)`` seeded-random images as test.

    Done with numpy rather than scikit-learn's splitter so the split depends only on
    numpy's documented ``default_rng`` stream, not on a library's internal algorithm.
    """
    rng = np.random.default_rng(SPLIT_SEED)
    test = np.zeros(labels.shape[0], dtype=bool)
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        n_test = int(round(TEST_FRACTION * members.size))
        test[rng.permutation(members)[:n_test]] = True
    return test


@lru_cache(maxsize=1)
def _load_all() -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = preprocess(bunch.data)
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    test_mask = _stratified_test_mask(np.asarray(bunch.target))
    return images, labels, test_mask


def load_digits_split(split: str = "train") -> DigitsData:
    """The preprocessed digits of one split: ``"train"`` (≈80%), ``"test"`` (≈20%) or ``"all"``.

    Returns fresh tensors each call (callers may modify them in place).

    Raises:
        ValueError: for an unknown split name.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}: expected one of {', '.join(SPLITS)}")
    images, labels, test_mask = _load_all()
    if split == "all":
        keep = np.ones_like(test_mask)
    else:
        keep = test_mask if split == "test" else ~test_mask
    idx = torch.as_tensor(np.flatnonzero(keep), dtype=torch.long)
    return DigitsData(images[idx].clone(), labels[idx].clone(), idx)
