"""Unlearning methods: one module per method, registered by name (``get("erasediff")``).

:mod:`fastunlearn.methods.base` holds the Method protocol, the batch type and the registry.
"""
from fastunlearn.methods.base import Batch, Method, available, get, register
from fastunlearn.methods import advunlearn as _advunlearn  # noqa: F401  (registers "advunlearn")
from fastunlearn.methods import erasediff as _erasediff  # noqa: F401  (registers "erasediff")
from fastunlearn.methods import esd as _esd  # noqa: F401  (registers "esd")
from fastunlearn.methods import finetune as _finetune  # noqa: F401  (registers "finetune")
from fastunlearn.methods import gradient_ascent as _gradient_ascent  # noqa: F401  (registers "gradient_ascent")
from fastunlearn.methods import i2i as _i2i  # noqa: F401  (registers "i2i")
from fastunlearn.methods import i2i_baselines as _i2i_baselines  # noqa: F401  (the paper's four baselines)
from fastunlearn.methods import salun as _salun  # noqa: F401  (registers "salun")
from fastunlearn.methods import selective_amnesia as _selective_amnesia  # noqa: F401  (registers "selective_amnesia")

__all__ = ["Batch", "Method", "available", "get", "register"]
