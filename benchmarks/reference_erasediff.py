"""BASELINES for benchmarks only — the authors' EraseDiff training code, re-implemented here. Never used by
the library.

Two references, both written from the description in ``../shared/METHODS.md`` (not copied), both fp32, both
keeping the authors' inefficiencies, because their cost is what the comparison is about:

``ReferenceEraseDiffDefault`` — **the authors' default code path** (``--lambda_bome 0.1``); the first
reference every table and README sentence compares against.

- Schedule: ``epochs`` (4) × S (2) *rounds*. A round = save θ (a clone of every parameter) → K = 2 full passes
  over the forget set D_f in batches of B, one Adam step on L_f per batch **on the live optimizer** (no grad
  clip; Adam's moments advanced and not restored), the mean forget loss of the last pass kept → θ restored
  from the clone → outer steps, each pairing one D_r batch with one D_f batch, until D_f is exhausted or more
  than ``rem_num`` (4,500) retain rows were seen. On CIFAR-10 (n_f = 5,000, B = 128): 2 × 40 = 80 inner and 36
  outer steps per round, 640 inner + 288 outer Adam steps over 8 rounds.
- Outer step: three forwards — L_r on the retain batch, L_u on the forget batch, and the pseudo-label target
  ε_θ(x_t, t, c′) (c′ one retained class per batch) computed *with* a graph that is then detached — then ONE
  backward of L_r + λ·L_q with λ = 0.1 fixed and L_q = L_u − (mean inner loss, detached); grad-norm clip 1.0;
  Adam; the EMA helper's per-parameter out-of-place update; ``torch.cuda.empty_cache()`` + ``gc.collect()``.
  Antithetic timesteps (t, T−1−t) as their code draws them.
- Inner step: the target forward (with a graph, detached), the forward, a backward, Adam, the per-step
  ``empty_cache()`` + ``gc.collect()``.

  Amortised cost of one outer step (what ``bench_step.py`` reports as ``reference-default``)::

      t_amortised = t_outer + r · t_inner + t_round / n_outer
      n_outer = min(ceil(n_f / B), floor(rem_num / B) + 1)      outer steps per round
      r       = K · (n_f / B) / n_outer                         inner steps per outer step

  ``K · n_f / B`` counts the inner work of a round in full-batch steps with the last, partial batch counted by
  its rows (K · ceil(n_f / B) steps are run; counting the partial batch as a full one would add up to K full
  steps per round — this choice favours the reference); ``t_round`` is the save + restore of θ with their
  ``gc.collect()`` calls. Digits (class 0: n_f = 142, B = 32): 5 D_f batches, 10 inner steps (8.9 full-batch
  equivalents) and 5 outer steps per round, r = 1.78. CIFAR-10 (n_f = 5,000, B = 128): r = 78.1 / 36 = 2.17.
  :func:`authors_schedule` computes these.

``ReferenceEraseDiffAdaptive`` (``ReferenceEraseDiff`` before the default one existed) — the authors' **adaptive-λ branch**
(``--lambda_bome < 0``), their most expensive path; reported as ``reference-adaptive``. Per outer step:

1. **K inner forget steps on the live optimizer** (``inner_steps``, default K = 2): K Adam steps on the forget
   loss L_f, each with its own pseudo-label target forward. Adam's moments are advanced by these forget-only
   steps and *not* restored; the parameters are restored from a copy afterwards (the authors' save/restore
   of the parameters around the inner loop). Under the first-order rule the K steps do not change the update
   (∇q = ∇L_f, METHODS.md), so they are pure cost — except for the Adam-moment side effect, kept here.
   This branch runs its K = 2 inner steps inside every outer step (one batch each, not the authors' passes
   over D_f every round: the default reference has that schedule); with them this step is ≈19 forward-equivalents
   (issue 5's count): 2 × (target fwd + fwd + bwd≈2) = 8, then target fwd + forget fwd + retain fwd +
   two ``autograd.grad`` (≈2 each) = 7, then the third backward through both retained graphs ≈4.
2. **Separate forward passes** for the forget and the retain batch (no concatenation).
3. **Two ``torch.autograd.grad`` calls with ``retain_graph=True``** — ∇L_f and ∇L_r — flattened with
   ``torch.cat`` to form the adaptive λ by the cosine rule, λ = max(0, η − cos(∇L_r, ∇L_f)), read on the
   host (``.item()``, a sync).
4. **A third backward** of L_r + λ·L_f through the retained graphs for the update; grad-norm clip 1.0; Adam.
5. ``gc.collect()`` and the CUDA cache emptied after each phase; fp32 throughout; a per-parameter EMA update.

Forget target (both): ``pseudo_label`` (the library's default and the authors' current code): ε_f is the model's
own prediction (here under ``no_grad``; the default reference builds its graph and detaches it, as their
default path does) for the same x_t under a label c′ drawn from the *retained* classes. The authors
draw one c′ per batch (``randint``); so does this baseline (from the retained classes, which METHODS.md says
is the correct set). The library draws one c′ per sample — same cost.

Interfaces (both): ``setup`` once with a diffusers ``UNet2DModel`` (or any denoiser through ``predict``) and its
``DDPMScheduler``, then ``step(forget_x, forget_y, retain_x, retain_y, generator)`` per outer step (the default
reference also runs its round's inner passes inside ``step`` when a round starts; see its class docstring).
"""
from __future__ import annotations

