"""Adversarial prompt attacks on text-to-image models: what measures whether an erased concept stays erased.

- :mod:`fastunlearn.attacks.soft_prompt`: the continuous prefix attack (AdvUnlearn's in-training attack and the
  ``soft-prompt`` evaluation attack).
- :mod:`fastunlearn.attacks.discrete`: UnlearnDiffAtk's discrete prefix optimiser (a relaxed one-hot over the
  vocabulary, straight-through argmax, Adam, sort-based projection onto the simplex).
- :mod:`fastunlearn.attacks.judges`: concept judges (images → "shows the concept"): the digits classifier,
  NudeNet, a user function.
- :mod:`fastunlearn.attacks.runner`: :func:`attack` — instances (prompt, seed), pre- and post-attack successes,
  the attack success rate as the authors define it (``unlearndiffatk``, ``soft-prompt``, ``paraphrase``).
- :mod:`fastunlearn.attacks.report`: the attack's ``report.html``.

``fastunlearn attack`` (:mod:`fastunlearn.cli_attack`) is the command over :func:`attack`.
"""
from fastunlearn.attacks.runner import ATTACKS, AttackResult, Instance, attack

__all__ = ["attack", "AttackResult", "Instance", "ATTACKS"]
