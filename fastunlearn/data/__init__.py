"""Data: the embedded digits, forget/retain selection, and general image sources.

Submodules are imported directly (``from fastunlearn.data.digits import load_digits_split``);
this package file stays empty of imports so that loading one part never pulls in the others.
"""
