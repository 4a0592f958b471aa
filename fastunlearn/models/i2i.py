"""Image-to-image generators behind one Adapter contract (family ``"i2i"``): models that complete a masked image.

Li, Hsu, Chen & Marculescu (ICLR 2024, "Machine Unlearning for Image-to-Image Generative Models") unlearn such a
model at its **encoder** and keep its decoder frozen, so the adapter splits every model into the two and gives
the encoder's features for a masked image. Two architectures, each in its library's own layout:

- :class:`InpaintAdapter` — a Palette-style conditional diffusion inpainter (Saharia et al., 2022): a diffusers
  ``UNet2DModel`` whose input is ``[x_t, masked image, mask]`` (2C + 1 channels) and whose output is ε (C
  channels), with its ``DDPMScheduler``. Encoder = ``conv_in``, the time embedding, the down blocks and the mid
  block; decoder = the up blocks, ``conv_norm_out`` and ``conv_out``. Completion is DDIM from noise in the hole.
- :class:`MAEAdapter` — a masked autoencoder, transformers' ``ViTMAEForPreTraining`` (He et al., 2022) with
  ``norm_pix_loss=False`` so its reconstruction is pixels. Encoder = the ViT (``model.vit``); decoder = the MAE
  decoder. The fixed hole is given through the model's own ``noise`` argument (the hole's patches ordered last)
  and ``config.mask_ratio`` = hole patches / all patches, so the encoder sees exactly the visible patches.

The contract (both classes; ``mask`` is a spec such as ``"center:8"`` or a :class:`~fastunlearn.models.masks.Mask`,
None = the model's own mask, recorded in ``fastunlearn.json``):

- ``encoder_noise(n, generator, rows=None) -> (t, noise)`` — the per-row randomness of an encoding, drawn on the
  CPU from the caller's generator (``(None, None)`` for the MAE, whose encoding is deterministic). A student and
  its teacher encode with the *same* draw.
- ``encode(x, mask, t, noise) -> [N, F]`` — one flat feature row per image (see each class for what F holds);
  the unlearning objective is ``mean((encode_θ − encode_θ₀)²)`` over rows and features, so the fused
  ``ops.dual_noise_loss`` (forget rows, retain rows) computes it in one pass.
  ``encoder_features(x, mask, t, noise) -> list[Tensor]`` — the same features unflattened, exactly as the
  model's own forward computes them.
- ``frozen_encoder() -> FrozenEncoder`` — θ₀'s encoder alone (copies of the encoder modules only, no decoder),
  for the objective's targets.
- ``training_pair(x, mask, t, noise) -> (pred, target)`` — the generator's own training loss terms, both zero
  outside the hole (inpainter: ε̂ and ε; MAE: reconstructed and true pixels), for training and the paper's
  baselines.
- ``complete(x, mask, generator, steps, num=1) -> [N·num, C, H, W]`` — completions in [-1, 1] with the known
  pixels of ``x`` kept bitwise.
- ``parameters(scope)`` / ``named_parameters(scope)`` with scopes ``encoder``, ``decoder``, ``all`` (disjoint
  encoder and decoder; together every trainable parameter), ``scratch_copy``, ``save_pretrained``, ``state_dict``,
  ``to`` / ``train`` / ``eval`` / ``device``, ``check_images``, ``set_mask`` (another mask as the model's own) and
  ``network`` (the whole model, what the engine moves, compiles and checks).

:func:`load_i2i` reads a directory written by ``save_pretrained`` (``fastunlearn.json`` names the architecture);
:func:`build_tiny_inpaint` and :func:`build_tiny_mae` build 16×16×1 models of a few thousand parameters for tests.
"""
from __future__ import annotations

import abc
import copy
import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from fastunlearn.errors import UserInputError
from fastunlearn.models.masks import Mask, as_mask, parse_mask, patch_tiles
from fastunlearn.models.safe_loading import refuse_non_finite

