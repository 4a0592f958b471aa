"""Membership inference against a diffusion model: can its denoising loss tell training members apart?

A diffusion model fits its training images better than unseen images of the same kind, so its denoising
loss is lower on them (Matsumoto et al., 2023; Duan et al., 2023, "SecMI"; Carlini et al., 2023). With
ℓ_t(x₀) = 1/K Σ_{k=1..K} mean_pixels( ε_θ(√ᾱ_t x₀ + √(1−ᾱ_t) ε_k, t, y) − ε_k )² the per-timestep loss of
an image over K seeded noise draws, the attack score is the negative, timestep-normalised loss

    s(x₀) = − 1/|T| Σ_{t∈T} ℓ_t(x₀) / ℓ̄_t,     ℓ̄_t = the mean of ℓ_t over all scored images (members and not)

over fixed timesteps T. The draws are fixed (seeded), so "before" and "after" see the same noise and the
score is a deterministic function of the model. The AUC of s separating members (label 1) from
non-members (label 0) is computed by scikit-learn's ``roc_auc_score``:

- AUC ≈ 0.5: the model treats members like unseen images — nothing left to infer;
- AUC > 0.5: members have lower loss, the model still "remembers" them.

For unlearning, members are the forget set (train split) and non-members held-out images of the same
classes (the digits test split); a successful unlearning moves the AUC towards 0.5. (An AUC well below
0.5 — members now *worse* than unseen images — is itself a tell-tale sign of unlearning, the "Streisand
effect", which is why the report judges the distance |AUC − 0.5|.)

Why these defaults (measured on the digits DDPM, forget class 0: 142 members, 36 held-out):

- the ε-prediction loss is ~60× larger at t = 10 than at t = 500, so a plain mean over T is the small-t
  loss alone; dividing by ℓ̄_t lets every timestep count equally (the normalisation is the same for members
  and non-members, so it cannot manufacture a difference);
- K = 2 draws left so much noise in each image's score that the AUC of one model moved by ±0.06 between
  noise seeds (0.50–0.56 for the same model), more than unlearning moves it; K = 16 brings that below 0.01;
- T = (10, 25, 50, 100, 200, 300, 500): small and mid timesteps are the revealing ones (at large t the input
  is nearly pure noise and every image looks alike).

The AUC's standard error (Hanley & McNeil, 1982) is reported with it: with A the AUC, n₁ members, n₀
non-members, Q₁ = A/(2−A), Q₂ = 2A²/(1+A),
SE = √[(A(1−A) + (n₁−1)(Q₁−A²) + (n₀−1)(Q₂−A²)) / (n₁ n₀)]. With the digits test split (≈36 held-out
images per class) it is ≈0.05: it bounds how well the *population* AUC is known from so few held-out
images, while before/after differences on the same images and noise are paired and much less noisy.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

DEFAULT_TIMESTEPS: tuple[int, ...] = (10, 25, 50, 100, 200, 300, 500)
DEFAULT_N_NOISE: int = 16


def _split(samples: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``Tensor`` | ``(images, labels)`` | an object with ``.images`` and ``.labels`` → (images, labels)."""
    if isinstance(samples, torch.Tensor):
        return samples, None
    if isinstance(samples, (tuple, list)) and len(samples) == 2:
        return samples[0], samples[1]
    if hasattr(samples, "images"):
        return samples.images, getattr(samples, "labels", None)
    raise TypeError(f"expected images, (images, labels) or an object with .images; got {type(samples).__name__}")


@torch.no_grad()
def denoising_losses(
    adapter: Any,
    images: torch.Tensor,
    labels: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    n_noise: int = DEFAULT_N_NOISE,
    batch_size: int = 256,
    per_timestep: bool = False,
) -> torch.Tensor:
    """Per-sample denoising loss ``[N]`` (float32, CPU), averaged over ``timesteps`` × ``n_noise`` draws
    (``per_timestep=True``: ``[len(timesteps), N]``, averaged over the draws only).

    ``adapter`` needs ``scheduler.alphas_cumprod``, ``predict(x_t, t, labels)``, ``device`` and
    ``conditional`` (the :class:`~fastunlearn.models.ddpm.DDPMAdapter` contract). Noise is drawn on the CPU
    from ``generator`` (default: seeded with 0) so the result does not depend on the device.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    ab = adapter.scheduler.alphas_cumprod.detach().to(torch.float32).cpu()
    device = adapter.device
    n = images.shape[0]
    total = torch.zeros(len(timesteps), n, dtype=torch.float64)
    use_labels = labels is not None and getattr(adapter, "conditional", True)
    for i_t, t_val in enumerate(timesteps):
        t_val = int(t_val)
        if not 0 <= t_val < ab.numel():
            raise ValueError(f"timestep {t_val} is outside the model's schedule 0–{ab.numel() - 1}")
        a, s = float(ab[t_val].sqrt()), float((1 - ab[t_val]).sqrt())
        for _ in range(n_noise):
            noise = torch.randn(images.shape, generator=generator, dtype=torch.float32)
            for start in range(0, n, batch_size):
                sl = slice(start, start + batch_size)
                x0 = images[sl].to(device=device, dtype=torch.float32)
                eps = noise[sl].to(device)
                t = torch.full((x0.shape[0],), t_val, dtype=torch.long, device=device)
                y = labels[sl].to(device) if use_labels else None
                pred = adapter.predict(a * x0 + s * eps, t, y).float()
                total[i_t, sl] += (pred - eps).pow(2).flatten(1).mean(dim=1).double().cpu()
    total /= n_noise
    return (total if per_timestep else total.mean(dim=0)).float()


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley–McNeil (1982) standard error of an AUC from ``n_pos`` positives and ``n_neg`` negatives."""
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc**2) + (n_neg - 1) * (q2 - auc**2)) / (n_pos * n_neg)
    return float(max(var, 0.0) ** 0.5)


