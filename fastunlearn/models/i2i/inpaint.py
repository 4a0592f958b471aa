"""The Palette-style conditional diffusion inpainter: :class:`InpaintAdapter` over a diffusers ``UNet2DModel``,
and :func:`build_tiny_inpaint` for tests."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from fastunlearn.errors import UserInputError
from fastunlearn.models.i2i.base import DEFAULT_MASK, SIDECAR, I2IAdapter
from fastunlearn.models.masks import Mask, parse_mask

_INPAINT_ENCODER = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.")
_INPAINT_DECODER = ("up_blocks.", "conv_norm_out.", "conv_out.")


class _UNetEncoder(torch.nn.Module):
    """The encoder half of a ``UNet2DModel`` — its own ``conv_in``, ``time_proj``, ``time_embedding``,
    ``down_blocks`` and ``mid_block`` modules (shared, not copied) — run exactly as ``UNet2DModel.forward`` runs
    them (diffusers 0.42: centring, the time embedding in the model's dtype, the down blocks' residual outputs,
    the mid block)."""

    def __init__(self, unet: Any):
        super().__init__()
        self.conv_in = unet.conv_in
        self.time_proj = unet.time_proj
        self.time_embedding = unet.time_embedding
        self.down_blocks = unet.down_blocks
        self.mid_block = unet.mid_block
        self.center_input_sample = bool(unet.config.center_input_sample)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor) -> list[torch.Tensor]:
        if self.center_input_sample:
            sample = 2 * sample - 1.0
        dtype = self.conv_in.weight.dtype
        emb = self.time_embedding(self.time_proj(timesteps).to(dtype=dtype))
        h = self.conv_in(sample)
        features = [h]
        for block in self.down_blocks:
            h, res = block(hidden_states=h, temb=emb)
            features.extend(res)
        if self.mid_block is not None:
            h = self.mid_block(h, emb)
            features.append(h)
        return features


class InpaintAdapter(I2IAdapter):
    """A Palette-style conditional diffusion inpainter: ``UNet2DModel`` (ε-prediction) + ``DDPMScheduler``.

    **Input.** For an image x ([-1, 1], ``[N, C, H, W]``), a mask m (1 = generate) and a draw (t, ε), the UNet
    sees ``[x_t, m̄ ⊙ x, m]`` (2C + 1 channels) with x_t = m ⊙ (√ᾱ_t x + √(1 − ᾱ_t) ε) + (1 − m) ⊙ x — noise only in
    the hole, the known pixels clean (Palette's ``y_noisy * mask + (1 - mask) * y_0``) — and ``m̄ ⊙ x`` the masked
    image with the hole at 0 (:meth:`Mask.apply`). It predicts ε (C channels); the training loss is over the hole.

    **Encoder features** (:meth:`encoder_features`, names in :meth:`feature_names`): the output of ``conv_in``, every
    down block's residual outputs (each resnet's — or its attention's, where the block has attention — and each
    downsampler's), and the mid block's output: every skip connection the decoder reads, plus the bottleneck.
    These are the authors' Palette features (their ``return_feat``: every input block's output and the middle
    block's). The authors' loss sums a mean-squared error *per feature map*; :meth:`encode` concatenates the maps
    with map k scaled by √(F / n_k) (n_k its elements per row, F their sum), so that the mean of the squared
    difference over a row's F features is exactly Σ_k mean_k (the authors' per-map sum) and every map weighs the
    same whatever its resolution. The unlearning input is Palette's: a random timestep and noise per row, drawn
    once and shared by student and teacher (:meth:`encoder_noise`).

    Args:
        unet: the denoiser, ``in_channels = 2 · out_channels + 1``, without class embedding.
        scheduler: its training schedule (ε-prediction); default: diffusers' DDPM default.
        mask: the model's mask (default ``center:8``).
    """

    arch = "inpaint"

    def __init__(self, unet: Any, scheduler: Any = None, mask: "str | Mask" = DEFAULT_MASK):
        from diffusers import DDPMScheduler, UNet2DModel

        if not isinstance(unet, UNet2DModel):
            raise UserInputError(f"InpaintAdapter needs a diffusers UNet2DModel, got {type(unet).__name__}")
        cfg = unet.config
        c_in, c_out = int(cfg.in_channels), int(cfg.out_channels)
        if c_in != 2 * c_out + 1:
            raise UserInputError(f"an inpainting UNet takes [noisy image, masked image, mask]: in_channels must be "
                                 f"2 × out_channels + 1 = {2 * c_out + 1}, this one has in_channels={c_in}, "
                                 f"out_channels={c_out}")
        if unet.class_embedding is not None:
            raise UserInputError("an inpainting UNet completes from the visible pixels alone; this one has a class "
                                 "embedding (num_class_embeds / class_embed_type), which the inpainter does not use")
        skips = [i for i, b in enumerate(unet.down_blocks) if hasattr(b, "skip_conv")]
        if skips:
            raise UserInputError(f"down block {skips[0]} ({type(unet.down_blocks[skips[0]]).__name__}) has a skip "
                                 "image path; the inpainter's encoder/decoder split supports the standard blocks only")
        scheduler = scheduler if scheduler is not None else DDPMScheduler()
        prediction = scheduler.config.get("prediction_type", "epsilon")
        if prediction != "epsilon":
            raise UserInputError(f"only epsilon-prediction inpainters are supported; this scheduler predicts "
                                 f"{prediction!r}")
        self.model = unet
        self.scheduler = scheduler
        alphas = scheduler.alphas_cumprod.detach().to(torch.float32)
        self._sqrt_ab = alphas.sqrt()
        self._sqrt_1mab = (1.0 - alphas).sqrt()
        self.mask = parse_mask(mask, self.image_shape)
        self._check_split()

    # a UNet is what the engine's fast path (torch.compile, channels-last, parameter counts) reads
    @property
    def unet(self) -> Any:
        return self.model

    @unet.setter
    def unet(self, value: Any) -> None:
        self.model = value

    @property
    def image_shape(self) -> tuple[int, int, int]:
        size = self._module.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(self._module.config.out_channels), int(h), int(w)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def _scope_prefixes(self) -> dict[str, tuple[str, ...]]:
        return {"encoder": _INPAINT_ENCODER, "decoder": _INPAINT_DECODER}

    def feature_names(self) -> list[str]:
        """The module whose output each of :meth:`encoder_features` is, in order (names in the UNet)."""
        names = ["conv_in"]
        for i, block in enumerate(self._module.down_blocks):
            attentions = getattr(block, "attentions", None)
            for j in range(len(block.resnets)):
                names.append(f"down_blocks.{i}.attentions.{j}" if attentions else f"down_blocks.{i}.resnets.{j}")
            for j in range(len(block.downsamplers or [])):
                names.append(f"down_blocks.{i}.downsamplers.{j}")
        if self._module.mid_block is not None:
            names.append("mid_block")
        return names

    # ------------------------------------------------------------------ inputs
    def encoder_noise(self, n: int, generator: torch.Generator, rows: slice | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(t, ε)``: t ~ U{0..T−1} ``[n]`` and ε ~ N(0, I) ``[n, C, H, W]``, drawn on the CPU from ``generator`` in
        that order, then ``rows`` kept (a process's share of a global batch) and moved to the model's device."""
        t = torch.randint(0, self.num_train_timesteps, (n,), generator=generator)
        noise = torch.randn((n, *self.image_shape), generator=generator, dtype=torch.float32)
        if rows is not None and rows != slice(None):
            t, noise = t[rows], noise[rows]
        return t.to(self.device), noise.to(self.device)

    def model_input(self, x: torch.Tensor, mask: "str | Mask | None", t: torch.Tensor,
                    noise: torch.Tensor) -> torch.Tensor:
        """``[x_t, m̄ ⊙ x, m]`` (``[N, 2C + 1, H, W]``) — see the class docstring."""
        m = self._mask(mask)
        self.check_images(x)
        n = x.shape[0]
        if not isinstance(t, torch.Tensor) or not isinstance(noise, torch.Tensor):
            raise UserInputError("the inpainter encodes a noised image: give the timesteps t and the noise, drawn "
                                 "with encoder_noise(n, generator)")
        if t.shape != (n,) or tuple(noise.shape) != tuple(x.shape):
            raise UserInputError(f"t must be [{n}] and noise [{n}, {', '.join(map(str, x.shape[1:]))}] for {n} images; "
                                 f"got t {list(t.shape)} and noise {list(noise.shape)}")
        device = self.device
        x = x.to(device=device, dtype=torch.float32)
        t = t.to(device)
        shape = (n, 1, 1, 1)
        noisy = self._sqrt_ab.to(device)[t].view(shape) * x + self._sqrt_1mab.to(device)[t].view(shape) * noise.to(
            device=device, dtype=torch.float32)
        x_t = m.paste(noisy, x)
        return torch.cat([x_t, m.apply(x), m.tensor(n, device=device)], 1)

    # ------------------------------------------------------------------ encoder
    def _encoder_module(self) -> torch.nn.Module:
        return _UNetEncoder(self._module)

    def _features(self, encoder: torch.nn.Module, x: torch.Tensor, mask: "str | Mask | None",
                  t: torch.Tensor | None, noise: torch.Tensor | None) -> list[torch.Tensor]:
        inputs = self.model_input(x, mask, t, noise)
        dtype = encoder.conv_in.weight.dtype
        return encoder(inputs.to(device=encoder.conv_in.weight.device, dtype=dtype),
                       t.to(encoder.conv_in.weight.device))

    def _flatten(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        sizes = [f[0].numel() for f in features]
        total = sum(sizes)
        return torch.cat([f.flatten(1) * math.sqrt(total / k) for f, k in zip(features, sizes)], 1)

    # ------------------------------------------------------------------ the generator
    def training_pair(self, x: torch.Tensor, mask: "str | Mask | None" = None, t: torch.Tensor | None = None,
                      noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m ⊙ ε̂_θ([x_t, m̄ ⊙ x, m], t), m ⊙ ε)``: the denoising loss terms of Palette's inpainting (mean of the
        squared difference × HW/|hole| is the MSE over the hole)."""
        inputs = self.model_input(x, mask, t, noise)
        m = self._mask(mask).tensor(x.shape[0], device=inputs.device)
        eps = self.model(inputs, t.to(inputs.device)).sample
        return eps * m.to(eps.dtype), noise.to(device=inputs.device, dtype=eps.dtype) * m.to(eps.dtype)

    @torch.inference_mode()
    def complete(self, x: torch.Tensor, mask: "str | Mask | None" = None, generator: torch.Generator | None = None,
                 steps: int = 50, batch_size: int = 256, num: int = 1, noise: torch.Tensor | None = None,
                 progress: bool = False) -> torch.Tensor:
        """Completions of ``x`` (``[N, C, H, W]`` in [-1, 1]): DDIM (eta 0, ``steps`` steps, the model's schedule)
        from noise in the hole, each step's input ``[m ⊙ z_t + (1 − m) ⊙ x, m̄ ⊙ x, m]``; the known pixels of ``x``
        pasted back bitwise at the end, the generated ones clamped to [-1, 1]. float32 ``[N·num, C, H, W]`` on the
        CPU; row ``i·num + j`` is the j-th completion of input row i. All initial noise ``[N·num, C, H, W]`` is
        drawn up front from ``generator`` (or given as ``noise``), so a row depends only on it, not on
        ``batch_size`` or the device."""
        from tqdm.auto import tqdm

        from fastunlearn.models.sampling import make_ddim_scheduler

        m = self._mask(mask)
        self.check_images(x)
        self._check_num(num)
        known = x.detach().float().cpu().repeat_interleave(int(num), 0)
        total = known.shape[0]
        if noise is None:
            noise = torch.randn(known.shape, generator=generator, dtype=torch.float32)
        elif tuple(noise.shape) != tuple(known.shape):
            raise UserInputError(f"noise must be {list(known.shape)} ({total} completions), got {list(noise.shape)}")
        scheduler = make_ddim_scheduler(self.scheduler)
        scheduler.set_timesteps(int(steps))
        device, dtype = self.device, next(self._module.parameters()).dtype
        hole = m.tensor(1, device=device)
        was = self.model.training
        self.model.eval()
        out = []
        try:
            for start in tqdm(range(0, total, max(1, batch_size)), disable=not progress, desc="complete"):
                xb = known[start:start + batch_size].to(device)
                cond = torch.cat([m.apply(xb), hole.expand(xb.shape[0], -1, -1, -1)], 1).to(dtype)
                z = noise[start:start + batch_size].to(device)
                for t in scheduler.timesteps:
                    z_in = m.paste(z, xb)
                    tt = torch.full((xb.shape[0],), int(t), device=device, dtype=torch.long)
                    eps = self.model(torch.cat([z_in.to(dtype), cond], 1), tt).sample
                    z = scheduler.step(eps.float(), t, z_in, eta=0.0).prev_sample
                out.append(z.float().clamp(-1.0, 1.0).cpu())
        finally:
            self.model.train(was)
        generated = torch.cat(out) if out else known.clone()
        return m.paste(generated, known)

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str | Path) -> Path:
        """``unet/`` (``UNet2DModel.save_pretrained``, safetensors), ``scheduler/`` (its config) and the sidecar
        ``fastunlearn.json`` (``{"adapter": "i2i", "arch": "inpaint", "mask": ..., "image_shape": ...}``).
        ``UNet2DModel.from_pretrained(directory, subfolder="unet")`` loads the UNet back; :func:`load_i2i` the
        adapter."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._module.save_pretrained(directory / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(directory / "scheduler")
        (directory / SIDECAR).write_text(json.dumps(self._sidecar(), indent=2) + "\n")
        return directory


def build_tiny_inpaint(seed: int = 0, size: int = 16, channels: int = 1, mask: str = DEFAULT_MASK) -> InpaintAdapter:
    """A random 16×16 Palette-style inpainter (two levels of 4/8 channels, attention at the bottom; ~12K
    parameters) and the default DDPM schedule: real code paths in milliseconds."""
    from diffusers import DDPMScheduler, UNet2DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DModel(
            sample_size=size, in_channels=2 * channels + 1, out_channels=channels, block_out_channels=(4, 8),
            layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=2, attention_head_dim=4,
        )
    return InpaintAdapter(unet, DDPMScheduler(num_train_timesteps=1000), mask=mask)
