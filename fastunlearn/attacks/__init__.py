"""Adversarial prompt attacks on text-to-image models: what measures whether an erased concept stays erased.

- :mod:`fastunlearn.attacks.soft_prompt`: the continuous prefix attack (AdvUnlearn's in-training attack and the
  ``soft-prompt`` evaluation attack).
"""