import gc
from typing import Callable, Sequence

import torch
import torch.nn.functional as F


def _empty_cache() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class ReferenceEraseDiffAdaptive:
    """The authors' adaptive-λ EraseDiff outer step (see the module docstring): a benchmark baseline only."""

    def setup(
        self,
        unet: torch.nn.Module,
        scheduler,
        retained_classes: Sequence[int],
        lr: float = 1e-4,
        inner_steps: int = 2,
        eta: float = 0.1,
        grad_clip: float = 1.0,
        ema_decay: float = 0.99,
        predict: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> "ReferenceEraseDiffAdaptive":
        self.unet = unet
        self.device = next(unet.parameters()).device
        self.params = [p for p in unet.parameters()]
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.Adam(self.params, lr=lr)
        self.retained = torch.tensor(sorted(set(int(c) for c in retained_classes)), dtype=torch.long)
        self.inner_steps, self.eta, self.grad_clip, self.ema_decay = inner_steps, eta, grad_clip, ema_decay
        self.alphas_cumprod = scheduler.alphas_cumprod.detach().to(self.device, torch.float32)
        self.T = int(scheduler.config.num_train_timesteps)
        self._predict = predict or (lambda x, t, y: self.unet(x, t, class_labels=y).sample)
        # The authors' EMA helper keeps a shadow copy per named parameter and updates it in a Python loop.
        self.ema = {n: p.detach().clone() for n, p in unet.named_parameters()} if ema_decay > 0 else None
        return self

    # ------------------------------------------------------------------ pieces
    def _noised(self, x0: torch.Tensor, generator: torch.Generator):
        n = x0.shape[0]
        t = torch.randint(0, self.T, (n,), generator=generator).to(self.device)
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        a = self.alphas_cumprod[t].view(n, *([1] * (x0.dim() - 1)))
        x0 = x0.to(self.device, torch.float32)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise, t, noise

    def _pseudo_target(self, x_t: torch.Tensor, t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        c = self.retained[torch.randint(0, len(self.retained), (1,), generator=generator)].item()
        y = torch.full((x_t.shape[0],), c, dtype=torch.long, device=self.device)
        with torch.no_grad():
            return self._predict(x_t, t, y)

    def _forget_loss(self, fx, fy, generator):
        x_t, t, _ = self._noised(fx, generator)
        target = self._pseudo_target(x_t, t, generator)
        return F.mse_loss(self._predict(x_t, t, fy.to(self.device)), target)

    # ------------------------------------------------------------------ the outer step
    def step(self, forget_x, forget_y, retain_x, retain_y, generator: torch.Generator) -> dict:
        unet, params, opt = self.unet, self.params, self.optimizer

        # Phase 1: K forget-only Adam steps on the live optimizer, then the parameters are restored.
        saved = [p.detach().clone() for p in params]
        for _ in range(self.inner_steps):
            opt.zero_grad()
            loss = self._forget_loss(forget_x, forget_y, generator)
            loss.backward()
            opt.step()
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.copy_(s)
        del saved
        gc.collect()
        _empty_cache()

        # Phase 2: separate forwards, two autograd.grad calls with retained graphs, λ from flattened grads.
        loss_f = self._forget_loss(forget_x, forget_y, generator)
        rx_t, rt, rnoise = self._noised(retain_x, generator)
        loss_r = F.mse_loss(self._predict(rx_t, rt, retain_y.to(self.device)), rnoise)
        g_f = torch.autograd.grad(loss_f, params, retain_graph=True, allow_unused=True)
        g_r = torch.autograd.grad(loss_r, params, retain_graph=True, allow_unused=True)
        flat_f = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(g_f, params)])
        flat_r = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(g_r, params)])
        cos = F.cosine_similarity(flat_r, flat_f, dim=0)
        lam = max(0.0, self.eta - cos.item())
        del g_f, g_r, flat_f, flat_r
        gc.collect()
        _empty_cache()

        # Phase 3: a third backward through both retained graphs for the update.
        opt.zero_grad()
        (loss_r + lam * loss_f).backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip) if self.grad_clip > 0 else torch.tensor(0.0)
        opt.step()
        if self.ema is not None:
            with torch.no_grad():
                for n, p in unet.named_parameters():
                    self.ema[n].mul_(self.ema_decay).add_(p.detach(), alpha=1 - self.ema_decay)
        gc.collect()
        _empty_cache()
        return {"loss_forget": loss_f.item(), "loss_retain": loss_r.item(), "lambda": lam,
                "grad_norm": float(grad_norm)}

    def ema_state(self) -> dict[str, torch.Tensor] | None:
        """The EMA weights by parameter name (the model the authors evaluate), or None."""
        return self.ema


