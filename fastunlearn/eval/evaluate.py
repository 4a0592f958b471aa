"""The run's before/after evaluation (what :func:`fastunlearn.run` measures), and which judges measure it.

:func:`evaluate` draws DDIM samples from the seeded noise ``cfg.eval_seed`` (the same noise before and after
unlearning) and has every judge of the panel score the *same* images:

- ``forget_accuracy`` / ``retain_accuracy`` (or ``forget_share`` for ``--unconditional``): the first judge,
  the shipped CNN ``zoo:digits-classifier``;
- ``forget_accuracy_svm`` / ``retain_accuracy_svm`` (``forget_share_svm``): the second, independent judge,
  the RBF SVM ``zoo:digits-svm`` (:mod:`fastunlearn.eval.judges`);
- ``n`` and ``ci95``: per headline key, the number of generations behind it and its 95 % Wilson interval
  (:mod:`fastunlearn.eval.stats`);
- with the digits judge, the retained classes' FID/KID against the held-out test digits (CNN feature space,
  from the same generations) and, given the forget/retain ``sets``, the forget set's membership AUC.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from fastunlearn.eval.judges import DIGITS_JUDGES, JUDGES
from fastunlearn.eval.stats import wilson_interval


def digits_judges(adapter: Any, second: bool = True) -> dict[str, Any] | None:
    """The judge panel ``{"": CNN, "svm": SVM}`` when the model draws digits (1×16×16, ≤ 10 classes); else None.

    The key is the suffix of the judge's metric keys (``"svm"`` → ``retain_accuracy_svm``); ``""`` is the
    first judge, whose keys are the plain ones. ``second=False``: the first judge alone.
    """
    if adapter.image_shape != (1, 16, 16) or (adapter.num_classes or 10) > 10:
        return None
    from fastunlearn.eval.judges import load_judge

    device = str(adapter.device)
    first, other = DIGITS_JUDGES
    panel = {"": load_judge(first, device=device)}
    if second:
        panel[JUDGES[other]] = load_judge(other, device=device)
    return panel


def is_digits_judge(judge: Any) -> bool:
    """FID against the test digits and the held-out MIA only make sense when the judge is the digits CNN."""
    from fastunlearn.zoo.classifier import DigitsClassifier

    return isinstance(judge, DigitsClassifier)


def _panel(judge: Any) -> tuple[Any, dict[str, Any]]:
    """(first judge, {suffix: other judge}) from one judge or a panel ``{"": first, "svm": ...}``."""
    if isinstance(judge, Mapping):
        if "" not in judge:
            raise ValueError("a judge panel needs its first judge under the key ''")
        return judge[""], {name: j for name, j in judge.items() if name != ""}
    return judge, {}


def _key(base: str, suffix: str) -> str:
    return f"{base}_{suffix}" if suffix else base


def _judge_names(first: Any, others: Mapping[str, Any]) -> dict[str, str]:
    names = {"": "zoo:digits-classifier" if is_digits_judge(first) else type(first).__name__}
    by_suffix = {short: ref for ref, short in JUDGES.items()}
    names.update({suffix: by_suffix.get(suffix, type(j).__name__) for suffix, j in others.items()})
    return names


def evaluate(adapter: Any, cfg: Any, forget_classes: list[int], judge: Any, sets: Any = None) -> dict[str, Any]:
    """Forget/retain generation accuracy (or the unconditional share of the forgotten classes) of ``adapter``.

    Args:
        adapter: the model (its ``generate``, ``num_classes``, ``image_shape``).
        cfg: the run's :class:`~fastunlearn.config.UnlearnConfig` (``eval_seed``, ``eval_steps``,
            ``eval_per_class``, ``eval_unconditional``, ``unconditional``).
        forget_classes: the forgotten classes.
        judge: one judge, or a panel ``{"": first, "svm": second}`` (:func:`digits_judges`): every judge scores
            the same generations; the first judge's keys are the plain ones, the others' carry ``_<name>``.
        sets: the forget/retain sets (for the membership AUC), or None.

    Returns:
        ``kind``, the headline keys (see the module docstring), ``headline`` (their order), ``n`` and ``ci95``
        per headline key, ``judges`` (``{suffix: reference}``), ``detail`` (the first judge's per-class
        figures, ``detail["also"][name]`` the others'), ``fid`` and ``mia`` where they apply, ``wall_s``, and
        ``images`` (the first 8 generations per class, for the report grid).
    """
    from fastunlearn.eval.classifier import generation_accuracy, unconditional_class_share

    first, others = _panel(judge)
    generated: dict[Any, list[torch.Tensor]] = {}

    def sample_fn(n: int, class_labels: torch.Tensor | None, generator: torch.Generator | None = None):
        images = adapter.generate(n, class_labels, steps=cfg.eval_steps, generator=generator)
        keys = class_labels.tolist() if class_labels is not None else ["∅"] * n
        for key, img in zip(keys, images):
            generated.setdefault(key, []).append(img)
        return images

    gen = torch.Generator().manual_seed(cfg.eval_seed)
    started = time.perf_counter()
    counts: dict[str, tuple[float, int]] = {}  # headline key -> (value, n)
    if cfg.unconditional:
        n = int(cfg.eval_unconditional)
        res = unconditional_class_share(sample_fn, first, n, forget_classes, generator=gen, also=others or None)
        out: dict[str, Any] = {"kind": "unconditional", "detail": res}
        counts["forget_share"] = (res["share_of_classes"], n)
        for suffix, r in res.get("also", {}).items():
            counts[_key("forget_share", suffix)] = (r["share_of_classes"], n)
    else:
        classes = list(range(adapter.num_classes))
        per = int(cfg.eval_per_class)
        res = generation_accuracy(sample_fn, first, classes, per, generator=gen, also=others or None)
        retained = [c for c in classes if c not in forget_classes]
        out = {"kind": "conditional", "detail": res}
        for suffix, r in [("", res), *res.get("also", {}).items()]:
            acc = r["accuracy_by_class"]
            counts[_key("forget_accuracy", suffix)] = (
                sum(acc[c] for c in forget_classes) / len(forget_classes), per * len(forget_classes))
            counts[_key("retain_accuracy", suffix)] = (
                sum(acc[c] for c in retained) / max(len(retained), 1), per * len(retained))
        if is_digits_judge(first) and retained:
            from fastunlearn.eval.fid import digits_real_by_class, per_class_fid

            fakes = {c: torch.stack(generated[c]) for c in retained if c in generated}
            out["fid"] = per_class_fid(digits_real_by_class("test", retained), fakes, first, classes=retained)
    for key, (value, n) in counts.items():
        out[key] = value
    # Plain keys first (the first judge), then each other judge's, in the panel's order.
    out["headline"] = list(counts)
    out["n"] = {key: n for key, (_, n) in counts.items()}
    out["ci95"] = {key: list(wilson_interval(round(v * n), n)) for key, (v, n) in counts.items()}
    out["judges"] = _judge_names(first, others)
    if sets is not None and is_digits_judge(first):
        from fastunlearn.eval.mia import forget_membership_auc

        out["mia"] = forget_membership_auc(adapter, sets.forget_images, sets.forget_labels)
    out["wall_s"] = time.perf_counter() - started
    out["images"] = {k: torch.stack(v[:8]) for k, v in generated.items()}
    return out


def format_table(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """The before/after table of the headline metrics (``UnlearnResult.table()``, what the CLI prints)::

        metric                 before                          after
        forget_accuracy        100.0% [96.3–100.0] n=100       2.0% [0.6–7.0] n=100
        retain_accuracy        97.8% [96.6–98.6] n=900         96.2% [94.8–97.2] n=900
        forget_accuracy_svm    ...

    Each cell: the judged share, its 95 % Wilson interval and the number of generations; a headline key that
    ``means`` lists (a mean score, e.g. the text-to-image ``clip_score_forget``) shows its value, its ``ci95``
    and its count instead. A last line names the judges.
    """
    from fastunlearn.eval.stats import rate_text

    keys = list(before.get("headline") or [])
    n_before, n_after = before.get("n") or {}, after.get("n") or {}
    means = set(before.get("means") or [])

    def cell(res: Mapping[str, Any], k: str, n: Mapping[str, int]) -> str:
        if k not in means:
            return rate_text(res[k], n.get(k))
        lo, hi = (res.get("ci95") or {}).get(k, (res[k], res[k]))
        return f"{res[k]:.2f} [{lo:.2f}–{hi:.2f}] n={n.get(k)}"

    rows = [(k, cell(before, k, n_before), cell(after, k, n_after)) for k in keys if k in before and k in after]
    width = max([len("metric")] + [len(k) for k, _, _ in rows])
    cell = max([len("before")] + [len(b) for _, b, _ in rows])
    lines = [f"{'metric':<{width}}  {'before':<{cell}}  after"]
    lines += [f"{k:<{width}}  {b:<{cell}}  {a}" for k, b, a in rows]
    judges = before.get("judges") or {}
    if judges:
        named = ", ".join(f"{'plain keys' if not s else '_' + s}: {ref}" for s, ref in judges.items())
        lines.append(f"(judged share of generations, 95% Wilson interval, n generations; judges: {named})")
    return "\n".join(lines)


__all__ = ["evaluate", "digits_judges", "is_digits_judge", "format_table"]
