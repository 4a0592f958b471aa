"""BASELINE for benchmarks only — the authors' image-to-image unlearning step (Li, Hsu, Chen & Marculescu, "Machine
Unlearning for Image-to-Image Generative Models", ICLR 2024), re-implemented over fastunlearn's image-to-image
adapters. Never used by the library.

Written from the authors' two forks (the MAGE one: ``main_unlearn.py`` + ``engine_unlearn.py``; the Palette one:
``unlearn.py`` + ``models/network.py`` + ``models/model.py``, the ``fix_decoder`` path; described in
``../shared/METHODS.md``), not copied, keeping what makes their step cost what it costs, since that cost is what
``bench_i2i.py`` compares against. Both forks share the set-up:

- the teacher is ``copy.deepcopy`` of the WHOLE model (MAGE: ``teacher_model = copy.deepcopy(model)``, its VQGAN
  tokenizer and decoder included; Palette: ``teacher_denoise_fn = copy.deepcopy(denoise_fn)``, the whole UNet) —
  here :meth:`~fastunlearn.models.i2i.I2IAdapter.scratch_copy`, the adapter's deep copy of the whole model;
- the optimizer holds EVERY parameter of the model, the decoder's included (MAGE: AdamW over timm's
  ``add_weight_decay(model)`` groups, gradient clipping over ``model.parameters()``, DDP with
  ``find_unused_parameters=True``; Palette: Adam over ``filter(requires_grad, netG.parameters())``). The decoder
  never runs in the unlearning step, so its parameters get no gradient: the optimizer, ``zero_grad`` and the
  all-reduce walk them for nothing;
- one mixed batch of forget and retain rows, told apart by a ±1 label per row (their loader shuffles both sets
  together), every loss term computed over ALL rows and the other side's rows weighted to zero.

One step of each fork, on B rows of which N_f forget (label −1) and N_r retain (+1):

- ``mage`` (their MAGE loop, the masked autoencoder's): the student encodes the batch (``latent``); WITHOUT
  gradients the teacher encodes the batch (``guide``, every row — the forget rows' guide is discarded) and encodes a
  noise image of EVERY row (``mis_guide`` — the retain rows' is discarded): **three encodes of B rows**, against the
  library's two. Loss: per map ``retain = mean_rows((1 + label) · mean_feat((latent − guide)²))``, ``forget =
  mean_rows((1 − label) · mean_feat((latent − mis_guide)²))``, summed over maps (the MAE has one), loss = retain +
  α · forget; ``loss.item()`` (their finiteness check), backward, optimizer step, ``retain.item()`` and
  ``forget.item()`` (their metric logger). With N_f = N_r this is exactly the library's L_R + α L_F.
- ``palette`` (their Palette loop, the inpainter's): WITHOUT gradients the teacher encodes the batch with every
  forget row's image replaced by its noise image (``teacher_feat``, one pass), the student encodes the batch
  (``noise_hat``): **two encodes of B rows**, as the library. Loss: per feature map k (``return_feat``: every input
  block's output and the middle block's) ``F.mse_loss(a_k ⊙ w_R, b_k ⊙ w_R) + α F.mse_loss(a_k ⊙ w_F, b_k ⊙ w_F)``,
  w_R = (1 + label)/2, w_F = (1 − label)/2 — the mean over all B rows with the other side's rows zeroed, so the
  result is (N_side / B) × the library's per-side term: with N_f = N_r, **½ (L_R + α L_F)**. Adam is invariant to a
  constant factor on the loss (up to its ε), so the update is the library's. Backward, optimizer step,
  ``loss.item()`` (their ``train_metrics.update``). Their Palette config also keeps an EMA of the weights updated on
  every iteration (``ema_scheduler``: start 1, every 1, decay 0.9999, a third copy of the whole model): option
  ``ema_decay`` (default 0: off, as the library's run).

**Same objective as the library, same draws.** The forget target is the library's (``fastunlearn.methods.i2i``):
the teacher's encoding of a noise image n under the model's mask with the forget row's (t, ε), n of kind
``palette`` (N(0, 1) on every pixel), ``mage`` (N(mean(x_i), std(x_i)) per image, clamped to [-1, 1]) or ``hole``
(N(0, 1) in the hole, x elsewhere) — computed here independently from one N(0, I) draw. Their own noises differ in
detail (MAGE: ``torch.std`` / ``torch.mean`` over the whole batch and a clamp to their [0, 1] pixels; Palette:
``y_noisy`` of a forget row is pure N(0, 1) in the hole while the visible pixels stay the forget image's — the
library's ``hole``); the reference takes the library's so that its loss is the library's on the same draws. The
draws come from the step's ``torch.Generator`` in the library's order — the forget rows' (t, ε) (inpainter only),
the forget rows' noise ``[N_f, C, H, W]``, the retain rows' (t, ε) — and then, for ``mage`` only, the retain rows'
noise ``[N_r, C, H, W]`` (their ``mis_guide`` input covers every row; the loss discards it). The timestep is the
adapter's discrete t ~ U{0..T−1} (Palette's continuous γ between two steps is the same cost).

**Left at the library's run values** so that the ratio measures the step's structure alone: fp32 (their MAGE
student runs under ``torch.cuda.amp.autocast``), plain Adam at the run's lr and betas without weight decay or
clipping (theirs: MAGE AdamW, weight decay 0.05, betas (0.9, 0.95), clip 3.0; Palette Adam at 5e-5), one process.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F

STRUCTURES = ("mage", "palette")
#: The authors' fork for each architecture: MAGE's loop on the masked autoencoder, Palette's on the inpainter.
DEFAULT_STRUCTURE = {"mae": "mage", "inpaint": "palette"}
#: The library's ``auto`` noise per architecture (``fastunlearn.methods.i2i.DEFAULT_NOISE``, written out).
AUTO_NOISE = {"mae": "mage", "inpaint": "palette"}
#: Encoder passes of B rows per step.
ENCODES = {"mage": 3, "palette": 2}


class ReferenceI2I:
    """The authors' unlearning step (module docstring): ``setup`` once, then ``step(x_f, x_r, generator)``."""

    def setup(self, adapter: Any, lr: float, alpha: float, noise: str = "auto", structure: str | None = None,
              betas: tuple[float, float] = (0.9, 0.999), ema_decay: float = 0.0) -> "ReferenceI2I":
        """``adapter`` (an :class:`~fastunlearn.models.i2i.I2IAdapter`) is trained in place; the teacher is a deep
        copy of its whole model taken here."""
        self.student = adapter
        self.arch = adapter.arch
        self.structure = structure or DEFAULT_STRUCTURE[self.arch]
        if self.structure not in STRUCTURES:
            raise ValueError(f"unknown structure {self.structure!r}; expected one of {', '.join(STRUCTURES)}")
        self.noise = AUTO_NOISE[self.arch] if noise == "auto" else noise
        if self.noise not in ("palette", "mage", "hole"):
            raise ValueError(f"unknown noise {self.noise!r}")
        self.alpha = float(alpha)
        self.teacher = adapter.scratch_copy()  # their copy.deepcopy(model): encoder AND decoder
        self.teacher.eval()
        self.student.train()
        self.params = adapter.parameters("all")  # every trainable parameter, the decoder's included
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.Adam(self.params, lr=lr, betas=betas)
        self.ema_decay = float(ema_decay)
        self.ema = [p.detach().clone() for p in self.params] if self.ema_decay > 0 else None
        self.device = adapter.device
        self.image_shape = tuple(adapter.image_shape)
        self.num_train_timesteps = int(adapter.num_train_timesteps) if self.arch == "inpaint" else 0
        return self

    # ------------------------------------------------------------------ draws
    def _encoding_draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(t, ε) of ``n`` rows on the inpainter (t ~ U{0..T−1}, ε ~ N(0, I)); nothing on the masked autoencoder."""
        if self.arch != "inpaint":
            return None, None
        t = torch.randint(0, self.num_train_timesteps, (n,), generator=generator)
        eps = torch.randn((n, *self.image_shape), generator=generator, dtype=torch.float32)
        return t, eps

    def noise_image(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """The noise image of each row of ``x`` from its N(0, I) draw ``z`` (module docstring)."""
        if self.noise == "palette":
            return z
        if self.noise == "mage":
            flat = x.flatten(1)
            mean = flat.mean(1).view(-1, 1, 1, 1)
            std = flat.std(1).view(-1, 1, 1, 1)
            return (mean + std * z).clamp(-1.0, 1.0)
        hole = self.student.mask.tensor(x.shape[0], device=x.device).to(x.dtype)
        return hole * z + (1.0 - hole) * x

    def draw(self, x_f: torch.Tensor, x_r: torch.Tensor, generator: torch.Generator) -> dict[str, Any]:
        """Every draw of one step, in the library's order (then ``mage``'s extra retain-row noise)."""
        n_f, n_r = x_f.shape[0], x_r.shape[0]
        t_f, e_f = self._encoding_draw(n_f, generator)
        z_f = torch.randn(x_f.shape, generator=generator, dtype=torch.float32)
        t_r, e_r = self._encoding_draw(n_r, generator)
        z_r = torch.randn(x_r.shape, generator=generator, dtype=torch.float32) if self.structure == "mage" else None
        t = None if t_f is None else torch.cat([t_f, t_r])
        eps = None if e_f is None else torch.cat([e_f, e_r])
        return {"t": t, "eps": eps, "z_f": z_f, "z_r": z_r}

    # ------------------------------------------------------------------ one step
    def step(self, x_f: torch.Tensor, x_r: torch.Tensor, generator: torch.Generator) -> dict[str, float]:
        """One iteration of their loop on the mixed batch [x_f; x_r]; returns their logged scalars."""
        d = self.draw(x_f, x_r, generator)
        x_f, x_r = x_f.float().cpu(), x_r.float().cpu()
        x = torch.cat([x_f, x_r]).to(self.device)
        labels = torch.cat([-torch.ones(x_f.shape[0]), torch.ones(x_r.shape[0])]).to(self.device)
        t = None if d["t"] is None else d["t"].to(self.device)
        eps = None if d["eps"] is None else d["eps"].to(self.device)
        noise_f = self.noise_image(x_f, d["z_f"])
        self.optimizer.zero_grad()
        if self.structure == "mage":
            out = self._mage(x, x_f, x_r, noise_f, d["z_r"], labels, t, eps)
        else:
            out = self._palette(x, x_r, noise_f, labels, t, eps)
        if self.ema is not None:  # Palette's EMA.update_model_average over every parameter
            with torch.no_grad():
                for e, p in zip(self.ema, self.params):
                    e.copy_(e * self.ema_decay + (1.0 - self.ema_decay) * p.detach())
        return out

    def _mage(self, x, x_f, x_r, noise_f, z_r, labels, t, eps) -> dict[str, float]:
        latent = self.student.encoder_features(x, None, t, eps)
        with torch.no_grad():
            guide = self.teacher.encoder_features(x, None, t, eps)
            mis_input = torch.cat([noise_f, self.noise_image(x_r, z_r)]).to(self.device)
            mis_guide = self.teacher.encoder_features(mis_input, None, t, eps)
        retain, forget = self.mage_loss(latent, guide, mis_guide, labels)
        loss = retain + self.alpha * forget
        loss_value = loss.item()  # their math.isfinite(loss.item()) check
        loss.backward()
        self.optimizer.step()
        return {"loss": loss_value, "retain": retain.item(), "forget": forget.item()}

    def _palette(self, x, x_r, noise_f, labels, t, eps) -> dict[str, float]:
        with torch.no_grad():
            teacher_feat = self.teacher.encoder_features(torch.cat([noise_f, x_r]).to(self.device), None, t, eps)
        noise_hat = self.student.encoder_features(x, None, t, eps)
        retain, forget = self.palette_loss(noise_hat, teacher_feat, labels)
        loss = retain + self.alpha * forget
        loss.backward()
        self.optimizer.step()
        return {"loss": loss.item(), "retain": retain.item(), "forget": forget.item()}

    # ------------------------------------------------------------------ their losses
    @staticmethod
    def mage_loss(latent: Sequence[torch.Tensor], guide: Sequence[torch.Tensor], mis_guide: Sequence[torch.Tensor],
                  labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Their ``compute_loss``, summed over maps: (retain, forget) = Σ_k (mean_rows((1 + l) · mse_row(latent_k,
        guide_k)), mean_rows((1 − l) · mse_row(latent_k, mis_guide_k)))."""
        retain = forget = 0.0
        for a, g, m in zip(latent, guide, mis_guide):
            dims = tuple(range(1, a.dim()))
            retain = retain + (torch.mean((a - g) ** 2, dim=dims) * (1.0 + labels)).mean()
            forget = forget + (torch.mean((a - m) ** 2, dim=dims) * (1.0 - labels)).mean()
        return retain, forget

    @staticmethod
    def palette_loss(noise_hat: Sequence[torch.Tensor], teacher_feat: Sequence[torch.Tensor],
                     labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Their ``weighted_mse_loss`` per map, summed: (retain, forget) = Σ_k (F.mse_loss(a_k ⊙ w_R, b_k ⊙ w_R),
        F.mse_loss(a_k ⊙ w_F, b_k ⊙ w_F)), the weights broadcast over each row."""
        retain = forget = 0.0
        for a, b in zip(noise_hat, teacher_feat):
            shape = (-1,) + (1,) * (a.dim() - 1)
            w_r, w_f = ((labels + 1.0) * 0.5).view(shape), ((1.0 - labels) * 0.5).view(shape)
            retain = retain + F.mse_loss(a * w_r, b * w_r)
            forget = forget + F.mse_loss(a * w_f, b * w_f)
        return retain, forget


def encoder_module(adapter: Any) -> torch.nn.Module:
    """The module every encode of ``adapter`` calls exactly once and its decoder never calls (for counting hooks):
    the UNet's ``conv_in`` on the inpainter, the ViT on the masked autoencoder."""
    module = getattr(adapter.network, "_orig_mod", adapter.network)
    return module.conv_in if adapter.arch == "inpaint" else module.vit


__all__ = ["ReferenceI2I", "STRUCTURES", "DEFAULT_STRUCTURE", "ENCODES", "encoder_module"]
