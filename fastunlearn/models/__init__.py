"""Adapters over diffusers models: the one interface methods use (see docs/architecture.md).

- :mod:`fastunlearn.models.ddpm` — :class:`DDPMAdapter` over ``UNet2DModel`` + ``DDPMScheduler`` and
  :func:`load_adapter` (zoo names, local directories, hub ids, modules, pipelines);
- :mod:`fastunlearn.models.sampling` — the DDIM evaluation sampler.
"""
from fastunlearn.models.ddpm import DDPMAdapter, NoisedBatch, load_adapter

__all__ = ["DDPMAdapter", "NoisedBatch", "load_adapter"]