SIDECAR = "fastunlearn.json"
SCOPES = ("all", "encoder", "decoder")
ARCHS = ("inpaint", "mae")
#: The mask of a model that records none (the paper's centre inpainting on the 16×16 digits).
DEFAULT_MASK = "center:8"

_INPAINT_ENCODER = ("conv_in.", "time_embedding.", "down_blocks.", "mid_block.")
_INPAINT_DECODER = ("up_blocks.", "conv_norm_out.", "conv_out.")
#: The MAE's fixed sin-cos position tables: parameters with ``requires_grad=False`` by design, in no scope.
_MAE_FIXED = ("vit.embeddings.position_embeddings", "decoder.decoder_pos_embed")


class FrozenEncoder:
    """The encoder of a model at the moment it was copied (θ₀), without its decoder: deep copies of the encoder
    modules only, ``requires_grad=False``, eval mode. :meth:`encode` / :meth:`encoder_features` are the adapter's
    methods of the same name with the weights of copy time, under ``torch.no_grad`` (equal up to float rounding:
    on the CPU, weights without gradients take other kernels, ~1e-6 apart)."""

    def __init__(self, owner: "I2IAdapter"):
        self._owner = owner
        self.module = copy.deepcopy(owner._encoder_module())
        self.module.requires_grad_(False)
        self.module.eval()

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def to(self, device: torch.device | str) -> "FrozenEncoder":
        self.module.to(device)
        return self

    @torch.no_grad()
    def encoder_features(self, x: torch.Tensor, mask: "str | Mask | None" = None, t: torch.Tensor | None = None,
                         noise: torch.Tensor | None = None) -> list[torch.Tensor]:
        return self._owner._features(self.module, x, mask, t, noise)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, mask: "str | Mask | None" = None, t: torch.Tensor | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        return self._owner._flatten(self.encoder_features(x, mask, t, noise))


