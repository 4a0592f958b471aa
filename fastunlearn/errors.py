"""Exceptions a user can act on.

Every error caused by the user's input (a selector that matches nothing, an unknown method, an image of
the wrong size, ...) is a :class:`UserInputError`. The CLI turns it into one line and exit code 2 instead
of a traceback; Python callers can catch it (it is also a ``ValueError``).
"""


class FastUnlearnError(Exception):
    """Base class of every error fastunlearn raises on purpose."""


class UserInputError(FastUnlearnError, ValueError):
    """The input (config, data, model path, option) is wrong; the message says what and how to fix it."""


class BackendUnavailableError(FastUnlearnError, RuntimeError):
    """A forced kernel backend (``FASTUNLEARN_BACKEND``) cannot serve the given tensors; the message lists why."""


class NumericalError(FastUnlearnError, RuntimeError):
    """Training produced non-finite gradients for too many consecutive steps, or non-finite weights."""


class OutOfMemoryError(FastUnlearnError, RuntimeError):
    """A step ran out of device memory; the message gives the batch size, the model size and what to change."""