# ---------------------------------------------------------------------- the authors' default code path
def authors_schedule(n_forget: int, batch: int, inner_passes: int = 2, rem_num: int = 4500) -> dict:
    """The authors' round for a forget set of ``n_forget`` rows at batch ``batch`` (module docstring):
    ``outer_per_round`` = min(ceil(n_f/B), floor(rem_num/B) + 1); ``inner_steps_per_round`` = K·ceil(n_f/B)
    (the steps run); ``inner_full_per_round`` = K·n_f/B (the same work in full-batch steps, the partial last
    batch counted by its rows); ``inner_per_outer`` = the latter ÷ ``outer_per_round`` (r in the formula)."""
    if n_forget < 1 or batch < 1:
        raise ValueError(f"authors_schedule needs n_forget >= 1 and batch >= 1, got {n_forget}, {batch}")
    batches = -(-n_forget // batch)
    outer = min(batches, rem_num // batch + 1)
    inner_full = inner_passes * n_forget / batch
    return {"n_forget": n_forget, "batch": batch, "forget_batches": batches, "outer_per_round": outer,
            "inner_steps_per_round": inner_passes * batches, "inner_full_per_round": inner_full,
            "inner_per_outer": inner_full / outer}


class ReferenceEraseDiffDefault:
    """The authors' default EraseDiff code path (``--lambda_bome 0.1``; module docstring): a benchmark baseline.

    Two ways to drive it:

    - **as their loop** (a forgetting comparison): :meth:`setup` with the forget set (``forget_images``,
      ``forget_labels``), then :meth:`step` once per outer step with that step's forget and retain batch. When
      a round is due (the first call, then every ``outer_per_round`` calls) ``step`` first saves θ, runs K
      passes over the whole forget set (shuffled by ``generator``, batches of ``batch``, one live Adam step each)
      and restores θ; then it takes the outer step. So N calls advance the model exactly as N outer steps of
      their schedule (with that many rounds' inner steps) do.
    - **piece by piece** (timing): :meth:`save_params`, :meth:`inner_step`, :meth:`restore_params`,
      :meth:`outer_step`.
    """

    def setup(
        self,
        unet: torch.nn.Module,
        scheduler,
        retained_classes: Sequence[int],
        forget_images: torch.Tensor | None = None,
        forget_labels: torch.Tensor | None = None,
        batch: int = 32,
        lr: float = 1e-4,
        lam: float = 0.1,
        inner_passes: int = 2,
        rem_num: int = 4500,
        grad_clip: float = 1.0,
        ema_decay: float = 0.99,
        predict: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> "ReferenceEraseDiffDefault":
        self.unet = unet
        self.device = next(unet.parameters()).device
        self.params = list(unet.parameters())
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.Adam(self.params, lr=lr)
        self.retained = torch.tensor(sorted(set(int(c) for c in retained_classes)), dtype=torch.long)
        self.lam, self.inner_passes, self.rem_num = lam, inner_passes, rem_num
        self.grad_clip, self.ema_decay, self.batch = grad_clip, ema_decay, batch
        self.alphas_cumprod = scheduler.alphas_cumprod.detach().to(self.device, torch.float32)
        self.T = int(scheduler.config.num_train_timesteps)
        self._predict = predict or (lambda x, t, y: self.unet(x, t, class_labels=y).sample)
        self.ema = {n: p.detach().clone() for n, p in unet.named_parameters()} if ema_decay > 0 else None
        self.forget_images, self.forget_labels = forget_images, forget_labels
        self.schedule = (authors_schedule(len(forget_images), batch, inner_passes, rem_num)
                         if forget_images is not None else None)
        self.inner_loss_sum, self.inner_rows = None, 0  # their AverageMeter: a tensor sum, graph attached
        self.outer_done = 0  # outer steps taken since the last round started
        self._saved = None
        return self

    # ------------------------------------------------------------------ pieces
    def _noised(self, x0: torch.Tensor, generator: torch.Generator, uniform: bool = False):
        n = x0.shape[0]
        half = torch.randint(0, self.T, (n // 2 + 1,), generator=generator)
        t = torch.cat([half, self.T - half - 1])[:n].to(self.device)  # antithetic timesteps, as their code
        noise = torch.randn(x0.shape, generator=generator).to(self.device)
        a = self.alphas_cumprod[t].view(n, *([1] * (x0.dim() - 1)))
        x0 = x0.to(self.device, torch.float32)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise, t, noise

    def _forget_loss(self, fx, fy, generator):
        """L_u with the pseudo-label target: its forward runs with a graph that is then detached (their code)."""
        x_t, t, _ = self._noised(fx, generator)
        c = self.retained[torch.randint(0, len(self.retained), (1,), generator=generator)].item()
        target = self._predict(x_t, t, torch.full((x_t.shape[0],), c, dtype=torch.long, device=self.device)).detach()
        return F.mse_loss(self._predict(x_t, t, fy.to(self.device)), target)

    def save_params(self) -> None:
        """θ_i: a clone of every parameter (their ``get_param``), then the cache emptied and ``gc.collect()``."""
        with torch.no_grad():
            self._saved = [p.clone() for p in self.params]
        _empty_cache()
        gc.collect()
        self.inner_loss_sum, self.inner_rows = None, 0

    def inner_step(self, forget_x, forget_y, generator: torch.Generator) -> float:
        """One Adam step on L_f on the live optimizer (no clip), as one batch of an inner pass."""
        loss = self._forget_loss(forget_x, forget_y, generator)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        n = forget_x.shape[0]
        self.inner_loss_sum = loss * n if self.inner_loss_sum is None else self.inner_loss_sum + loss * n
        self.inner_rows += n
        _empty_cache()
        gc.collect()
        return float(loss.detach())

    def restore_params(self) -> None:
        """θ ← θ_i (their ``set_param``), then the cache emptied and ``gc.collect()``."""
        with torch.no_grad():
            for p, s in zip(self.params, self._saved):
                p.copy_(s)
        self._saved = None
        _empty_cache()
        gc.collect()

    def outer_step(self, forget_x, forget_y, retain_x, retain_y, generator: torch.Generator) -> dict:
        """The outer step: L_r, L_u (+ its target forward), one backward of L_r + λ·L_q, clip, Adam, EMA."""
        rx_t, rt, rnoise = self._noised(retain_x, generator)
        loss_r = F.mse_loss(self._predict(rx_t, rt, retain_y.to(self.device)), rnoise)
        loss_u = self._forget_loss(forget_x, forget_y, generator)
        inner_avg = (self.inner_loss_sum / self.inner_rows).detach() if self.inner_rows else torch.zeros((), device=self.device)
        loss_q = loss_u - inner_avg
        loss = loss_r + self.lam * loss_q
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip) if self.grad_clip > 0 else torch.tensor(0.0)
        self.optimizer.step()
        if self.ema is not None:
            with torch.no_grad():
                for n, p in self.unet.named_parameters():  # their EMA helper: a new tensor per parameter
                    self.ema[n] = (1.0 - self.ema_decay) * p.data + self.ema_decay * self.ema[n]
        _empty_cache()
        gc.collect()
        self.outer_done += 1
        return {"loss_forget": loss_u.item(), "loss_retain": loss_r.item(), "lambda": self.lam,
                "grad_norm": float(grad_norm)}

    # ------------------------------------------------------------------ their loop, one outer step at a time
    def run_inner_passes(self, generator: torch.Generator) -> int:
        """A round's start: save θ, K shuffled passes over the forget set (live Adam steps), restore θ.
        Returns the number of inner steps taken."""
        if self.forget_images is None:
            raise ValueError("ReferenceEraseDiffDefault: pass forget_images/forget_labels to setup() to run rounds")
        self.save_params()
        taken = 0
        n = len(self.forget_images)
        for _ in range(self.inner_passes):
            self.inner_loss_sum, self.inner_rows = None, 0  # a fresh meter per pass, as their loop
            order = torch.randperm(n, generator=generator)
            for i in range(0, n, self.batch):
                idx = order[i:i + self.batch]
                self.inner_step(self.forget_images[idx], self.forget_labels[idx], generator)
                taken += 1
        self.restore_params()
        self.outer_done = 0
        return taken

    def step(self, forget_x, forget_y, retain_x, retain_y, generator: torch.Generator) -> dict:
        """One outer step of their schedule, preceded by the round's K inner passes when a round is due."""
        if self.schedule is None:
            raise ValueError("ReferenceEraseDiffDefault.step runs their schedule: pass forget_images/forget_labels "
                             "to setup() (or drive it with inner_step/outer_step)")
        inner = self.run_inner_passes(generator) if self.outer_done % self.schedule["outer_per_round"] == 0 else 0
        out = self.outer_step(forget_x, forget_y, retain_x, retain_y, generator)
        out["inner_steps"] = inner
        return out

    def ema_state(self) -> dict[str, torch.Tensor] | None:
        """The EMA weights by parameter name (the model the authors evaluate), or None."""
        return self.ema


__all__ = ["ReferenceEraseDiffDefault", "ReferenceEraseDiffAdaptive", "authors_schedule"]
