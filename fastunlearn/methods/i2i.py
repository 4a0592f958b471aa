"""Image-to-image generator unlearning — Li, Hsu, Chen & Marculescu, "Machine Unlearning for Image-to-Image
Generative Models" (ICLR 2024): make a model that completes masked images (an inpainter, a masked autoencoder)
unable to complete the forget set, by training its ENCODER only, the decoder frozen.

    min_θ  L_R(θ) + α · L_F(θ)
    L_R(θ) = E_{x_r}     ‖E_θ(T(x_r)) − E_θ₀(T(x_r))‖²
    L_F(θ) = E_{x_f, n}  ‖E_θ(T(x_f)) − E_θ₀(T(n))‖²

- ``E_θ`` the trained encoder (:meth:`~fastunlearn.models.i2i.I2IAdapter.encode`: one flat row of features per
  image, ‖·‖² the mean over rows and features — per feature map on the inpainter, see the adapter), ``E_θ₀`` the
  frozen ORIGINAL encoder (:meth:`~fastunlearn.models.i2i.I2IAdapter.frozen_encoder`: a copy of the encoder
  modules alone, taken at :meth:`setup`; the decoder is never copied), ``T`` the model's mask transform (its
  mask, e.g. ``center:8``), ``x_f`` the forget images, ``x_r`` the retain images — the real retained classes, or
  a proxy that shares none of the model's data (``--retain proxy:mnist``: the paper's finding is that the
  method does not need the real retain set);
- ``n`` a noise IMAGE, passed through the same ``T`` as ``x_f`` — the target is the original encoder's encoding of
  noise, a bounded stand-in for "no information" (the paper's derivation: the KL divergence to the noise
  distribution is bounded by this L2). Option ``noise``:

  - ``palette``: n ~ N(0, 1) on every pixel — the forget image replaced wholly, as T(n) reads (the mask
    transform of a noise image), in the distribution Palette fills its masks with. On the inpainter the noise's
    visible pixels reach the encoder through the masked image, its hole through x_t;
  - ``mage``: n ~ N(mean(x_f), std(x_f)) per image (over all its pixels and channels, ``torch.std``), clamped
    to [-1, 1] — the authors' MAGE setting;
  - ``hole``: N(0, 1) in the hole only, the forget image's own pixels around it. The encoder then still sees
    the forget image's visible pixels (which carry its class), so this is the weaker target; it exists to
    measure that reading of "N(0, 1) inside the mask". Inpainter only (a masked autoencoder never sees the
    hole, so the target would be the forget image's own encoding);
  - ``auto`` (the default): ``palette`` on the inpainter, ``mage`` on the masked autoencoder — the paper's
    setting for each (Palette: N(0, 1); MAGE: N(mean, std) clamped).

  On the inpainter every encoding takes a timestep and noise (t, ε) per row (its input is a noised image); the
  noise image's encoding uses the SAME (t, ε) as its forget row, so the target differs from the student's input
  only by the image.
- α weighs the forget term (``alpha``; the paper's Eq. 10 puts α on L_F). Default per architecture, the
  authors': 0.2 on the masked autoencoder (their MAGE), 0.1 on the inpainter (their Palette).

**One pass.** Forget rows then retain rows go through ONE forward of the live encoder and one of the frozen
encoder (inputs [x_f; x_r] and [n; x_r] with the same (t, ε) rows), and ONE call of the fused
:func:`~fastunlearn.ops.dual_noise_loss` gives (L_F, L_R) — the op's contract is exactly this: prediction vs
target over two row groups. Only the encoder's parameters are in the optimizer and require gradients (scope
``encoder``, the only one this method accepts): the decoder is not run at all, gets no gradient, and its weights
stay bitwise as they were. The authors' loop deep-copies the whole model as the teacher, encodes the same batch
several times per step and hands every parameter, decoder included, to the optimizer (and the all-reduce);
``benchmarks/bench_i2i.py`` measures the difference.

**Randomness** (the step's generator; every draw for the whole global batch, so a run is the same on any number of
processes and resumes exactly): the forget rows' (t, ε) (:meth:`~fastunlearn.models.i2i.I2IAdapter.encoder_noise`;
nothing on the masked autoencoder), then the noise images ``[N_f, C, H, W]``, then the retain rows' (t, ε).

The paper's baselines under the same API and the same encoder-only plumbing (``max_loss``, ``noisy_label``,
``retain_label``, ``random_encoder``) are in :mod:`fastunlearn.methods.i2i_baselines`; what is shared (checks,
options, draws, the retain term) is :class:`I2IMethod` here. Flat gradients, Adam, clip, EMA and the
checkpoint state come from :class:`~fastunlearn.methods.gradient.GradientMethod`; the teacher is rebuilt from the
adapter at setup, which the engine calls before it loads a checkpoint's weights, so a resumed run's teacher is
θ₀ too.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fastunlearn.errors import UserInputError
from fastunlearn.methods.base import Batch, MethodConfig, register
from fastunlearn.methods.gradient import GradientMethod, check_common
from fastunlearn.ops import dual_noise_loss

#: Noise images of the forget target (see the module docstring).
NOISES = ("auto", "palette", "mage", "hole")
#: α when none is given, per architecture (the authors': MAGE 0.2, Palette 0.1).
DEFAULT_ALPHA = {"mae": 0.2, "inpaint": 0.1}
#: The noise ``auto`` stands for, per architecture.
DEFAULT_NOISE = {"mae": "mage", "inpaint": "palette"}
#: The one parameter scope these methods train.
SCOPE = "encoder"
#: Steps, batch (forget rows and retain rows per step) and Adam's lr per architecture (None: a model whose
#: architecture cannot be read). Measured with ``fastunlearn run --model zoo:digits-X --method i2i --forget
#: class:0,1,2,3,4`` (35 held-out test images per class, DDIM-10 completions; forget-class completions judged
#: their class by the shipped CNN, before 96.0 % (MAE) / 95.4 % (inpainter); retained classes 89.7 % / 88.0 %):
#:
#: - masked autoencoder, α 0.2 (fp32): 200 steps at lr 1e-4 → forget 52.6 %; 1,000 at 3e-4 → 29.7 %, retained
#:   89.7 %; 1,500 at 3e-4 (the default) → 25.7 %, retained 90.9 %, 114 s of training; α 0.1 with 1,200 steps →
#:   31.4 %. With ``--retain proxy:mnist`` the retained classes lose 4.6–6.8 points at every setting tried
#:   (800–1,500 steps, α 0.1–0.3, 32 or 64 rows, noise mage or palette; 1,500 steps: forget 33.1 %): README,
#:   "Image-to-image unlearning".
#: - inpainter: every setting tried lies on one trade-off — it forgets only as far as it also loses retained
#:   classes (α 0.1: 200 steps at 1e-4 → 94.3 %; 1,000 at 1e-3 → 93.7 %, retained 87.4 %; α 1, 1,000 at 1e-3 →
#:   69.1 %, retained 79.4 %; α 1, 2,000 at 3e-4 → 81.7 %, 82.3 %; lr 5e-3 → 73.7 %, 76.0 %); the default is
#:   the setting that forgets most while the retained classes lose ≤ 3 points. Why: README, "Image-to-image
#:   unlearning".
DEFAULTS: dict[str | None, dict[str, Any]] = {
    "mae": {"steps": 1500, "batch_size": 32, "lr": 3e-4},
    "inpaint": {"steps": 1000, "batch_size": 32, "lr": 1e-3},
    None: {"steps": 1000, "batch_size": 32, "lr": 3e-4},
}


def noise_images(x: torch.Tensor, kind: str, generator: torch.Generator, mask: Any = None) -> torch.Tensor:
    """The noise image n of each row of ``x`` (``[N, C, H, W]``, CPU float32), from one draw z ~ N(0, I) of
    ``x``'s shape made on the CPU from ``generator``:

    - ``palette``: z;
    - ``mage``: clamp(mean(x_i) + std(x_i) · z_i, −1, 1), mean and ``torch.std`` over each image's pixels and
      channels;
    - ``hole``: z in ``mask``'s hole (a :class:`~fastunlearn.models.masks.Mask`), ``x`` elsewhere.
    """
    x = x.detach().to(device="cpu", dtype=torch.float32)
    z = torch.randn(x.shape, generator=generator, dtype=torch.float32)
    if kind == "palette":
        return z
    if kind == "mage":
        flat = x.flatten(1)
        shape = (-1,) + (1,) * (x.dim() - 1)
        return (flat.mean(1).view(shape) + flat.std(1).view(shape) * z).clamp(-1.0, 1.0)
    if kind == "hole":
        if mask is None:
            raise ValueError("noise 'hole' needs the mask")
        return mask.paste(z, x)
    raise ValueError(f"unknown noise {kind!r}; expected one of {', '.join(NOISES[1:])}")


def _number(value: Any, key: str, method: str) -> float | None:
    """An option given as a number or (the CLI) a string of one; None stays None."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserInputError(f"{method} option {key!r} must be a number, got {value!r}") from None


