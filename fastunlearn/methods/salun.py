"""SalUn (Fan, Liu, Zhang, Wei, Wong, Liu; "SalUn: Empowering machine unlearning via gradient-based weight
saliency", ICLR 2024), the DDPM class-forgetting variant.

Saliency mask, once, at the original weights θ₀:

    m = 1( |∇_θ L_f(θ₀)| ≥ median |∇_θ L_f(θ₀)| )          (top 50% of the trainable weights)

Update, with the forget class c_f relabelled to a retained class c′ = (c_f + 1) mod C (stepping on while
c′ is itself forgotten; on a text-to-image model, whose labels are prompt ids, the forget prompt is remapped to a
retained prompt drawn per row):

    L(θ) = E_{D_f,t,ε} ‖ε_θ(x_t, t, c_f) − sg(ε_θ(x_t, t, c′))‖² + α L_r(θ),     θ ← Adam(m ⊙ clip(∇L))

The mask lives on the parameters' device as a bool flat tensor matching the :class:`FlatGrads` buffer and is
applied in place before clipping and Adam — one ``masked_fill_`` per step. (The authors keep an int64 mask
per tensor on the CPU and copy it over every step; that transfer is their main per-step overhead.)

The Method contract gives ``setup`` no data, so the mask is computed by :meth:`SalUn.compute_mask` — called
by the first ``step`` on its forget batch with ``mask_draws`` independent (t, ε) draws (the summed gradient,
as the authors sum over their forget loader before taking |·|) unless the caller computed it beforehand.
It is part of the method state, so a resumed run uses the mask of the original weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch

from fastunlearn.errors import UserInputError
from fastunlearn.methods.base import Batch, MethodConfig, register
from fastunlearn.methods.gradient import GradientMethod, check_common, retained_classes
from fastunlearn.ops import dual_noise_loss


@dataclass(frozen=True)
class SalUnOptions:
    """SalUn options (``--option key=value``)."""

    #: weight of L_r. The authors use 1e-3 on CIFAR-10 (1,000 steps, lr 1e-4). On the digits DDPM at lr 1e-4,
    #: α = 0.5 let the mean retain accuracy fall to 76% by step 25 (84% at 50); α = 5 kept it ≥ 97% while the
    #: forget accuracy fell to 0 by step 125 (benchmarks/bench_methods.py evaluation).
    alpha: float = 5.0
    sparsity: float = 0.5  #: share of weights frozen by the mask (0.5: the median threshold, the paper's)
    mask_draws: int = 4  #: (t, ε) draws of the forget batch summed into ∇L_f(θ₀) for the mask
    grad_clip: float = 1.0  #: max global norm of the masked gradient (the authors': 1.0)
    ema_decay: float = 0.0  #: EMA of the weights (0 disables)

    def validate(self) -> None:
        if not self.alpha >= 0:
            raise UserInputError(f"salun alpha must be >= 0, got {self.alpha}")
        if not 0.0 <= self.sparsity < 1.0:
            raise UserInputError(f"salun sparsity must be in [0, 1), got {self.sparsity}")
        if self.mask_draws < 1:
            raise UserInputError(f"salun mask_draws must be >= 1, got {self.mask_draws}")
        check_common("salun", self.grad_clip, self.ema_decay)


def relabel_table(num_classes: int, forgotten: Sequence[int]) -> torch.Tensor:
    """``table[c]`` = the first of (c+1) mod C, (c+2) mod C, ... that is not forgotten (c′ of SalUn)."""
    forgotten = set(int(c) for c in forgotten)
    if len(forgotten) >= num_classes:
        raise UserInputError("salun needs at least one retained class to relabel the forget set with")
    table = []
    for c in range(num_classes):
        k = (c + 1) % num_classes
        while k in forgotten:
            k = (k + 1) % num_classes
        table.append(k)
    return torch.tensor(table, dtype=torch.long)


@register("salun")
class SalUn(GradientMethod):
    """Saliency-masked pseudo-label unlearning (see the module docstring for the formulas)."""

    Options: ClassVar[type] = SalUnOptions

    @staticmethod
    def defaults(unconditional: bool = False, options: dict[str, Any] | None = None,
                 family: str = "ddpm") -> dict[str, Any]:
        """Digits DDPM: lr 1e-4 (the authors'), batch 32 per side as EraseDiff."""
        return {"steps": 150, "batch_size": 32, "lr": 1e-4}

    def setup(self, adapter: Any, config: MethodConfig) -> None:
        if not adapter.conditional:
            raise UserInputError("salun relabels the forget class and needs a class-conditional model")
        if config.unconditional:
            raise UserInputError("salun forgets a class label; --unconditional is not supported (use erasediff)")
        self.setup_params(adapter, config)
        if not retained_classes(adapter, config):
            raise UserInputError("salun needs at least one retained class to relabel the forget set with")
        # Class labels: c′ = the next retained class (the authors'). Prompt ids (a text-to-image model): the forget
        # prompt is remapped to a retained prompt drawn per row from the step's generator (the authors' SD code
        # pairs the concept with a random other prompt).
        self.prompt_labels = getattr(adapter, "family", "ddpm") == "t2i"
        if self.prompt_labels:
            self.relabel = None
            self.retained = torch.tensor(retained_classes(adapter, config), dtype=torch.long)
        else:
            self.relabel = relabel_table(adapter.num_classes, config.forget_classes).to(adapter.device)
        self.drop: torch.Tensor | None = None  #: ~m as a flat bool on the params' device, once computed

    @staticmethod
    def fsdp_unsupported(options: Any) -> str | None:
        return "its saliency mask is a quantile over the whole gradient, which no process holds under FSDP"

    # ------------------------------------------------------------------ the mask
    def compute_mask(self, forget_batches: Sequence[Batch], draws: int | None = None) -> torch.Tensor:
        """m = 1(|Σ ∇L_f(θ₀)| ≥ quantile_s) over the trainable weights, from ``draws`` noise draws of each batch.

        Returns the keep-mask (flat bool, on the parameters' device) and installs its complement for the
        steps. Uses the flat buffer as scratch: call it before the first update (θ = θ₀).
        """
        a, flat = self.adapter, self.flat
        draws = self.opts.mask_draws if draws is None else int(draws)
        flat.buffer.zero_()
        flat.bind(flat.buffer)
        for batch in forget_batches:
            for _ in range(draws):
                f = a.noised_batch(batch.images, batch.labels, batch.generator, rows=batch.rows)
                pred = a.predict(f.x_t, f.t, f.labels)
                loss_f, _ = dual_noise_loss(pred, f.noise.to(pred.dtype), pred.shape[0])
                loss_f.backward()  # accumulates into the flat buffer
        self.grad_sync(flat.buffer)  # the saliency of the whole batch, the same mask on every process
        score = flat.buffer.abs()
        k = max(1, int(round(self.opts.sparsity * score.numel())))
        # kthvalue of the k-th smallest magnitude: at sparsity 0.5 this is the median of the paper's rule.
        threshold = score.kthvalue(k).values if self.opts.sparsity > 0 else score.new_tensor(-1.0)
        keep = score >= threshold
        flat.buffer.zero_()
        self.drop = ~keep
        return keep

    # ------------------------------------------------------------------ the step
    def step(self, forget_batch: Batch, retain_batch: Batch) -> dict[str, torch.Tensor]:
        if self.drop is None:
            self.compute_mask([forget_batch])
        a = self.adapter
        f = a.noised_batch(forget_batch.images, forget_batch.labels, forget_batch.generator, rows=forget_batch.rows)
        r = self.retain_inputs(retain_batch)
        if self.prompt_labels:
            pick = torch.randint(0, len(self.retained), (forget_batch.images.shape[0],), generator=forget_batch.generator)
            c_prime = self.retained[forget_batch.local(pick)].to(a.device)
        else:
            c_prime = self.relabel[f.labels]
        with torch.no_grad():
            target_f = a.predict(f.x_t, f.t, c_prime)  # sg(ε_θ(x_t | c′))
        n_f = f.x_t.shape[0]
        pred = a.predict(torch.cat([f.x_t, r.x_t]), torch.cat([f.t, r.t]), torch.cat([f.labels, r.labels]))
        loss_f, loss_r = dual_noise_loss(pred, torch.cat([target_f, r.noise]).to(pred.dtype), n_f)
        self.backward(loss_f + self.opts.alpha * loss_r)
        self.flat.buffer.masked_fill_(self.drop, 0.0)  # m ⊙ ∇L, before clip and Adam
        return {"loss_forget": loss_f.detach(), "loss_retain": loss_r.detach(), **self.apply_update()}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # Per parameter, in each parameter's own shape: the flat buffer's order follows the parameters' memory
        # layout (channels-last or not), so a flat mask would be permuted when resumed under another layout.
        state["mask"] = None if self.drop is None else [v.contiguous().clone() for v in self.flat.views(~self.drop)]
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        mask = state.get("mask")
        if mask is None:
            self.drop = None
            return
        keep = self.flat.gather([m.to(device=self.flat.device, dtype=self.flat.dtype) for m in mask])
        self.drop = keep == 0


__all__ = ["SalUn", "SalUnOptions", "relabel_table"]