class I2IAdapter(abc.ABC):
    """The contract both architectures share (see the module docstring): the mask, scopes, devices, modes, copies
    and the image checks here; the encoder, completion and saving in each subclass."""

    family = "i2i"
    arch = ""
    conditional = False
    null_label = None
    num_classes = None

    model: torch.nn.Module
    mask: Mask

    # ------------------------------------------------------------------ description
    @property
    @abc.abstractmethod
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the images the model completes."""

    @property
    def _module(self) -> torch.nn.Module:
        """The model itself (the module inside a ``torch.compile`` wrapper)."""
        return getattr(self.model, "_orig_mod", self.model)

    # the family-neutral name the engine reads (every adapter has one: the network it moves, compiles and checks)
    @property
    def network(self) -> torch.nn.Module:
        """The whole model (``model``: the UNet, the ViTMAEForPreTraining), possibly a ``torch.compile``
        wrapper; assignable."""
        return self.model

    @network.setter
    def network(self, value: torch.nn.Module) -> None:
        self.model = value

    def set_mask(self, mask: "str | Mask") -> "I2IAdapter":
        """Make ``mask`` the model's own (what ``mask=None`` means from now on and what :meth:`save_pretrained`
        records), checked against the image size (and, on a patch model, against its patches)."""
        self.mask = parse_mask(mask, self.image_shape)
        return self

    @property
    def device(self) -> torch.device:
        return next(self._module.parameters()).device

    def to(self, device: torch.device | str) -> "I2IAdapter":
        self.model.to(device)
        return self

    @property
    def training(self) -> bool:
        return self.model.training

    def train(self, mode: bool = True) -> "I2IAdapter":
        self.model.train(mode)
        return self

    def eval(self) -> "I2IAdapter":
        return self.train(False)

    def check_images(self, images: torch.Tensor, what: str = "images") -> None:
        """Raise a :class:`UserInputError` naming expected vs got when ``images`` do not fit the model."""
        c, h, w = self.image_shape
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (c, h, w):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            got = "×".join(str(s) for s in shape[1:]) if isinstance(shape, tuple) and len(shape) == 4 else f"{shape}"
            raise UserInputError(f"{what} do not fit the model: expected [N, {c}, {h}, {w}] images "
                                 f"({c}×{h}×{w}, channels×height×width), got {got}")

    def _mask(self, mask: "str | Mask | None") -> Mask:
        return as_mask(mask, self.image_shape, default=self.mask)

    # ------------------------------------------------------------------ scopes
    @abc.abstractmethod
    def _scope_prefixes(self) -> dict[str, tuple[str, ...]]:
        """Name prefixes of the ``encoder`` and ``decoder`` scopes."""

    def _trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return list(self._module.named_parameters())

    def named_parameters(self, scope: str = "all") -> list[tuple[str, torch.nn.Parameter]]:
        """``(name, parameter)`` of ``scope``: ``encoder``, ``decoder`` or ``all`` (their union)."""
        named = self._trainable()
        prefixes = self._scope_prefixes()
        if scope == "all":
            return named
        if scope not in prefixes:
            raise UserInputError(f"unknown parameter scope {scope!r} for an image-to-image model; expected one of "
                                 f"{', '.join(SCOPES)}")
        return [(n, p) for n, p in named if n.startswith(prefixes[scope])]

    def parameters(self, scope: str = "all") -> list[torch.nn.Parameter]:
        return [p for _, p in self.named_parameters(scope)]

    def _check_split(self) -> None:
        """Every trainable parameter belongs to exactly one of encoder and decoder (else the split is wrong)."""
        prefixes = self._scope_prefixes()
        for name, _ in self._trainable():
            owners = [s for s in ("encoder", "decoder") if name.startswith(prefixes[s])]
            if len(owners) != 1:
                raise UserInputError(f"{type(self).__name__}: parameter {name} belongs to "
                                     f"{' and '.join(owners) or 'neither encoder nor decoder'}; this model has a "
                                     "module the encoder/decoder split does not know")

    # ------------------------------------------------------------------ encoder
    @abc.abstractmethod
    def _encoder_module(self) -> torch.nn.Module:
        """The encoder as one module (sharing the model's parameters): what :meth:`frozen_encoder` copies."""

    @abc.abstractmethod
    def _features(self, encoder: torch.nn.Module, x: torch.Tensor, mask: "str | Mask | None",
                  t: torch.Tensor | None, noise: torch.Tensor | None) -> list[torch.Tensor]:
        """The features of ``x`` through ``encoder`` (the live one or a frozen copy)."""

    @abc.abstractmethod
    def _flatten(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[N, F]`` from :meth:`encoder_features`."""

    def encoder_features(self, x: torch.Tensor, mask: "str | Mask | None" = None, t: torch.Tensor | None = None,
                         noise: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The encoder's features of ``x`` under ``mask`` (with gradients to the encoder's parameters)."""
        return self._features(self._encoder_module(), x, mask, t, noise)

    def encode(self, x: torch.Tensor, mask: "str | Mask | None" = None, t: torch.Tensor | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """One flat feature row ``[N, F]`` per image (see the class docstring for F)."""
        return self._flatten(self.encoder_features(x, mask, t, noise))

    def flatten_features(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[N, F]`` rows from maps shaped like :meth:`encoder_features`' (``encode`` = this of those): how a
        method puts a target given per map (e.g. Gaussian noise in each map's own units) in the rows' space."""
        return self._flatten(features)

    def frozen_encoder(self) -> FrozenEncoder:
        """θ₀'s encoder: a copy of the encoder modules only (the decoder is not copied)."""
        return FrozenEncoder(self)

    def scratch_copy(self) -> "I2IAdapter":
        """An adapter over an independent deep copy of the whole model (same mask, schedule and flags)."""
        other = copy.copy(self)
        other.model = copy.deepcopy(self._module)
        return other

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._module.load_state_dict(state)

    def _sidecar(self) -> dict[str, Any]:
        return {"adapter": "i2i", "arch": self.arch, "mask": self.mask.spec, "image_shape": list(self.image_shape)}

    @staticmethod
    def _check_num(num: int) -> None:
        if int(num) < 1:
            raise UserInputError(f"num (completions per image) must be at least 1, got {num}")


# ====================================================================== Palette-style inpainter
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


# ====================================================================== masked autoencoder
class MAEAdapter(I2IAdapter):
    """A masked autoencoder, transformers' ``ViTMAEForPreTraining`` (``norm_pix_loss=False``), completing a fixed hole.

    **Masking.** The hole must be a union of whole patches (:func:`~fastunlearn.models.masks.patch_tiles`). The
    model's ``noise`` argument orders the patches — visible ones first in raster order, the hole's last — and
    ``config.mask_ratio`` is set to hole patches / all patches, so ``random_masking`` keeps exactly the visible
    patches. Images go in as they are ([-1, 1]; no ImageNet normalisation).

    **Encoder features**: the ViT's last hidden state (after its final LayerNorm) of the CLS token and the visible
    patches, ``[N, 1 + L_visible, D]``, flattened to ``[N, (1 + L_visible)·D]`` by :meth:`encode` — MAGE's
    ``latent`` in the authors' code (class token included; the loss is the mean over tokens and channels). The
    hole's pixels never reach the encoder. The encoding is deterministic: ``t`` and ``noise`` are unused.

    **Completion**: the decoder's reconstruction (patch pixels, unpatchified) pasted into the hole only.
    """

    arch = "mae"
    #: ``auto`` precision stays fp32 on the CPU: bf16 autocast made this ViT's unlearning step 0.64× as fast
    #: as fp32 (``benchmarks/bench_i2i.py``, README "Performance"); see :func:`~fastunlearn.engine.fastpath.auto_precision`
    cpu_bf16 = False

    def __init__(self, model: Any, mask: "str | Mask" = DEFAULT_MASK):
        from transformers import ViTMAEForPreTraining

        if not isinstance(model, ViTMAEForPreTraining):
            raise UserInputError(f"MAEAdapter needs a transformers ViTMAEForPreTraining, got {type(model).__name__}")
        if model.config.norm_pix_loss:
            raise UserInputError("this ViTMAEForPreTraining has norm_pix_loss=True: its reconstructions are "
                                 "per-patch normalised, not pixels, so it cannot complete an image; use a model "
                                 "trained with norm_pix_loss=False")
        size = model.config.image_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        if h != w:
            raise UserInputError(f"ViTMAEForPreTraining handles square images only; this config has {h}×{w}")
        tables = [model.vit.embeddings.position_embeddings, model.decoder.decoder_pos_embed]
        if not any(bool(t.detach().abs().sum() > 0) for t in tables):
            raise UserInputError("this ViTMAEForPreTraining has all-zero position tables, so its decoder cannot tell "
                                 "one patch from another (transformers ≥ 5 builds a new model that way): fill the "
                                 "fixed sin-cos tables with fastunlearn.models.i2i.init_mae_position_tables(model) "
                                 "before training it")
        self.model = model
        self.mask = parse_mask(mask, self.image_shape)
        self._ordering(self.mask)
        self._check_split()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        cfg = self._module.config
        size = cfg.image_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(cfg.num_channels), int(h), int(w)

    @property
    def patch_size(self) -> int:
        return int(self._module.config.patch_size)

    def _scope_prefixes(self) -> dict[str, tuple[str, ...]]:
        return {"encoder": ("vit.",), "decoder": ("decoder.",)}

    def set_mask(self, mask: "str | Mask") -> "MAEAdapter":
        chosen = parse_mask(mask, self.image_shape)
        self._ordering(chosen)  # the hole must tile into the patches
        self.mask = chosen
        return self

    def _trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self._module.named_parameters() if n not in _MAE_FIXED]

    def _ordering(self, mask: Mask) -> tuple[torch.Tensor, float]:
        """The ``noise`` ``[L]`` that sorts the visible patches first (raster order) and the hole's last, and the
        ``mask_ratio`` for which ``random_masking`` keeps exactly the L − k visible ones."""
        tiles = patch_tiles(mask, self.patch_size)
        length, k = tiles.numel(), int(tiles.sum())
        order = tiles.float() + torch.arange(length, dtype=torch.float32) / (2 * length)
        ratio = k / length
        if int(length * (1 - ratio)) != length - k:  # the model floors L·(1 − ratio): keep it off a rounding edge
            ratio = (k - 0.5) / length
        return order, ratio

    def _vit(self, vit: torch.nn.Module, x: torch.Tensor, mask: Mask) -> Any:
        order, ratio = self._ordering(mask)
        vit.config.mask_ratio = ratio
        device = next(vit.parameters()).device
        noise = order.to(device).expand(x.shape[0], -1)
        return vit(x.to(device=device, dtype=torch.float32), noise=noise)

    def encoder_noise(self, n: int, generator: torch.Generator, rows: slice | None = None) -> tuple[None, None]:
        """``(None, None)``: the MAE's encoding draws nothing (the generator is left untouched)."""
        return None, None

    def _encoder_module(self) -> torch.nn.Module:
        return self._module.vit

    def _features(self, encoder: torch.nn.Module, x: torch.Tensor, mask: "str | Mask | None",
                  t: torch.Tensor | None, noise: torch.Tensor | None) -> list[torch.Tensor]:
        m = self._mask(mask)
        self.check_images(x)
        return [self._vit(encoder, x, m).last_hidden_state]

    def _flatten(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        return features[0].flatten(1)

    def reconstruct(self, x: torch.Tensor, mask: "str | Mask | None" = None) -> torch.Tensor:
        """The decoder's reconstruction of every patch, unpatchified: ``[N, C, H, W]`` pixels (with gradients)."""
        m = self._mask(mask)
        self.check_images(x)
        model = self._module
        out = self._vit(model.vit, x, m)
        logits = model.decoder(out.last_hidden_state, out.ids_restore).logits
        return model.unpatchify(logits, (m.height, m.width))

    def training_pair(self, x: torch.Tensor, mask: "str | Mask | None" = None, t: torch.Tensor | None = None,
                      noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(m ⊙ x̂, m ⊙ x)``: the MAE's pixel loss terms on the hole (``t``, ``noise`` unused)."""
        m = self._mask(mask)
        pred = self.reconstruct(x, m)
        hole = m.tensor(x.shape[0], device=pred.device, dtype=pred.dtype)
        return pred * hole, x.to(device=pred.device, dtype=pred.dtype) * hole

    @torch.inference_mode()
    def complete(self, x: torch.Tensor, mask: "str | Mask | None" = None, generator: torch.Generator | None = None,
                 steps: int = 50, batch_size: int = 256, num: int = 1, noise: torch.Tensor | None = None,
                 progress: bool = False) -> torch.Tensor:
        """Completions of ``x``: the reconstruction clamped to [-1, 1] in the hole, ``x`` bitwise elsewhere;
        float32 ``[N·num, C, H, W]`` on the CPU, row ``i·num + j`` from input row i. Deterministic: ``generator``,
        ``steps`` and ``noise`` are unused and the ``num`` completions of a row are equal."""
        m = self._mask(mask)
        self.check_images(x)
        self._check_num(num)
        known = x.detach().float().cpu()
        was = self.model.training
        self.model.eval()
        try:
            parts = [self.reconstruct(known[s:s + batch_size].to(self.device), m).float().clamp(-1.0, 1.0).cpu()
                     for s in range(0, known.shape[0], max(1, batch_size))]
        finally:
            self.model.train(was)
        generated = torch.cat(parts) if parts else known.clone()
        return m.paste(generated, known).repeat_interleave(int(num), 0)

    def save_pretrained(self, directory: str | Path) -> Path:
        """``ViTMAEForPreTraining.save_pretrained`` (``config.json`` + ``model.safetensors``) plus the sidecar;
        ``ViTMAEForPreTraining.from_pretrained(directory)`` loads the model back, :func:`load_i2i` the adapter."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self._module.config.mask_ratio = self._ordering(self.mask)[1]
        with _QuietTransformers():
            self._module.save_pretrained(directory, safe_serialization=True)
        (directory / SIDECAR).write_text(json.dumps(self._sidecar(), indent=2) + "\n")
        return directory


# ---------------------------------------------------------------------- loading
class _QuietTransformers:
    """transformers' warnings and progress bars ("Loading weights", "Writing model shards") off for a load or a
    save of the library's own, restored after."""

    def __enter__(self) -> "_QuietTransformers":
        from transformers.utils import logging as hf_logging

        self._level, self._bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        return self

    def __exit__(self, *exc: Any) -> None:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity(self._level)
        if self._bars:
            hf_logging.enable_progress_bar()


def _read_sidecar(directory: Path) -> dict | None:
    f = directory / SIDECAR
    if not f.is_file():
        return None
    try:
        data = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{f} is not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else None


def is_i2i_dir(directory: Path) -> bool:
    """Whether ``directory`` holds an image-to-image model (its ``fastunlearn.json`` says ``"adapter": "i2i"``)."""
    try:
        data = _read_sidecar(Path(directory)) if Path(directory).is_dir() else None
    except UserInputError:
        return False
    return bool(data) and data.get("adapter") == "i2i"


def _load_mae(directory: Path, trust_pickle: bool) -> Any:
    from transformers import ViTMAEForPreTraining

    from fastunlearn.models.safe_loading import _check_safetensors

    safe = directory / "model.safetensors"
    if safe.is_file():
        _check_safetensors(safe)
    elif not trust_pickle:
        pickles = sorted(p.name for p in directory.glob("*.bin"))
        what = (f"only pickle weights ({pickles[0]}): loading a pickle can run arbitrary code" if pickles
                else "no weights")
        raise UserInputError(f"masked-autoencoder directory {directory} has {what}; fastunlearn loads "
                             "model.safetensors (pass --trust-pickle / trust_pickle=True only for a file you trust)")
    try:
        with _QuietTransformers():
            return ViTMAEForPreTraining.from_pretrained(directory, use_safetensors=safe.is_file() or not trust_pickle)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"cannot load the masked autoencoder in {directory}: {first}") from None


def arch_of_ref(model: Any) -> str | None:
    """The architecture (``"inpaint"`` or ``"mae"``) of an image-to-image model reference — an adapter, a zoo name
    or a directory, read from its ``fastunlearn.json`` without loading weights — or None when it is not one."""
    if isinstance(model, I2IAdapter):
        return model.arch
    if not isinstance(model, (str, Path)):
        return None
    from fastunlearn import zoo

    ref = str(model)
    try:
        directory = zoo.resolve(ref) if zoo.is_zoo_ref(ref) else Path(ref).expanduser()
        data = _read_sidecar(directory) if directory.is_dir() else None
    except Exception:  # noqa: BLE001 - an unreadable reference is load_i2i's error to report
        return None
    arch = data.get("arch") if data and data.get("adapter") == "i2i" else None
    return arch if arch in ARCHS else None


def load_i2i(ref: str | Path, mask: "str | Mask | None" = None,
             trust_pickle: bool = False) -> "InpaintAdapter | MAEAdapter":
    """The adapter of a directory written by ``save_pretrained`` (or a zoo name of an image-to-image model).

    ``fastunlearn.json`` names the architecture and the model's mask; ``mask`` overrides the recorded one.
    Weights load from safetensors only unless ``trust_pickle``; NaN/Inf weights are refused.
    """
    ref = str(ref)
    from fastunlearn import zoo

    directory = zoo.resolve(ref) if zoo.is_zoo_ref(ref) else Path(ref).expanduser()
    if not directory.is_dir():
        raise UserInputError(f"image-to-image model {ref!r} is not a directory")
    data = _read_sidecar(directory)
    if not data or data.get("adapter") != "i2i":
        raise UserInputError(f"{directory} is not an image-to-image model directory: its {SIDECAR} must say "
                             '{"adapter": "i2i", "arch": "inpaint" | "mae", ...}')
    arch = data.get("arch")
    chosen = mask if mask is not None else data.get("mask", DEFAULT_MASK)
    if arch == "inpaint":
        from diffusers import DDPMScheduler

        from fastunlearn.models.ddpm import _load_unet
        from fastunlearn.models.safe_loading import _check_unet_dir

        where = f"inpainting model {directory}"
        _check_unet_dir(directory / "unet", where, trust_pickle)
        unet = _load_unet(directory / "unet", where, trust_pickle)
        refuse_non_finite(unet, where)
        sched = directory / "scheduler"
        try:
            scheduler = DDPMScheduler.from_pretrained(sched) if (sched / "scheduler_config.json").is_file() else None
        except (OSError, ValueError, TypeError) as exc:
            raise UserInputError(f"cannot read the scheduler config of {where}: {exc}") from None
        return InpaintAdapter(unet, scheduler, mask=chosen)
    if arch == "mae":
        model = _load_mae(directory, trust_pickle)
        refuse_non_finite(model, f"masked autoencoder {directory}")
        return MAEAdapter(model, mask=chosen)
    raise UserInputError(f"{directory / SIDECAR}: unknown image-to-image architecture {arch!r}; expected one of "
                         f"{', '.join(ARCHS)}")


# ---------------------------------------------------------------------- tiny models (tests, benchmarks)
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


@torch.no_grad()
def init_mae_position_tables(model: Any) -> Any:
    """Fill a ``ViTMAEForPreTraining``'s fixed position tables (encoder and decoder) with the 2-D sin-cos embedding
    of He et al. (2022) — transformers' ``build_2d_sinusoidal_position_embedding`` in the half-rotated layout its
    pretrained checkpoints use. A model constructed from a config under transformers ≥ 5 has them at zero."""
    from transformers.models.vit_mae.modeling_vit_mae import build_2d_sinusoidal_position_embedding

    grid = int(model.vit.embeddings.patch_embeddings.num_patches ** 0.5)
    for table in (model.vit.embeddings.position_embeddings, model.decoder.decoder_pos_embed):
        pos = build_2d_sinusoidal_position_embedding(height=grid, width=grid, embed_dim=table.shape[-1], cls_token=True)
        half = pos.shape[-1] // 2
        table.copy_(torch.cat([pos[..., half:], pos[..., :half]], dim=-1).reshape(table.shape))
    return model


def build_tiny_mae(seed: int = 0, size: int = 16, channels: int = 1, patch: int = 4,
                   mask: str = DEFAULT_MASK) -> MAEAdapter:
    """A random ``ViTMAEForPreTraining`` on 16×16 images with 4×4 patches (one 16-wide layer in encoder and
    decoder), ``norm_pix_loss=False``."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    config = ViTMAEConfig(image_size=size, patch_size=patch, num_channels=channels, hidden_size=16,
                          num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, decoder_hidden_size=16,
                          decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=32,
                          norm_pix_loss=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = init_mae_position_tables(ViTMAEForPreTraining(config))
    return MAEAdapter(model, mask=mask)


__all__ = ["InpaintAdapter", "MAEAdapter", "FrozenEncoder", "I2IAdapter", "load_i2i", "is_i2i_dir",
           "build_tiny_inpaint", "build_tiny_mae", "init_mae_position_tables", "SCOPES", "ARCHS", "DEFAULT_MASK"]
