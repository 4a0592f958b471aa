"""Unlearning methods: one module per method, registered by name (``get("erasediff")``).

:mod:`fastunlearn.methods.base` holds the Method protocol, the batch type and the registry.
"""
from fastunlearn.methods.base import Batch, Method, available, get, register
from fastunlearn.methods import erasediff as _erasediff  # noqa: F401  (registers "erasediff")

__all__ = ["Batch", "Method", "available", "get", "register"]
