"""The baselines of Li et al. (ICLR 2024, "Machine Unlearning for Image-to-Image Generative Models"), under the
``i2i`` method's API and plumbing: each trains the ENCODER only (scope ``encoder``; the decoder gets no gradient
and keeps its weights bitwise), and each keeps the retained images with the same term as ``i2i``,

    loss = L_R + α · L_F(baseline),   L_R = mean ‖E_θ(T(x_r)) − E_θ₀(T(x_r))‖²

so a table of the five methods differs in the forget term alone. The paper describes the baselines, each adapted
from another task, as (its Section 5):

- ``max_loss`` — "maximizes the training loss w.r.t. the ground truth images on the forget set":
  L_F = −L_gen(x_f), L_gen the generator's own training loss (the inpainter's ε-MSE over the hole at a random
  (t, ε), the masked autoencoder's pixel MSE over the hole; :meth:`~fastunlearn.models.i2i.I2IAdapter.training_pair`),
  i.e. gradient ascent through the frozen decoder. Unbounded below: the paper's point is that it destroys the
  model rather than forgets.
- ``noisy_label`` — "minimizes the training loss by setting the Gaussian noise as the ground truth images for the
  forget set": L_F = L_gen(x̃_f) with x̃_f = the forget image whose hole holds the noise image n (``noise``: the
  ``i2i`` method's noise images, ``palette`` N(0, 1) or ``mage`` N(mean, std) clamped): the model is trained to
  complete a forget image's visible pixels with noise.
- ``retain_label`` — "minimizes the training loss by setting the retain samples as the ground truth for the forget
  set": x̃_f = the forget image whose hole holds a retain image's hole (one retain row of the step drawn uniformly
  per forget row): a forget image's visible pixels are to be completed as some retained image.
- ``random_encoder`` — "minimizes the L2 loss between the Gaussian noise and the embedding vectors of the forget
  set": L_F = mean ‖E_θ(T(x_f)) − z‖², z ~ N(0, I) in each feature map's own units (flattened like the
  encoding, :meth:`~fastunlearn.models.i2i.I2IAdapter.flatten_features`) — the encoding pulled to noise itself,
  where ``i2i`` pulls it to the original encoder's encoding of a noise image.

L_gen is the MSE over the hole: the mean of the (pred − target)² terms of ``training_pair`` (zero outside the hole)
times H·W / |hole|. ``max_loss``, ``noisy_label`` and ``retain_label`` run the whole model on the forget rows (the
decoder's activations carry the gradient to the encoder) and the encoder alone on the retain rows: two student
forwards and the frozen encoder on the retain rows. ``random_encoder`` runs ONE student forward over
[forget; retain] rows and one fused :func:`~fastunlearn.ops.dual_noise_loss` call, like ``i2i``.

Where this follows what: the four definitions are the paper's; its authors' code (github.com/jpmorganchase/
l2l-generator-unlearning) was not reachable from here, so two choices are ours and stated: the retain term is
``i2i``'s L_R (the comparison isolates the forget term), and α defaults, as for ``i2i``, to 0.2 on a masked
autoencoder and 0.1 on an inpainter.

Randomness (the step's generator, every draw for the whole global batch): the forget rows' (t, ε); then
``noisy_label``'s noise images or ``retain_label``'s retain row per forget row; then the retain rows' (t, ε); then
(``random_encoder``, after its forward) z, map by map ``[N_f, *map]``.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch

from fastunlearn.errors import UserInputError
from fastunlearn.methods.base import Batch, register
from fastunlearn.methods.i2i import I2ICommonOptions, I2IMethod, I2INoiseOptions, cat
from fastunlearn.ops import dual_noise_loss


@dataclass(frozen=True)
class MaxLossOptions(I2ICommonOptions):
    """``max_loss``'s options."""

    _method: ClassVar[str] = "max_loss"


@dataclass(frozen=True)
class NoisyLabelOptions(I2INoiseOptions):
    """``noisy_label``'s options (``noise``: the noise images that become the hole's ground truth)."""

    _method: ClassVar[str] = "noisy_label"

    def validate(self) -> None:
        super().validate()
        if self.noise == "hole":
            raise UserInputError("noisy_label already puts the noise image in the hole (the forget image's pixels "
                                 "around it): use noise=palette, mage or auto")


@dataclass(frozen=True)
class RetainLabelOptions(I2ICommonOptions):
    """``retain_label``'s options."""

    _method: ClassVar[str] = "retain_label"


@dataclass(frozen=True)
class RandomEncoderOptions(I2ICommonOptions):
    """``random_encoder``'s options."""

    _method: ClassVar[str] = "random_encoder"


