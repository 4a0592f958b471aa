"""Selective Amnesia (Heng & Soh, "Selective Amnesia: A Continual Learning Approach to Forgetting in Deep
Generative Models", NeurIPS 2023), the class-conditional DDPM variant.

    L(θ) = L_simple(x̃, c_f) + γ L_simple(x_r, c_r) + λ Σ_i F_i (θ_i − θ*_i)²

- x̃: the surrogate of the forget class, uniform-noise images U[-1, 1] labelled c_f (what "c_f" should now draw);
- x_r: replay of the retained classes — samples of the original model (generative replay, the paper's
  default) or the real retain batch (``replay=real``);
- F: the diagonal empirical Fisher of the original model θ*, F_i = E_x (∂ℓ(x; θ*)/∂θ_i)², ℓ the per-sample
  denoising loss on samples of the original model over all classes (the authors' ``calculate_fisher``).

Setup is the method's real cost: ``replay_per_class`` DDIM samples per class from the original model (the
retained ones form the replay pool, all of them feed the Fisher) and per-sample gradients of the Fisher
through ``torch.func`` (``vmap(grad(functional_call))``, ``fisher_chunk`` samples per vectorised call) —
not a Python loop over samples. ``setup_seconds`` records the time.

A step: one forward of [surrogate; replay] → :func:`fastunlearn.ops.dual_noise_loss` → backward of
L_f + γ L_r into the flat buffer; the EWC gradient 2λ F ⊙ (θ − θ*) is added in closed form on flat
tensors (no autograd graph through the penalty) → clip → Adam.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.func import grad, vmap

from fastunlearn.errors import UserInputError
from fastunlearn.methods.base import Batch, MethodConfig, register
from fastunlearn.methods.gradient import GradientMethod, check_common, retained_classes
from fastunlearn.ops import dual_noise_loss

REPLAYS = ("generated", "real")


@dataclass(frozen=True)
class SelectiveAmnesiaOptions:
    """Selective Amnesia options (``--option key=value``)."""

    gamma: float = 1.0  #: weight of the replay loss (the authors': 1)
    #: weight of the EWC penalty (the authors': 10 on CIFAR-10, over 20k steps). Our F is a per-sample mean and
    #: Adam moves each weight ~lr per step, so 2λ F (θ−θ*) is negligible next to the loss gradient unless λ is
    #: large: on the digits DDPM at lr 1e-4, λ = 1e3 let the mean retain accuracy collapse to 24% by step 25;
    #: λ = 1e5 dipped to 38% at step 25 and recovered to 96% by step 125 with the forget class at 0%.
    lam: float = 1e5
    replay: str = "generated"  #: ``generated`` (samples of the original model) or ``real`` (the retain batch)
    replay_per_class: int = 16  #: samples per class drawn in setup (retained: replay pool; all: Fisher)
    sample_steps: int = 20  #: DDIM steps of those samples
    fisher_chunk: int = 16  #: samples per vmap call of the per-sample gradients (bounds memory)
    grad_clip: float = 1.0  #: max global gradient norm (≤ 0 disables)
    ema_decay: float = 0.0  #: EMA of the weights (0 disables)

    def validate(self) -> None:
        if self.replay not in REPLAYS:
            raise UserInputError(f"unknown selective_amnesia replay {self.replay!r}; expected one of {', '.join(REPLAYS)}")
        for key in ("gamma", "lam"):
            if not getattr(self, key) >= 0:
                raise UserInputError(f"selective_amnesia {key} must be >= 0, got {getattr(self, key)}")
        for key in ("replay_per_class", "sample_steps", "fisher_chunk"):
            if getattr(self, key) < 1:
                raise UserInputError(f"selective_amnesia {key} must be >= 1, got {getattr(self, key)}")
        check_common("selective_amnesia", self.grad_clip, self.ema_decay)


def per_sample_sq_grads(adapter: Any, names: list[str], x_t: torch.Tensor, t: torch.Tensor,
                        labels: torch.Tensor | None, noise: torch.Tensor, chunk: int = 16) -> list[torch.Tensor]:
    """Σ over samples of (∂ℓ_n/∂θ)², ℓ_n = mean ‖ε_n − ε_θ(x_t,n, t_n, c_n)‖², for the parameters ``names``
    (names of ``adapter.named_parameters()``).

    Per-sample gradients come from ``vmap(grad(...))`` over the adapter's ``functional_predict`` — one
    vectorised backward per ``chunk`` samples. Returns one tensor per name, shaped like the parameter
    (float32 sums).
    """
    params = dict(adapter.named_parameters("all"))
    train = {n: params[n].detach() for n in names}

    def loss_one(p: dict[str, torch.Tensor], x, tt, y, eps) -> torch.Tensor:
        y = y.unsqueeze(0) if y is not None else None
        pred = adapter.functional_predict(p, x.unsqueeze(0), tt.unsqueeze(0), y)
        return ((pred - eps.unsqueeze(0)) ** 2).mean()

    in_dims = (None, 0, 0, 0 if labels is not None else None, 0)
    per_sample = vmap(grad(loss_one), in_dims=in_dims, randomness="different")
    sums = {n: torch.zeros_like(v, dtype=torch.float32) for n, v in train.items()}
    for s in range(0, x_t.shape[0], chunk):
        y = labels[s:s + chunk] if labels is not None else None
        g = per_sample(train, x_t[s:s + chunk], t[s:s + chunk], y, noise[s:s + chunk])
        for n in names:
            sums[n] += g[n].float().pow(2).sum(dim=0)
    return [sums[n] for n in names]


@register("selective_amnesia")
class SelectiveAmnesia(GradientMethod):
    """Surrogate + replay + EWC (see the module docstring for the formulas)."""

    Options: ClassVar[type] = SelectiveAmnesiaOptions

    @staticmethod
    def defaults(unconditional: bool = False, options: dict[str, Any] | None = None,
                 family: str = "ddpm") -> dict[str, Any]:
        """Digits DDPM: lr 1e-4, batch 32 per side (the authors: 20k steps on CIFAR-10)."""
        return {"steps": 150, "batch_size": 32, "lr": 1e-4}

    def setup(self, adapter: Any, config: MethodConfig) -> None:
        if not adapter.conditional:
            raise UserInputError("selective_amnesia maps the forget label to noise and needs a class-conditional model")
        if config.unconditional:
            raise UserInputError("selective_amnesia forgets a class label; --unconditional is not supported (use erasediff)")
        started = time.perf_counter()
        self.setup_params(adapter, config)
        retained = retained_classes(adapter, config)
        if not retained:
            raise UserInputError("selective_amnesia needs at least one retained class to replay")
        opts: SelectiveAmnesiaOptions = self.opts
        # One seeded draw of the original model: the replay pool and the Fisher's samples.
        gen = torch.Generator().manual_seed(0x5A)
        classes = torch.arange(adapter.num_classes).repeat_interleave(opts.replay_per_class)
        was_training = adapter.training
        adapter.eval()
        samples = adapter.generate(classes.numel(), classes, steps=opts.sample_steps, generator=gen)
        keep = torch.isin(classes, torch.tensor(retained))
        self.replay_images, self.replay_labels = samples[keep], classes[keep]
        self.fisher = self._fisher(samples, classes, gen)
        adapter.train(was_training)
        self.theta_star = self.flat.gather([p.detach() for p in self.params])  # the buffer's memory order
        self.setup_seconds = time.perf_counter() - started

    @staticmethod
    def fsdp_unsupported(options: Any) -> str | None:
        return "its Fisher takes per-sample gradients of the whole model (torch.func), which FSDP does not hold"

    def _fisher(self, images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Flat diagonal empirical Fisher at θ*: mean over samples of (∂ℓ_n/∂θ)², laid out like the flat buffer."""
        a = self.adapter
        nb = a.noised_batch(images, labels, gen)
        by_id = {id(p): n for n, p in a.named_parameters("all")}
        names = [by_id[id(p)] for p in self.params]
        sums = per_sample_sq_grads(a, names, nb.x_t, nb.t, nb.labels, nb.noise, self.opts.fisher_chunk)
        return self.flat.gather(sums).div_(images.shape[0])

    def step(self, forget_batch: Batch, retain_batch: Batch) -> dict[str, torch.Tensor]:
        a, opts, gen = self.adapter, self.opts, forget_batch.generator
        # Surrogate: uniform noise in [-1, 1] under the forget labels.
        surrogate = torch.rand(forget_batch.images.shape, generator=gen) * 2.0 - 1.0
        f = a.noised_batch(surrogate, forget_batch.labels, gen, rows=forget_batch.rows)
        if opts.replay == "generated":
            idx = torch.randint(0, self.replay_labels.numel(), (retain_batch.images.shape[0],), generator=gen)
            r = a.noised_batch(self.replay_images[idx], self.replay_labels[idx], retain_batch.generator,
                               rows=retain_batch.rows)
        else:
            r = self.retain_inputs(retain_batch)
        n_f = f.x_t.shape[0]
        pred = a.predict(torch.cat([f.x_t, r.x_t]), torch.cat([f.t, r.t]), torch.cat([f.labels, r.labels]))
        loss_f, loss_r = dual_noise_loss(pred, torch.cat([f.noise, r.noise]).to(pred.dtype), n_f)
        self.backward(loss_f + opts.gamma * loss_r)
        # EWC: ∇ λ Σ F (θ−θ*)² = 2λ F ⊙ (θ−θ*), added in closed form to the flat gradient.
        with torch.no_grad():
            delta = self.flat.gather([p.detach() for p in self.params]).sub_(self.theta_star)
            weighted = delta * self.fisher  # F ⊙ (θ−θ*)
            ewc = torch.dot(weighted, delta)  # Σ F (θ−θ*)²
            self.flat.buffer.add_(weighted, alpha=2.0 * opts.lam)
        return {"loss_forget": loss_f.detach(), "loss_retain": loss_r.detach(), "ewc": opts.lam * ewc,
                **self.apply_update()}


__all__ = ["SelectiveAmnesia", "SelectiveAmnesiaOptions", "per_sample_sq_grads", "REPLAYS"]
