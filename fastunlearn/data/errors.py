"""Errors of the data layer.

They are the user's errors (a selector that matches nothing, a folder without images, an image
that cannot be converted), so they derive from :class:`fastunlearn.errors.UserInputError`
(itself a ``ValueError``): the CLI prints them as one line instead of a traceback.
"""

from fastunlearn.errors import UserInputError


class DataError(UserInputError):
    """The data the user selected or supplied cannot be used; the message says why and how to fix it."""


__all__ = ["DataError"]
