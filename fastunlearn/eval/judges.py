"""The judges of the digits pipeline, by name: ``load_judge("zoo:digits-svm")``.

A judge is a callable images ``[N, 1, 16, 16]`` in [-1, 1] → scores ``[N, 10]`` whose argmax is its answer;
that is what :func:`fastunlearn.eval.classifier.generation_accuracy` takes.

- ``zoo:digits-classifier`` (**first judge**, "cnn"): the shipped CNN (:mod:`fastunlearn.zoo.classifier`).
  Its logits are calibrated enough for entropy / target probability, and its penultimate features are the
  FID/KID feature space.
- ``zoo:digits-svm`` (**second judge**, "svm"): an RBF-kernel SVM on the raw pixels (:mod:`fastunlearn.zoo.svm`),
  another model family, fitted on the same train split; only its accuracy is reported (its scores are not
  probabilities). It exists so that the utility figures do not rest on the one judge the defaults were
  tuned against.

The metric keys follow: ``forget_accuracy`` / ``retain_accuracy`` are the first judge's,
``forget_accuracy_svm`` / ``retain_accuracy_svm`` the second's (see :data:`SECOND_JUDGE_SUFFIX`).
"""
from __future__ import annotations

from typing import Any

from fastunlearn.errors import UserInputError

#: Judge references and their short names (used in metric keys and tables).
JUDGES: dict[str, str] = {"zoo:digits-classifier": "cnn", "zoo:digits-svm": "svm"}
#: The digits pipeline's judges in order: the first one's metrics keep the plain keys.
DIGITS_JUDGES: tuple[str, str] = ("zoo:digits-classifier", "zoo:digits-svm")
#: Suffix of the second judge's metric keys (``retain_accuracy_svm``).
SECOND_JUDGE_SUFFIX = "_svm"


def load_judge(ref: str, device: str | None = None) -> Any:
    """A shipped judge by reference (``"zoo:digits-classifier"``, ``"zoo:digits-svm"``; the ``zoo:`` prefix may
    be left out), in eval mode, on ``device``.

    Raises:
        UserInputError: an unknown reference (the message lists the judges).
    """
    from fastunlearn import zoo

    name = ref if ref.startswith(zoo.ZOO_PREFIX) else zoo.ZOO_PREFIX + ref
    if name == "zoo:digits-classifier":
        return zoo.load_classifier(device=device)
    if name == "zoo:digits-svm":
        return zoo.load_svm(device=device)
    raise UserInputError(f"unknown judge {ref!r}: the judges are {', '.join(JUDGES)}")


__all__ = ["load_judge", "JUDGES", "DIGITS_JUDGES", "SECOND_JUDGE_SUFFIX"]
