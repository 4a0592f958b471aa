"""EraseDiff written out in plain PyTorch, for the tests to compare the method against.

:class:`PlainEraseDiff` owns an independent deep copy of the UNet (taken before the method touches it) and
runs EraseDiff's step the way METHODS.md states it: the step's random draws redrawn from the same seeded
generator (the draw order of ``EraseDiff._forget_inputs`` / ``_retain_inputs`` and
``DDPMAdapter.noised_batch``: forget side first — [u,] t, [ε, c′] — then the retain side t, ε), the
losses as plain MSEs, ∇L_f and ∇L_r by ``torch.autograd.grad``, λ by the rule's formula, g = ∇L_r + λ∇L_f,
``torch.nn.utils.clip_grad_norm_``, one ``torch.optim.Adam`` step. Nothing here calls the library's ops,
flat buffers or adapter.

:func:`record_erasediff_step` captures what the method computed in a step: the two flat buffers handed to
``bilevel_combine`` (∇L_r in the optimizer's buffer and ∇L_f in ``g_forget``, before the in-place combine),
the λ it returned, and the per-parameter gradient the optimizer read (after the clip).
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch


def lambda_by_rule(g_r: list[torch.Tensor], g_f: list[torch.Tensor], rule: str, eta: float) -> float:
    """λ from METHODS.md, in fp64: bome max(0, η − ⟨g_r,g_f⟩/‖g_f‖²), cosine max(0, η − cos), fixed η;
    0 when ‖g_f‖ = 0."""
    r = torch.cat([g.reshape(-1) for g in g_r]).double()
    f = torch.cat([g.reshape(-1) for g in g_f]).double()
    dot, nf, nr = float(r @ f), float(f @ f), float(r @ r)
    if nf == 0.0:
        return 0.0
    if rule == "fixed":
        return float(eta)
    if rule == "bome":
        return max(0.0, eta - dot / nf)
    if rule == "cosine":
        return max(0.0, eta - dot / (nf ** 0.5 * nr ** 0.5)) if nr > 0 else max(0.0, eta)
    raise ValueError(rule)


@dataclass
class StepRecord:
    """One step of :class:`PlainEraseDiff` (per-parameter tensors in ``model.parameters()`` order)."""

    g_f: list[torch.Tensor]
    g_r: list[torch.Tensor]
    lam: float
    g: list[torch.Tensor]  #: ∇L_r + λ∇L_f after the clip: what Adam reads
    norm: float  #: ‖∇L_r + λ∇L_f‖ before the clip
    loss_f: float
    loss_r: float


class PlainEraseDiff:
    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor, *, lr: float, rule: str, eta: float,
                 grad_clip: float, target: str, pseudo_classes: list[int] | None = None,
                 betas: tuple[float, float] = (0.9, 0.999)):
        self.model = copy.deepcopy(unet)
        self.params = list(self.model.parameters())
        for p in self.params:
            p.requires_grad_(True)
            p.grad = None
        self.opt = torch.optim.Adam(self.params, lr=lr, betas=betas)
        ab = alphas_cumprod.detach().to(torch.float32)
        self.sqrt_ab, self.sqrt_1mab, self.T = ab.sqrt(), (1.0 - ab).sqrt(), ab.numel()
        self.rule, self.eta, self.clip, self.target = rule, eta, grad_clip, target
        self.pseudo = torch.tensor(sorted(pseudo_classes or []), dtype=torch.long)

    def _noise(self, x0: torch.Tensor, gen: torch.Generator, noise: torch.Tensor | None = None):
        t = torch.randint(0, self.T, (x0.shape[0],), generator=gen)
        if noise is None:
            noise = torch.randn(x0.shape, generator=gen, dtype=torch.float32)
        shape = (-1,) + (1,) * (x0.dim() - 1)
        return self.sqrt_ab[t].view(shape) * x0 + self.sqrt_1mab[t].view(shape) * noise, t, noise

    def _grad(self, loss: torch.Tensor) -> list[torch.Tensor]:
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads)]

    def step(self, x_f: torch.Tensor, y_f: torch.Tensor, x_r: torch.Tensor, y_r: torch.Tensor,
             gen: torch.Generator) -> StepRecord:
        unet = self.model
        if self.target == "uniform":
            u = torch.rand(x_f.shape, generator=gen)
            xt_f, t_f, _ = self._noise(x_f, gen, noise=u)
            target_f = u
        else:
            xt_f, t_f, _ = self._noise(x_f, gen)
            pick = torch.randint(0, len(self.pseudo), (x_f.shape[0],), generator=gen)
            with torch.no_grad():
                target_f = unet(xt_f, t_f, class_labels=self.pseudo[pick]).sample
        xt_r, t_r, eps_r = self._noise(x_r, gen)

        loss_f = ((unet(xt_f, t_f, class_labels=y_f).sample - target_f) ** 2).mean()
        g_f = self._grad(loss_f)
        loss_r = ((unet(xt_r, t_r, class_labels=y_r).sample - eps_r) ** 2).mean()
        g_r = self._grad(loss_r)
        lam = lambda_by_rule(g_r, g_f, self.rule, self.eta)
        for p, gr, gf in zip(self.params, g_r, g_f):
            p.grad = gr + lam * gf
        norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.clip if self.clip > 0 else float("inf")))
        g = [p.grad.detach().clone() for p in self.params]
        self.opt.step()
        return StepRecord(g_f=[x.detach() for x in g_f], g_r=[x.detach() for x in g_r], lam=lam, g=g, norm=norm,
                          loss_f=float(loss_f.detach()), loss_r=float(loss_r.detach()))


@dataclass
class MethodRecord:
    """What the method handed to ``bilevel_combine`` and what its optimizer read, per step."""

    g_outer: list[torch.Tensor] = field(default_factory=list)  #: flat ∇L_r (the optimizer's buffer, pre-combine)
    g_inner: list[torch.Tensor] = field(default_factory=list)  #: flat ∇L_f (``g_forget``)
    lam: list[float] = field(default_factory=list)
    adam_grads: list[list[torch.Tensor]] = field(default_factory=list)  #: per-parameter ``.grad`` at Adam


@contextlib.contextmanager
def record_erasediff_step(method, monkeypatch):
    """Record the inputs of ``bilevel_combine`` as EraseDiff calls it, and the gradients Adam reads."""
    import fastunlearn.methods.erasediff as erasediff

    rec = MethodRecord()
    real = erasediff.bilevel_combine

    def combine(g_outer, g_inner, *args, **kwargs):
        rec.g_outer.append(g_outer.detach().clone())
        rec.g_inner.append(g_inner.detach().clone())
        out = real(g_outer, g_inner, *args, **kwargs)
        rec.lam.append(float(out[1]))
        return out

    def pre_step(optimizer, args, kwargs):
        rec.adam_grads.append([p.grad.detach().clone() for p in method.params])

    monkeypatch.setattr(erasediff, "bilevel_combine", combine)
    handle = method.optimizer.register_step_pre_hook(pre_step)
    try:
        yield rec
    finally:
        handle.remove()
