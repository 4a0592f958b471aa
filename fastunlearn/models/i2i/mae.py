"""The masked autoencoder: :class:`MAEAdapter` over transformers' ``ViTMAEForPreTraining``, its position tables
(:func:`init_mae_position_tables`) and :func:`build_tiny_mae` for tests."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import torch

from fastunlearn.errors import UserInputError
from fastunlearn.models.i2i.base import DEFAULT_MASK, SIDECAR, I2IAdapter
from fastunlearn.models.masks import Mask, parse_mask, patch_tiles

#: The MAE's fixed sin-cos position tables: parameters with ``requires_grad=False`` by design, in no scope.
_MAE_FIXED = ("vit.embeddings.position_embeddings", "decoder.decoder_pos_embed")


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
