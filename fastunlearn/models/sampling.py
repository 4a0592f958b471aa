"""Deterministic DDIM sampling for pixel-space UNets (the evaluation sampler).

Evaluation draws thousands of images before and after unlearning, so it uses DDIM
(Song et al., 2021) with eta = 0 and few steps rather than the 1,000-step ancestral DDPM
sampler: with eta = 0 the only randomness is the initial noise, which is drawn on the CPU
from the caller's ``torch.Generator``. The same generator therefore gives the same images
on every device and for every ``batch_size``, which is what makes "before" and "after"
comparable sample by sample.

Classifier-free guidance (Ho & Salimans, 2022): ε̂ = ε(x, ∅) + w·(ε(x, c) − ε(x, ∅)), with
∅ the model's null label (``num_class_embeds - 1`` for the zoo DDPM). ``w = 1`` is the
plain conditional model and costs one UNet call per step; the unlearning metrics use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

import torch
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from tqdm.auto import tqdm

SchedulerLike = SchedulerMixin | Mapping[str, Any] | str | PathLike


def make_ddim_scheduler(scheduler_config_or_scheduler: SchedulerLike) -> DDIMScheduler:
    """A DDIM scheduler (eta 0 at step time) with the noise schedule of the given one.

    Accepts a scheduler instance, its config mapping, or a directory holding
    ``scheduler_config.json`` (a pipeline's ``scheduler/`` folder).
    """
    if isinstance(scheduler_config_or_scheduler, SchedulerMixin):
        return DDIMScheduler.from_config(scheduler_config_or_scheduler.config)
    if isinstance(scheduler_config_or_scheduler, Mapping):
        return DDIMScheduler.from_config(dict(scheduler_config_or_scheduler))
    if isinstance(scheduler_config_or_scheduler, (str, PathLike)):
        return DDIMScheduler.from_pretrained(scheduler_config_or_scheduler)
    raise TypeError(
        "scheduler_config_or_scheduler must be a diffusers scheduler, its config (a mapping) "
        f"or a directory path; got {type(scheduler_config_or_scheduler).__name__}"
    )


def _labels_tensor(
    class_labels: torch.Tensor | Sequence[int] | int | None, n: int
) -> torch.Tensor | None:
    if class_labels is None:
        return None
    if isinstance(class_labels, int):
        return torch.full((n,), class_labels, dtype=torch.long)
    labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1).cpu()
    if labels.numel() == 1 and n != 1:
        return labels.expand(n).clone()
    if labels.numel() != n:
        raise ValueError(f"class_labels has {labels.numel()} entries but n = {n} samples were asked for")
    return labels


@torch.inference_mode()
def ddim_sample(
    unet: torch.nn.Module,
    scheduler_config_or_scheduler: SchedulerLike,
    n: int,
    class_labels: torch.Tensor | Sequence[int] | int | None = None,
    steps: int = 50,
    guidance_scale: float = 1.0,
    null_label: int | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = False,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw ``n`` images with DDIM (eta 0) from a diffusers ``UNet2DModel``-like UNet.

    Args:
        unet: called as ``unet(x, t, class_labels=...)`` returning ``.sample`` (ε prediction).
        scheduler_config_or_scheduler: the training noise schedule (see :func:`make_ddim_scheduler`).
        n: number of images.
        class_labels: ``None`` (unconditional), one int for all, or ``n`` labels. For a
            class-conditional UNet, ``None`` means "the null label" and needs ``null_label``.
        steps: DDIM steps.
        guidance_scale: classifier-free guidance weight ``w``; ``1.0`` disables guidance.
        null_label: the label of the unconditional class (required for guidance and for
            unconditional samples of a class-conditional UNet).
        generator: CPU generator of the initial noise (all ``n`` noises are drawn up front,
            so results do not depend on ``batch_size`` or ``device``).
        batch_size: images per UNet call (halved internally when guidance doubles the batch).
        device: where the UNet runs; default: the UNet's device.
        progress: show a progress bar over batches.
        noise: the initial noise ``[n, C, H, W]`` (then ``generator`` is not used); default: drawn from
            ``generator``.

    Returns:
        float32 ``[n, C, H, W]`` on the CPU, clamped to [-1, 1].
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    cfg = unet.config
    channels, size = int(cfg.in_channels), cfg.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    conditional = getattr(cfg, "num_class_embeds", None) is not None
    labels = _labels_tensor(class_labels, n)
    if labels is not None and not conditional:
        raise ValueError("class_labels were given but the UNet is unconditional (no num_class_embeds)")
    if conditional and labels is None:
        if null_label is None:
            raise ValueError(
                "unconditional samples from a class-conditional UNet need null_label "
                f"(the zoo DDPM's is num_class_embeds - 1 = {int(cfg.num_class_embeds) - 1})"
            )
        labels = torch.full((n,), null_label, dtype=torch.long)
    guided = guidance_scale != 1.0
    if guided and (not conditional or null_label is None):
        raise ValueError("classifier-free guidance (guidance_scale != 1) needs a class-conditional UNet and null_label")

    device = torch.device(device) if device is not None else next(unet.parameters()).device
    dtype = next(unet.parameters()).dtype
    scheduler = make_ddim_scheduler(scheduler_config_or_scheduler)
    scheduler.set_timesteps(steps)
    if noise is None:
        noise = torch.randn((n, channels, height, width), generator=generator, dtype=torch.float32)
    elif tuple(noise.shape) != (n, channels, height, width):
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {(n, channels, height, width)}")
    per_call = max(1, batch_size // 2) if guided else max(1, batch_size)
    was_training = unet.training
    unet.eval()
    out: list[torch.Tensor] = []
    try:
        for start in tqdm(range(0, n, per_call), disable=not progress, desc="ddim"):
            x = noise[start : start + per_call].to(device=device, dtype=dtype)
            y = labels[start : start + per_call].to(device) if labels is not None else None
            if guided:
                y = torch.cat([y, torch.full_like(y, null_label)])
            for t in scheduler.timesteps:
                x_in = torch.cat([x, x]) if guided else x
                t_in = torch.full((x_in.shape[0],), int(t), device=device, dtype=torch.long)
                eps = unet(x_in, t_in, class_labels=y).sample
                if guided:
                    eps_c, eps_u = eps.chunk(2)
                    eps = eps_u + guidance_scale * (eps_c - eps_u)
                x = scheduler.step(eps, t, x, eta=0.0).prev_sample
            out.append(x.float().clamp_(-1.0, 1.0).cpu())
    finally:
        unet.train(was_training)
    if not out:
        return torch.empty((0, channels, height, width))
    return torch.cat(out)


__all__ = ["ddim_sample", "make_ddim_scheduler"]
