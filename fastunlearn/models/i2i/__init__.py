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
from fastunlearn.models.i2i.base import ARCHS, DEFAULT_MASK, SCOPES, SIDECAR, FrozenEncoder, I2IAdapter
from fastunlearn.models.i2i.inpaint import InpaintAdapter, build_tiny_inpaint
from fastunlearn.models.i2i.loading import arch_of_ref, is_i2i_dir, load_i2i
from fastunlearn.models.i2i.mae import MAEAdapter, build_tiny_mae, init_mae_position_tables

__all__ = ["InpaintAdapter", "MAEAdapter", "FrozenEncoder", "I2IAdapter", "load_i2i", "is_i2i_dir", "arch_of_ref",
           "build_tiny_inpaint", "build_tiny_mae", "init_mae_position_tables", "SCOPES", "ARCHS", "DEFAULT_MASK",
           "SIDECAR"]
