"""The fused ops' Python face: public functions, autograd and backend dispatch.

- :func:`dual_noise_loss` — the denoising losses (MSE) of a batch's forget rows and retain rows in one pass
  (one side may be empty: EraseDiff's default calls it once per side);
- :func:`bilevel_combine` — the first-order bi-level gradient combination (with :func:`bilevel_stats`
  exposed for sharded training);
- :class:`FlatGrads` — parameters' gradients as views into one flat buffer.

Every op has a plain-PyTorch oracle in :mod:`fastunlearn.ops.reference`; backends and how one is
chosen: :mod:`fastunlearn.ops.backends`.
"""
from fastunlearn.ops.bilevel_combine import bilevel_combine, bilevel_stats
from fastunlearn.ops.dual_noise_loss import dual_noise_loss
from fastunlearn.ops.flat_grads import FlatGrads

__all__ = ["dual_noise_loss", "bilevel_combine", "bilevel_stats", "FlatGrads"]
