"""FID and KID of generations against real images, in a judge's feature space (torchmetrics).

Both distances compare two sets of feature vectors φ(x) ∈ ℝ^d of real and generated images:

- **FID** (Heusel et al., 2017) fits a Gaussian to each set, N(μ_r, Σ_r) and N(μ_g, Σ_g), and reports the
  Fréchet distance ‖μ_r − μ_g‖² + Tr(Σ_r + Σ_g − 2 (Σ_r Σ_g)^{1/2}). It is biased for small sets (the
  covariance of n < d samples is rank deficient), so compare FIDs only at equal sample counts — which is
  why every result carries ``n_real`` and ``n_fake``.
- **KID** (Bińkowski et al., 2018) is the unbiased MMD² with a cubic polynomial kernel, averaged over
  random subsets (``kid_mean``; ``kid_std`` is the spread over subsets, ``kid_subset_size`` their size).
  Unlike FID it is unbiased at small n, which suits per-class evaluation of a 16×16 digits model (≈36
  held-out images per class). The features are **L2-normalised** first and the kernel is
  k(a, b) = (aᵀb + 1)³ on unit vectors (values in [0, 8]; the judge's ReLU features make aᵀb ∈ [0, 1]).
  The paper's k(a, b) = (aᵀb / d + 1)³ is calibrated to Inception's feature scale; on the judge's unbounded
  penultimate activations it made KID scale with the sixth power of the feature norm, so that a noisy
  estimate on a few dozen images read −18.0 → −9.4. On unit vectors KID does not depend on the feature
  scale, its expectation is ≥ 0 (it is a squared distance between kernel mean embeddings) and it is 0 for
  two samples of one distribution; single estimates below 0 are sampling noise of the order of ``kid_std``.
  For scale: two different digit classes score about 9, two halves of one class within ±0.04.

Both are computed by torchmetrics' :class:`~torchmetrics.image.fid.FrechetInceptionDistance` and
:class:`~torchmetrics.image.kid.KernelInceptionDistance` with a custom feature module: for the embedded
digits default the judge's ``features()`` (the shipped classifier's 128-wide penultimate layer). A custom
module makes torchmetrics skip its uint8/``normalize`` conversion and hand the images over as given, so
they are fed as float32 in [-1, 1] — the range the digits judge was trained on.

An Inception-v3 FID (the number papers quote) is computed only when the caller passes a *local* weight
file (``inception_weights=PATH``, the FID-compatible ``pt_inception-2015-12-05`` weights of
torch-fidelity); nothing is ever downloaded.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fastunlearn.errors import UserInputError


class JudgeFeatures(nn.Module):
    """A judge's ``features(x)`` as a torchmetrics feature extractor (never leaves eval mode).

    Args:
        judge: a module with ``features(x) -> [N, d]`` (e.g. the zoo's digits classifier).
        num_features: ``d``; inferred from one forward pass on ``example`` when not given.
    """

    def __init__(self, judge: nn.Module, example: torch.Tensor | None = None, num_features: int | None = None):
        super().__init__()
        if not callable(getattr(judge, "features", None)):
            raise UserInputError(f"the FID/KID judge needs a features(x) method; {type(judge).__name__} has none")
        self.judge = judge.eval()
        if num_features is None:
            if example is None:
                raise ValueError("JudgeFeatures needs num_features or an example image batch")
            num_features = int(self.forward(example[:1]).shape[-1])
        self.num_features = int(num_features)

    def train(self, mode: bool = True) -> "JudgeFeatures":  # BatchNorm/Dropout must stay in eval mode
        return super().train(False)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = next(self.judge.parameters()).device
        return self.judge.features(x.to(device=device, dtype=torch.float32)).float().flatten(1)


class InceptionFeatures(nn.Module):
    """torch-fidelity's FID Inception-v3 (2048-d pool features) from a local weight file.

    Takes images in [-1, 1] with 1 or 3 channels, converts them to the uint8 RGB the network expects
    (grey repeated to 3 channels) and returns ``[N, 2048]`` features.
    """

    def __init__(self, weights: str | Path):
        super().__init__()
        path = Path(weights).expanduser()
        if not path.is_file():
            raise UserInputError(f"Inception weight file {path} does not exist (nothing is downloaded; pass a local file)")
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3
        except ImportError as exc:  # pragma: no cover - torchmetrics is a dependency
            raise UserInputError(f"Inception FID needs torchmetrics: {exc}") from None
        try:
            self.net = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
        except ModuleNotFoundError:
            raise UserInputError("Inception FID needs the torch-fidelity package (`pip install torch-fidelity`)") from None
        self.num_features = 2048

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.net(x).reshape(x.shape[0], -1).float()


class UnitFeatures(nn.Module):
    """Another feature module's output, L2-normalised per row (the KID feature space; see the module docstring)."""

    def __init__(self, features: nn.Module):
        super().__init__()
        self.features = features
        self.num_features = int(getattr(features, "num_features"))

    def train(self, mode: bool = True) -> "UnitFeatures":
        return super().train(False)

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(self.features(x).double(), dim=1, eps=1e-12).float()


#: KID's kernel on unit feature vectors: k(a, b) = (gamma · aᵀb + coef)^degree.
KID_KERNEL = {"degree": 3, "gamma": 1.0, "coef": 1.0}


def _features_module(judge: nn.Module | None, inception_weights: str | Path | None, example: torch.Tensor) -> nn.Module:
    if inception_weights is not None:
        return InceptionFeatures(inception_weights)
    if judge is None:
        raise UserInputError("FID/KID needs a judge with features(x) or an Inception weight file")
    return JudgeFeatures(judge, example=example)


def fid_kid(
    real_images: torch.Tensor,
    fake_images: torch.Tensor,
    judge: nn.Module | None,
    batch_size: int = 256,
    kid_subset_size: int | None = None,
    kid_subsets: int = 100,
    seed: int = 0,
    inception_weights: str | Path | None = None,
) -> dict[str, Any]:
    """FID and KID between ``real_images`` and ``fake_images`` (``[N, C, H, W]`` in [-1, 1]).

    Args:
        judge: the feature space (a module with ``features``); ignored when ``inception_weights`` is given.
        batch_size: images per feature-extractor call.
        kid_subset_size: images per KID subset; default ``min(1000, n_real, n_fake)`` (torchmetrics
            requires it to be at most both counts).
        kid_subsets: number of random subsets KID averages over.
        seed: seed of KID's subset draws (the global RNG is restored afterwards), so results reproduce.
        inception_weights: a local torch-fidelity Inception weight file; switches the feature space.

    Returns:
        ``fid``, ``kid_mean``, ``kid_std`` (over subsets), ``kid_subset_size``, ``kid_subsets``, ``kid_kernel``,
        ``n_real``, ``n_fake``, ``feature_space`` (``"judge:<Class>"`` or ``"inception-v3:<file>"``).
    """
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n_real, n_fake = int(real_images.shape[0]), int(fake_images.shape[0])
    if n_real < 2 or n_fake < 2:
        raise ValueError(f"FID/KID need at least 2 real and 2 generated images, got {n_real} and {n_fake}")
    feats = _features_module(judge, inception_weights, real_images)
    subset = min(1000, n_real, n_fake) if kid_subset_size is None else int(kid_subset_size)
    # sync_on_compute=False: the images are this process's whole set. Under torchrun process 0 evaluates alone,
    # and torchmetrics would otherwise gather from every process (and wait forever for the others).
    fid = FrechetInceptionDistance(feature=feats, reset_real_features=True, sync_on_compute=False)
    with warnings.catch_warnings():  # "KID keeps all features in memory": a few thousand 128-d rows here
        warnings.simplefilter("ignore", UserWarning)
        kid = KernelInceptionDistance(feature=UnitFeatures(feats), subsets=kid_subsets, subset_size=subset,
                                      sync_on_compute=False, **KID_KERNEL)
    for images, real in ((real_images, True), (fake_images, False)):
        for start in range(0, images.shape[0], batch_size):
            chunk = images[start : start + batch_size].detach().float().cpu()
            fid.update(chunk, real=real)
            kid.update(chunk, real=real)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        kid_mean, kid_std = kid.compute()
    space = (f"inception-v3:{Path(inception_weights).name}" if inception_weights is not None
             else f"judge:{type(judge).__name__}")
    return {"fid": float(fid.compute()), "kid_mean": float(kid_mean), "kid_std": float(kid_std),
            "kid_subset_size": subset, "kid_subsets": int(kid_subsets),
            "kid_kernel": "(a.b + 1)^3 on L2-normalised features",
            "n_real": n_real, "n_fake": n_fake, "feature_space": space}


def per_class_fid(
    real_by_class: Mapping[int, torch.Tensor],
    fake_by_class: Mapping[int, torch.Tensor],
    judge: nn.Module | None,
    classes: Sequence[int] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`fid_kid` per class and over the union of ``classes`` (default: every class in both maps).

    For unlearning, pass the *retained* classes: their FID measures the collateral damage to what the
    model should still draw (the forgotten class's FID is meant to grow and is not a utility measure).

    Returns:
        ``{"classes": [...], "by_class": {c: fid_kid(...)}, "overall": fid_kid(all real, all fake)}``.
    """
    if classes is None:
        classes = [c for c in real_by_class if c in fake_by_class]
    classes = [int(c) for c in classes]
    missing = [c for c in classes if c not in real_by_class or c not in fake_by_class]
    if missing:
        raise ValueError(f"per_class_fid: no real or no generated images for classes {missing}")
    if not classes:
        raise ValueError("per_class_fid needs at least one class")
    by_class = {c: fid_kid(real_by_class[c], fake_by_class[c], judge, **kwargs) for c in classes}
    overall = fid_kid(torch.cat([real_by_class[c] for c in classes]),
                      torch.cat([fake_by_class[c] for c in classes]), judge, **kwargs)
    return {"classes": classes, "by_class": by_class, "overall": overall}


def digits_real_by_class(split: str = "test", classes: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
    """Real digits of one split grouped by class (the held-out ``test`` split by default): the FID reference."""
    from fastunlearn.data.digits import load_digits_split

    data = load_digits_split(split)
    wanted = sorted(set(data.labels.tolist())) if classes is None else [int(c) for c in classes]
    return {c: data.images[data.labels == c] for c in wanted}


__all__ = ["fid_kid", "per_class_fid", "digits_real_by_class", "JudgeFeatures", "InceptionFeatures", "UnitFeatures",
           "KID_KERNEL"]
