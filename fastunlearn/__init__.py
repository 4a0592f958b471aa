"""fastunlearn: make a trained generative model forget data, fast.

The public surface is small: :func:`run` (one unlearning job end to end), :class:`UnlearnConfig` and
``__version__``. Everything else lives in the layer packages (``ops``, ``models``, ``data``, ``methods``,
``engine``, ``eval``, ``zoo``); see docs/architecture.md.
"""
from fastunlearn._version import __version__
from fastunlearn.errors import FastUnlearnError, UserInputError

__all__ = ["__version__", "run", "UnlearnConfig", "UnlearnResult", "FastUnlearnError", "UserInputError"]


def __getattr__(name):
    # The API pulls in diffusers and the model layers; keep `import fastunlearn` (and so `fastunlearn doctor`
    # and the ops) light by importing it on first use.
    if name in ("run", "UnlearnResult"):
        from fastunlearn import api

        return getattr(api, name)
    if name == "UnlearnConfig":
        from fastunlearn.config import UnlearnConfig

        return UnlearnConfig
    raise AttributeError(f"module 'fastunlearn' has no attribute {name!r}")