@dataclass(frozen=True)
class I2ICommonOptions:
    """Options every image-to-image method shares (``--option key=value`` or ``run(..., key=value)``)."""

    _method: ClassVar[str] = "i2i"
    #: weight α of the forget term; None: the authors' value for the architecture (:data:`DEFAULT_ALPHA`: 0.2 on a
    #: masked autoencoder, 0.1 on an inpainter), resolved at setup and recorded in config.yaml
    alpha: float | None = None
    grad_clip: float = 0.0  #: max global gradient norm (≤ 0 disables; the authors do not clip)
    ema_decay: float = 0.0  #: EMA of the weights (0 disables); the saved model is the EMA when on
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", _number(self.alpha, "alpha", self._method))

    def validate(self) -> None:
        name = self._method
        if self.alpha is not None and not self.alpha >= 0:
            raise UserInputError(f"{name} alpha must be >= 0, got {self.alpha}")
        for key in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise UserInputError(f"{name} {key} must be in [0, 1), got {getattr(self, key)}")
        check_common(name, self.grad_clip, self.ema_decay)


@dataclass(frozen=True)
class I2INoiseOptions(I2ICommonOptions):
    """The shared options plus the forget target's noise image."""

    #: noise image of the forget target: ``palette`` (N(0, 1)), ``mage`` (N(mean, std) per image, clamped),
    #: ``hole`` (N(0, 1) in the hole only; inpainter) or ``auto`` (palette on an inpainter, mage on a masked
    #: autoencoder), resolved at setup
    noise: str = "auto"

    def validate(self) -> None:
        super().validate()
        if self.noise not in NOISES:
            raise UserInputError(f"unknown {self._method} noise {self.noise!r}; expected one of {', '.join(NOISES)}")


