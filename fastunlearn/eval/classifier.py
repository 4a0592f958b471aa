"""Classifier-judged generation metrics: does the model still draw the classes it should?

Both metrics take a ``sample_fn(n, class_labels) -> images`` rather than a model, so they
work for any model family: a DDPM adapter's ``generate`` or a plain closure over
:func:`fastunlearn.models.sampling.ddim_sample`. If ``sample_fn`` also accepts a
``generator`` keyword, the metric passes its own seeded generator so that "before" and
"after" runs draw from the same initial noise.

- :func:`generation_accuracy`: per class c, the share of images generated for c that the
  judge classifies as c. After unlearning class c_f it should fall to chance on c_f and
  stay put on the retained classes. Also reports P_judge(y = c) and the predictive entropy,
  the two numbers EraseDiff's evaluation quotes for the forgotten class.
- :func:`unconditional_class_share`: the share of unconditional generations the judge
  assigns to each class (≈ 1/C for a model trained on balanced data; ≈ 0 for a forgotten one).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

SampleFn = Callable[..., torch.Tensor]
Judge = Callable[[torch.Tensor], torch.Tensor]


def _accepts_generator(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "generator" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _draw(
    sample_fn: SampleFn, n: int, labels: torch.Tensor | None, generator: torch.Generator | None
) -> torch.Tensor:
    if generator is not None and _accepts_generator(sample_fn):
        images = sample_fn(n, labels, generator=generator)
    else:
        images = sample_fn(n, labels)
    if not isinstance(images, torch.Tensor) or images.shape[0] != n:
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"sample_fn({n}, ...) must return a tensor with {n} images; got {got}")
    return images


@torch.inference_mode()
def _judge_probs(judge: Judge, images: torch.Tensor) -> torch.Tensor:
    """Softmax of the judge's logits, on the CPU, float32."""
    if isinstance(judge, torch.nn.Module):
        judge.eval()
        try:
            device = next(judge.parameters()).device
        except StopIteration:
            device = images.device
        images = images.to(device=device, dtype=torch.float32)
    logits = judge(images)
    return logits.float().softmax(dim=1).cpu()