class _GeneratorLossBaseline(I2IMethod, abc.ABC):
    """A baseline whose forget term is the generator's own training loss on relabelled forget images."""

    sign: ClassVar[float] = 1.0  #: +1 minimises L_gen on the relabelled images, −1 maximises it

    @abc.abstractmethod
    def ground_truth(self, forget_batch: Batch, retain_batch: Batch) -> torch.Tensor:
        """This process's forget rows as the generator is to complete them (drawn for the whole global batch)."""

    def generator_loss(self, x: torch.Tensor, t: torch.Tensor | None, eps: torch.Tensor | None) -> torch.Tensor:
        """The MSE over the hole of the generator's training loss on ``x`` (gradients reach the encoder only)."""
        pred, target = self.adapter.training_pair(x, None, t, eps)
        _, h, w = self.adapter.image_shape
        return dual_noise_loss(pred, target.to(pred.dtype), pred.shape[0])[0] * (h * w / self.mask.hole_pixels)

    def step(self, forget_batch: Batch, retain_batch: Batch) -> dict[str, torch.Tensor]:
        self.check(forget_batch, retain_batch)
        _, t_f, e_f = self.draw(forget_batch)
        truth = self.ground_truth(forget_batch, retain_batch)
        x_r, t_r, e_r = self.draw(retain_batch)
        loss_f = self.generator_loss(truth, t_f, e_f)
        loss_r = self.retain_loss(x_r, t_r, e_r)
        return self.finish(loss_f, loss_r, loss_r + self.sign * self.opts.alpha * loss_f)


@register("max_loss")
class MaxLoss(_GeneratorLossBaseline):
    """Gradient ascent on the generator's training loss of the forget images (the module docstring)."""

    Options: ClassVar[type] = MaxLossOptions
    sign: ClassVar[float] = -1.0

    def ground_truth(self, forget_batch: Batch, retain_batch: Batch) -> torch.Tensor:
        return forget_batch.local(forget_batch.images)


@register("noisy_label")
class NoisyLabel(_GeneratorLossBaseline):
    """The generator trained to fill a forget image's hole with a noise image (the module docstring)."""

    Options: ClassVar[type] = NoisyLabelOptions

    def ground_truth(self, forget_batch: Batch, retain_batch: Batch) -> torch.Tensor:
        x_f = forget_batch.images.detach().to(device="cpu", dtype=torch.float32)
        noise = self.noise_rows(forget_batch)
        return self.mask.paste(noise, forget_batch.local(x_f))


@register("retain_label")
class RetainLabel(_GeneratorLossBaseline):
    """The generator trained to fill a forget image's hole with a retain image's (the module docstring)."""

    Options: ClassVar[type] = RetainLabelOptions

    def ground_truth(self, forget_batch: Batch, retain_batch: Batch) -> torch.Tensor:
        x_f = forget_batch.images.detach().to(device="cpu", dtype=torch.float32)
        pick = torch.randint(0, retain_batch.images.shape[0], (x_f.shape[0],), generator=forget_batch.generator)
        donors = retain_batch.images.detach().to(device="cpu", dtype=torch.float32)[pick]
        return forget_batch.local(self.mask.paste(donors, x_f))


@register("random_encoder")
class RandomEncoder(I2IMethod):
    """The forget rows' encoding pulled to Gaussian noise in feature space (the module docstring)."""

    Options: ClassVar[type] = RandomEncoderOptions

    def step(self, forget_batch: Batch, retain_batch: Batch) -> dict[str, torch.Tensor]:
        self.check(forget_batch, retain_batch)
        x_f, t_f, e_f = self.draw(forget_batch)
        x_r, t_r, e_r = self.draw(retain_batch)
        features = self.adapter.encoder_features(torch.cat([x_f, x_r]), None, cat(t_f, t_r), cat(e_f, e_r))
        pred = self.adapter.flatten_features(features)
        n_f, total = x_f.shape[0], forget_batch.images.shape[0]
        z = [forget_batch.local(torch.randn((total, *f.shape[1:]), generator=forget_batch.generator))
             for f in features]
        z = self.adapter.flatten_features(z).to(device=pred.device)
        target_r = self.teacher.encode(x_r, None, t_r, e_r)
        target = torch.cat([z, target_r.to(z.device)]).to(pred.dtype)
        loss_f, loss_r = dual_noise_loss(pred, target, n_f)
        return self.finish(loss_f, loss_r, loss_r + self.opts.alpha * loss_f)


__all__ = ["MaxLoss", "NoisyLabel", "RetainLabel", "RandomEncoder", "MaxLossOptions", "NoisyLabelOptions",
           "RetainLabelOptions", "RandomEncoderOptions"]