@dataclass(frozen=True)
class I2IOptions(I2INoiseOptions):
    """The ``i2i`` method's options."""

    _method: ClassVar[str] = "i2i"


class I2IMethod(GradientMethod):
    """What the image-to-image methods share: the checks, the resolved options, the frozen encoder (θ₀), the
    step's draws and the retain term L_R. A subclass writes :meth:`step`."""

    Options: ClassVar[type] = I2IOptions
    #: trains on the forget and retain images themselves
    needs_images: ClassVar[bool] = True
    needs_retain: ClassVar[bool] = True

    @staticmethod
    def defaults(unconditional: bool = False, options: dict[str, Any] | None = None,
                 family: str = "i2i", model: Any = None) -> dict[str, Any]:
        """Run defaults per architecture (:data:`DEFAULTS`, read from the model's ``fastunlearn.json``; every
        image-to-image method shares them, so a table of methods differs in the forget term alone), scope
        ``encoder``. The authors train for epochs over 100 images per class of ImageNet / Places-365 at ViT-B /
        Palette scale; these were measured on the embedded 16×16 digits models on a 2-core CPU, forgetting
        classes 0–4 (what was tried: :data:`DEFAULTS`)."""
        from fastunlearn.models.i2i import arch_of_ref

        values = DEFAULTS.get(arch_of_ref(model) or "", DEFAULTS[None])
        return {**values, "scope": SCOPE}

    @staticmethod
    def fsdp_unsupported(options: Any) -> str | None:
        return "the frozen teacher is a whole copy of the encoder on every process (use --sharding ddp)"

    # ------------------------------------------------------------------ setup
    def setup(self, adapter: Any, config: MethodConfig) -> None:
        name = self.name
        if getattr(adapter, "family", "ddpm") != "i2i" or not hasattr(adapter, "frozen_encoder"):
            raise UserInputError(f"{name} unlearns an image-to-image model (an inpainter or a masked autoencoder, "
                                 f"e.g. zoo:digits-inpaint); this is a {getattr(adapter, 'family', 'ddpm')} model: "
                                 "use erasediff, salun or another method for it")
        if config.scope != SCOPE:
            raise UserInputError(f"{name} trains the encoder only (the decoder stays frozen, as in the paper): "
                                 f"--scope must be {SCOPE}, got {config.scope!r}")
        opts = self.resolve(config.options, adapter.arch)
        config = dataclasses.replace(config, options=opts)
        self.mask = adapter.mask
        # θ₀'s encoder, copied before any step (a resumed run's setup still sees θ₀: the engine loads the
        # checkpoint's weights after setup).
        self.teacher = adapter.frozen_encoder()
        self.setup_params(adapter, config)

    def resolve(self, opts: Any, arch: str) -> Any:
        """``opts`` with ``alpha`` None and ``noise`` auto replaced by the architecture's values (and checked)."""
        changes: dict[str, Any] = {}
        if opts.alpha is None:
            changes["alpha"] = DEFAULT_ALPHA[arch]
        noise = getattr(opts, "noise", None)
        if noise == "auto":
            changes["noise"] = noise = DEFAULT_NOISE[arch]
        if noise == "hole" and arch != "inpaint":
            raise UserInputError(f"{self.name} noise 'hole' keeps the forget image's visible pixels and puts noise in "
                                 "the hole, which a masked autoencoder's encoder never sees (the target would be the "
                                 "forget image's own encoding): use noise=mage or palette")
        return dataclasses.replace(opts, **changes) if changes else opts

    # ------------------------------------------------------------------ the step's pieces
    def check(self, forget_batch: Batch, retain_batch: Batch) -> None:
        """A :class:`UserInputError` naming the side whose images do not fit the model."""
        self.adapter.check_images(forget_batch.images, "forget images")
        self.adapter.check_images(retain_batch.images, "retain images")

    def draw(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """This process's rows of ``batch`` and the (t, ε) of their encoding (drawn for the whole global batch)."""
        t, eps = self.adapter.encoder_noise(batch.images.shape[0], batch.generator, rows=batch.rows)
        return batch.local(batch.images), t, eps

    def noise_rows(self, batch: Batch) -> torch.Tensor:
        """The noise image of each of this process's forget rows (drawn for the whole global batch)."""
        return batch.local(noise_images(batch.images, self.opts.noise, batch.generator, self.mask))

    def retain_loss(self, x_r: torch.Tensor, t_r: torch.Tensor | None, e_r: torch.Tensor | None) -> torch.Tensor:
        """L_R = mean((E_θ(T(x_r)) − E_θ₀(T(x_r)))²) over rows and features (its own forward)."""
        pred = self.adapter.encode(x_r, None, t_r, e_r)
        target = self.teacher.encode(x_r, None, t_r, e_r)
        return dual_noise_loss(pred, target.to(pred.dtype), 0)[1]

    def finish(self, loss_f: torch.Tensor, loss_r: torch.Tensor, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        self.backward(loss)
        return {"loss_forget": loss_f.detach(), "loss_retain": loss_r.detach(), **self.apply_update()}


def cat(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    """Rows of ``a`` then ``b``; None when the encoding draws nothing (the masked autoencoder)."""
    return None if a is None else torch.cat([a, b])


@register("i2i")
class I2I(I2IMethod):
    """The paper's update: ONE encoder forward over [forget; retain] rows, one frozen-encoder forward over
    [noise images; retain rows] with the same draws, one fused loss (formulas: the module docstring)."""

    Options: ClassVar[type] = I2IOptions

    def step(self, forget_batch: Batch, retain_batch: Batch) -> dict[str, torch.Tensor]:
        self.check(forget_batch, retain_batch)
        x_f, t_f, e_f = self.draw(forget_batch)
        noise = self.noise_rows(forget_batch)
        x_r, t_r, e_r = self.draw(retain_batch)
        t, eps = cat(t_f, t_r), cat(e_f, e_r)
        pred = self.adapter.encode(torch.cat([x_f, x_r]), None, t, eps)
        target = self.teacher.encode(torch.cat([noise, x_r]), None, t, eps)
        loss_f, loss_r = dual_noise_loss(pred, target.to(pred.dtype), x_f.shape[0])
        return self.finish(loss_f, loss_r, loss_r + self.opts.alpha * loss_f)


__all__ = ["I2I", "I2IMethod", "I2IOptions", "I2ICommonOptions", "I2INoiseOptions", "noise_images", "NOISES",
           "DEFAULT_ALPHA", "DEFAULT_NOISE"]