def membership_auc(
    adapter: Any,
    members: Any,
    non_members: Any,
    generator: torch.Generator | None = None,
    timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
    n_noise: int = DEFAULT_N_NOISE,
    batch_size: int = 256,
) -> dict[str, Any]:
    """AUC of the loss-based membership attack (see the module docstring).

    Args:
        adapter: the model (DDPMAdapter contract).
        members / non_members: images ``[N, C, H, W]`` in [-1, 1], optionally with labels: a tensor,
            an ``(images, labels)`` pair or an object with ``.images``/``.labels``. Labels condition a
            class-conditional model on each image's own class.
        generator: CPU generator of the noise draws (default: seeded with 0 — the same draws every call).

    Returns:
        ``auc``, ``auc_se`` (Hanley–McNeil standard error), ``n_members``, ``n_non_members``,
        ``mean_loss_members``, ``mean_loss_non_members`` (raw losses averaged over timesteps and draws),
        ``timesteps``, ``n_noise``, ``score`` (the statistic's name).
    """
    from sklearn.metrics import roc_auc_score

    m_images, m_labels = _split(members)
    n_images, n_labels = _split(non_members)
    if m_images.shape[0] < 1 or n_images.shape[0] < 1:
        raise ValueError(f"membership_auc needs members and non-members, got {m_images.shape[0]} and {n_images.shape[0]}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    kw = dict(generator=generator, timesteps=timesteps, n_noise=n_noise, batch_size=batch_size, per_timestep=True)
    per_t = torch.cat([denoising_losses(adapter, m_images, m_labels, **kw),
                       denoising_losses(adapter, n_images, n_labels, **kw)], dim=1)  # [T, members + non-members]
    n_m = m_images.shape[0]
    normalised = (per_t / per_t.mean(dim=1, keepdim=True).clamp_min(1e-12)).mean(dim=0)
    loss_m, loss_n = per_t[:, :n_m].mean(dim=0), per_t[:, n_m:].mean(dim=0)
    y_true = [1] * n_m + [0] * (per_t.shape[1] - n_m)
    score = (-normalised).tolist()  # lower (normalised) loss ⇒ more likely a member
    auc = float(roc_auc_score(y_true, score))
    return {"auc": auc, "auc_se": auc_standard_error(auc, loss_m.numel(), loss_n.numel()),
            "n_members": int(loss_m.numel()),
            "n_non_members": int(loss_n.numel()), "mean_loss_members": float(loss_m.mean()),
            "mean_loss_non_members": float(loss_n.mean()), "timesteps": [int(t) for t in timesteps],
            "n_noise": int(n_noise), "score": "timestep-normalised denoising loss"}


def heldout_non_members(forget_labels: torch.Tensor, split: str = "test") -> tuple[torch.Tensor, torch.Tensor] | None:
    """Held-out digits (the zoo's ``test`` split) of the classes present in ``forget_labels``.

    These were never trained on, so they are the non-members of the forget set's classes. Returns None
    when the forget set has no known labels (a folder of unlabelled images): there is no held-out set.
    """
    from fastunlearn.data.digits import load_digits_split

    classes = sorted({int(c) for c in forget_labels.tolist() if int(c) >= 0})
    if not classes:
        return None
    data = load_digits_split(split)
    keep = torch.isin(data.labels, torch.tensor(classes))
    return data.images[keep], data.labels[keep]


def forget_membership_auc(adapter: Any, forget_images: torch.Tensor, forget_labels: torch.Tensor,
                          **kwargs: Any) -> dict[str, Any] | None:
    """:func:`membership_auc` of the forget set against held-out test digits of its classes (None if unlabelled)."""
    held = heldout_non_members(forget_labels)
    if held is None:
        return None
    return membership_auc(adapter, (forget_images, forget_labels), held, **kwargs)


__all__ = ["membership_auc", "auc_standard_error", "denoising_losses", "heldout_non_members", "forget_membership_auc",
           "DEFAULT_TIMESTEPS", "DEFAULT_N_NOISE"]
