"""Fine-tuning (FT) baseline: keep training on the retain set only and hope the forget set fades.

    min_θ L_r(θ) = E_{D_r,t,ε} ‖ε − ε_θ(x_t, t, c)‖²

No term mentions the forget set: forgetting comes only from catastrophic interference, which on a
well-trained DDPM is slow — the baseline every unlearning paper (e.g. SalUn, Fan et al., ICLR 2024) reports
to show that plain retraining on D_r does not erase a class within a small budget.

The shared plumbing (flat gradient buffer, Adam, clip, EMA, state) is :class:`fastunlearn.methods.gradient.GradientMethod`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from fastunlearn.methods.base import Batch, MethodConfig, register
from fastunlearn.methods.gradient import GradientMethod, check_common
from fastunlearn.ops import dual_noise_loss


@dataclass(frozen=True)
class FinetuneOptions:
    """Fine-tune options (``--option key=value``)."""

    grad_clip: float = 1.0  #: max global gradient norm (≤ 0 disables)
    ema_decay: float = 0.0  #: EMA of the weights (0 disables); the saved model is the EMA when on

    def validate(self) -> None:
        check_common("finetune", self.grad_clip, self.ema_decay)


@register("finetune")
class Finetune(GradientMethod):
    """Plain denoising training on D_r only (the forget batch is ignored)."""

    Options: ClassVar[type] = FinetuneOptions

    @staticmethod
    def defaults(unconditional: bool = False, options: dict[str, Any] | None = None,
                 family: str = "ddpm") -> dict[str, Any]:
        """Digits DDPM: lr 1e-4 as EraseDiff; FT does not forget within budgets like this (see benchmarks)."""
        return {"steps": 150, "batch_size": 32, "lr": 1e-4}

    def setup(self, adapter: Any, config: MethodConfig) -> None:
        self.setup_params(adapter, config)

    def step(self, forget_batch: Batch, retain_batch: Batch) -> dict[str, torch.Tensor]:
        del forget_batch
        r = self.retain_inputs(retain_batch)
        pred = self.adapter.predict(r.x_t, r.t, r.labels)
        _, loss_r = dual_noise_loss(pred, r.noise.to(pred.dtype), 0)
        self.backward(loss_r)
        return {"loss_retain": loss_r.detach(), **self.apply_update()}


__all__ = ["Finetune", "FinetuneOptions"]