def _sample_and_judge(
    sample_fn: SampleFn,
    judge: Judge,
    labels: torch.Tensor | None,
    n: int,
    batch_size: int,
    generator: torch.Generator | None,
    also: Mapping[str, Judge] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Judge probabilities ``[n, num_classes]`` of ``n`` generations, drawn ``batch_size`` at a time, and the
    classes each judge of ``also`` gives the same images (``{name: LongTensor[n]}``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    probs = []
    others: dict[str, list[torch.Tensor]] = {name: [] for name in (also or {})}
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        y = labels[start : start + m] if labels is not None else None
        images = _draw(sample_fn, m, y, generator)
        probs.append(_judge_probs(judge, images))
        for name, other in (also or {}).items():
            others[name].append(_judge_probs(other, images).argmax(dim=1))
    preds = {name: torch.cat(v) if v else torch.empty(0, dtype=torch.long) for name, v in others.items()}
    return (torch.cat(probs) if probs else torch.empty(0, 0)), preds


def _accuracy_of_predictions(preds: torch.Tensor, labels: torch.Tensor, classes: Sequence[int],
                             n_per_class: int, num_judge_classes: int) -> dict[str, Any]:
    out: dict[str, Any] = {"accuracy_by_class": {}, "correct_by_class": {}, "predicted_counts_by_class": {}}
    for c in classes:
        rows = labels == c
        correct = int((preds[rows] == c).sum())
        out["correct_by_class"][c] = correct
        out["accuracy_by_class"][c] = correct / n_per_class
        out["predicted_counts_by_class"][c] = torch.bincount(preds[rows], minlength=num_judge_classes).tolist()
    out["mean_accuracy"] = sum(out["accuracy_by_class"].values()) / len(classes)
    return out


def generation_accuracy(
    sample_fn: SampleFn,
    judge: Judge,
    classes: Sequence[int],
    n_per_class: int,
    batch_size: int = 250,
    generator: torch.Generator | None = None,
    also: Mapping[str, Judge] | None = None,
) -> dict[str, Any]:
    """Share of class-conditional generations that the judge recognises as the asked class.

    Args:
        sample_fn: ``sample_fn(n, class_labels: LongTensor[n]) -> Tensor[n, C, H, W]``.
        judge: images → logits ``[n, num_classes]`` (e.g. the zoo's digits classifier).
        classes: the classes to generate and score.
        n_per_class: generations per class.
        batch_size: images per ``sample_fn`` call (classes are mixed within a call).
        generator: seeded generator handed to ``sample_fn`` when it accepts one.
        also: further judges ``{name: judge}`` that score the *same* generations (only the argmax of their
            scores is used: e.g. the second judge ``zoo:digits-svm``, whose scores are not probabilities).

    Returns:
        ``classes``, ``n_per_class``, ``n_samples``; per class (int keys): ``accuracy_by_class``,
        ``correct_by_class``, ``mean_target_probability_by_class`` (mean P_judge(y = c)),
        ``mean_entropy_by_class`` (nats), ``predicted_counts_by_class`` (judge's histogram
        of what was drawn for c); and ``mean_accuracy`` over ``classes``. With ``also``:
        ``also[name]`` holds that judge's ``accuracy_by_class``, ``correct_by_class``,
        ``predicted_counts_by_class`` and ``mean_accuracy``.
    """
    classes = [int(c) for c in classes]
    if not classes:
        raise ValueError("generation_accuracy needs at least one class")
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    labels = torch.tensor(classes, dtype=torch.long).repeat_interleave(n_per_class)
    probs, others = _sample_and_judge(sample_fn, judge, labels, labels.numel(), batch_size, generator, also)
    num_judge_classes = probs.shape[1]
    preds = probs.argmax(dim=1)
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)
    out: dict[str, Any] = {
        "classes": classes,
        "n_per_class": n_per_class,
        "n_samples": int(labels.numel()),
        "accuracy_by_class": {},
        "correct_by_class": {},
        "mean_target_probability_by_class": {},
        "mean_entropy_by_class": {},
        "predicted_counts_by_class": {},
    }
    for c in classes:
        rows = labels == c
        correct = int((preds[rows] == c).sum())
        out["correct_by_class"][c] = correct
        out["accuracy_by_class"][c] = correct / n_per_class
        target_p = probs[rows, c].mean() if c < num_judge_classes else torch.tensor(0.0)
        out["mean_target_probability_by_class"][c] = float(target_p)
        out["mean_entropy_by_class"][c] = float(entropy[rows].mean())
        out["predicted_counts_by_class"][c] = torch.bincount(
            preds[rows], minlength=num_judge_classes
        ).tolist()
    out["mean_accuracy"] = sum(out["accuracy_by_class"].values()) / len(classes)
    if also:
        out["also"] = {name: _accuracy_of_predictions(p, labels, classes, n_per_class,
                                                      max(num_judge_classes, int(p.max()) + 1 if p.numel() else 0))
                       for name, p in others.items()}
    return out


def unconditional_class_share(
    sample_fn: SampleFn,
    judge: Judge,
    n: int,
    classes: Sequence[int],
    batch_size: int = 250,
    generator: torch.Generator | None = None,
    also: Mapping[str, Judge] | None = None,
) -> dict[str, Any]:
    """How the judge distributes ``n`` unconditional generations over its classes.

    ``sample_fn`` is called with ``class_labels=None``. ``classes`` are the classes of
    interest (typically the forgotten ones): their combined share is ``share_of_classes``.

    Returns:
        ``n_samples``, ``classes``, ``counts_by_class`` and ``share_by_class`` over every
        class the judge knows (int keys), ``share_of_classes``, and ``mean_probability_of_classes``
        (mean judge probability mass on ``classes``, a smoother version of the share). With ``also``
        (further judges of the same generations, as in :func:`generation_accuracy`): ``also[name]`` holds
        that judge's ``counts_by_class``, ``share_by_class`` and ``share_of_classes``.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    classes = [int(c) for c in classes]
    probs, others = _sample_and_judge(sample_fn, judge, None, n, batch_size, generator, also)
    num_judge_classes = probs.shape[1]
    bad = [c for c in classes if not 0 <= c < num_judge_classes]
    if bad:
        raise ValueError(f"classes {bad} are outside the judge's classes 0–{num_judge_classes - 1}")
    counts = torch.bincount(probs.argmax(dim=1), minlength=num_judge_classes).tolist()
    share = {c: counts[c] / n for c in range(num_judge_classes)}
    extra = {}
    for name, p in others.items():
        other_counts = torch.bincount(p, minlength=num_judge_classes).tolist()
        other_share = {c: other_counts[c] / n for c in range(len(other_counts))}
        extra[name] = {"counts_by_class": dict(enumerate(other_counts)), "share_by_class": other_share,
                       "share_of_classes": sum(other_share.get(c, 0.0) for c in classes)}
    return {
        "n_samples": n,
        "classes": classes,
        "counts_by_class": {c: counts[c] for c in range(num_judge_classes)},
        "share_by_class": share,
        "share_of_classes": sum(share[c] for c in classes),
        "mean_probability_of_classes": float(probs[:, classes].sum(dim=1).mean()) if classes else 0.0,
        **({"also": extra} if also else {}),
    }


__all__ = ["generation_accuracy", "unconditional_class_share"]
