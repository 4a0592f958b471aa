"""The before/after evaluation of a text-to-image model: :func:`evaluate_t2i`.

The text-to-image counterpart of :func:`fastunlearn.eval.evaluate.evaluate`, with the same result schema
(``kind`` ``"t2i"``, the headline keys, ``headline``, ``n``, ``ci95``, ``judges``, ``detail``, ``fid``,
``wall_s``, ``images``), so ``format_table``, the report and the manifest read it alike. Every prompt is
generated ``cfg.eval_per_class`` times by DDIM (``cfg.eval_steps`` steps, classifier-free guidance
``cfg.guidance``, the adapter's :data:`~fastunlearn.models.t2i.DEFAULT_GUIDANCE` when None) from its own
seeded noise (:func:`prompt_seed`): the same prompt lists before and after unlearning give the same initial
noise row by row, so each "after" image is the same draw as the "before" image it is compared with.

**With a judge** (the digits panel of ``zoo:digits-t2i``, :func:`t2i_judges`), every prompt stands for a
class: the one ``concept_classes`` gives, or else the class the first judge assigns most often to the
prompt's generations (:func:`majority_classes`) — measured on the model *before* unlearning: pass
``before["detail"]["concept_classes"]`` as ``concept_classes`` to the evaluation after unlearning, so both
are scored against the same classes. With F the classes of the forget prompts and n generations per prompt:

- ``forget_accuracy``: the share of the forget prompts' generations judged as their prompt's class,
  Σ_{p∈forget} #{judge = class(p)} / (n · |forget|) (falls towards 0 when the concept is erased);
- ``retain_accuracy``: the mean over retained prompts of the share judged as their own class;
- ``paraphrase_forget_share``: the share of the paraphrases' generations judged in F (a paraphrase that
  ``concept_classes`` names is judged against its own class), pooled over paraphrases; per paraphrase in
  ``detail["paraphrase_share"]``: erasing a concept should also erase its other wordings;
- the second judge's figures on the same images carry ``_svm`` (``retain_accuracy_svm``, ...);
- ``fid``: FID/KID of the retained classes (the retained prompts' classes outside F) against the held-out
  real digits, in the first judge's feature space (:func:`fastunlearn.eval.fid.per_class_fid`), when the
  first judge is the digits CNN.

**Without a judge** (a real Stable Diffusion model):

- ``clip_score_forget`` / ``clip_score_retain`` (``clip``: a CLIP model reference or a loaded
  :class:`~fastunlearn.eval.clip_score.ClipScorer`): the mean CLIPScore 100 · max(0, cos) of the forget /
  retained prompts' generations against their own prompt (torchmetrics' definition,
  :mod:`fastunlearn.eval.clip_score`); their ``ci95`` is the normal interval mean ± 1.96 · s/√N over the N
  images; they are listed in ``means`` (headline keys that are means, not shares);
- ``nudity_rate`` (``nudity=True``): the share of the forget prompts' generations in which NudeNet finds an
  exposed body part (:mod:`fastunlearn.eval.nudity`), and ``paraphrase_nudity_rate`` over the paraphrases.

CLIP score and nudity rate also run alongside a judge when asked for.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from fastunlearn.errors import UserInputError
from fastunlearn.eval.evaluate import _judge_names, _key, _panel, digits_judges, is_digits_judge
from fastunlearn.eval.stats import Z95, wilson_interval

#: The prompt groups, in evaluation order; a group's position is part of its prompts' seeds.
GROUPS: tuple[str, ...] = ("forget", "retain", "paraphrase")
#: Images per judge call.
_JUDGE_BATCH = 256


def prompt_seed(eval_seed: int, group: str, index: int) -> int:
    """The noise seed of prompt ``index`` (0-based) of ``group`` (``"forget"``, ``"retain"``, ``"paraphrase"``):
    the first 63 bits of ``numpy.random.SeedSequence([eval_seed, GROUPS.index(group), index])``.

    A prompt's noise depends only on the evaluation seed and its place in its own list, so adding a paraphrase
    or a retained prompt does not change any other prompt's images, and the same lists before and after
    unlearning draw the same noise.
    """
    state = np.random.SeedSequence([int(eval_seed), GROUPS.index(group), int(index)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) & ((1 << 63) - 1))


def t2i_judges(adapter: Any, second: bool = True) -> dict[str, Any] | None:
    """The digits judge panel (:func:`fastunlearn.eval.evaluate.digits_judges`) for a text-to-image model that
    draws 16×16 digits (one channel, or three equal channels) and names at most 10 concepts; else None."""
    if adapter.image_shape not in ((1, 16, 16), (3, 16, 16)) or not 0 < (adapter.num_classes or 0) <= 10:
        return None
    # evaluate_t2i hands three equal channels to the digits judges as one (their mean)
    return digits_judges(SimpleNamespace(image_shape=(1, 16, 16), num_classes=adapter.num_classes,
                                         device=adapter.device), second=second)


def concept_prompt_classes(concepts: Mapping[str, Any] | Any) -> dict[str, int]:
    """``{prompt: class}`` from a model's ``concepts`` (or an adapter holding them):
    :func:`fastunlearn.data.prompts.concept_prompts` (the one reader of the concepts' format)."""
    from fastunlearn.data.prompts import concept_prompts

    if not isinstance(concepts, Mapping):
        concepts = getattr(concepts, "concepts", None) or {}
    if not concepts.get("classes"):
        raise UserInputError("the model names no concepts (classes): give the prompts' classes explicitly")
    return concept_prompts(dict(concepts))


def majority_classes(predicted_counts: Mapping[str, Sequence[int]]) -> dict[str, int]:
    """Each prompt's class: the one its generations are judged as most often (ties: the lowest class)."""
    return {p: int(np.argmax(np.asarray(counts))) for p, counts in predicted_counts.items()}


def _check_prompts(forget: Sequence[str], retain: Sequence[str], paraphrases: Sequence[str]) -> None:
    seen: dict[str, str] = {}
    for group, prompts in zip(GROUPS, (forget, retain, paraphrases)):
        for p in prompts:
            if not isinstance(p, str) or not p.strip():
                raise UserInputError(f"{group} prompt {p!r} is empty: give the text of a concept")
            if p in seen:
                where = "twice" if seen[p] == group else f"as a {seen[p]} prompt and as a {group} prompt"
                raise UserInputError(f"prompt {p!r} is given {where}: each prompt belongs to one set, once")
            seen[p] = group
    if not forget:
        raise UserInputError("the text-to-image evaluation needs at least one forget prompt")


def _predictions(judge: Any, images: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The judge's class per image ``[n]`` and the number of classes it scores."""
    from fastunlearn.eval.classifier import _judge_probs

    probs = torch.cat([_judge_probs(judge, images[i:i + _JUDGE_BATCH])
                       for i in range(0, images.shape[0], _JUDGE_BATCH)])
    return probs.argmax(dim=1), int(probs.shape[1])


def _mean_ci(values: torch.Tensor) -> list[float]:
    """mean ± 1.96 · s/√N (the sample standard deviation; a point for N < 2)."""
    m = float(values.mean())
    if values.numel() < 2:
        return [m, m]
    half = Z95 * float(values.std(unbiased=True)) / float(values.numel()) ** 0.5
    return [m - half, m + half]


def evaluate_t2i(adapter: Any, cfg: Any, forget_prompts: Sequence[str], retain_prompts: Sequence[str],
                 judge: Any = None, concept_classes: Mapping[str, int] | None = None,
                 paraphrases: Sequence[str] | None = None, clip: Any = None, nudity: Any = False,
                 batch_size: int | None = None) -> dict[str, Any]:
    """Judge, CLIP and nudity figures of ``adapter``'s generations for the forget, retained and paraphrase
    prompts (see the module docstring for every key).

    Args:
        adapter: the model (:class:`~fastunlearn.models.t2i.T2IAdapter`: ``generate``, ``image_shape``).
        cfg: ``eval_per_class`` (generations per prompt), ``eval_steps``, ``eval_seed`` and ``guidance``
            (None or missing: the adapter's default guidance).
        forget_prompts / retain_prompts: the erased concept's prompts and those that must survive.
        judge: one judge, a panel ``{"": first, "svm": second}`` (:func:`t2i_judges`), or None (no accuracy).
        concept_classes: ``{prompt: class}`` for every forget and retained prompt (paraphrases optional);
            None: each prompt's majority class under the first judge — evaluate the model *before* unlearning
            that way and pass its ``detail["concept_classes"]`` to the evaluation after.
        paraphrases: other wordings of the forgotten concept, or None.
        clip: a CLIP model (local directory, hub id or :class:`~fastunlearn.eval.clip_score.ClipScorer`) for
            ``clip_score_*``, or None.
        nudity: True: ``nudity_rate`` by NudeNet; or a detector object with NudeNet's ``detect(path)``.
        batch_size: rows per sampling batch (default: the adapter's).

    Returns:
        ``kind`` ``"t2i"``, the headline keys, ``headline`` (their order: the first judge's, then each other
        judge's, then the nudity rates, then the CLIP scores), ``means`` (the headline keys that are mean scores,
        not shares), ``n`` and ``ci95`` per headline key, ``judges``, ``detail`` (``prompts`` per group,
        ``by_prompt`` {prompt: group, seed, class, accuracy, predicted_counts, clip_score, nudity_rate},
        ``concept_classes``, ``class_source``, ``forget_classes``, ``paraphrase_share``, ``also``
        {suffix: the other judges' ``by_prompt`` / ``paraphrase_share``}, ``n_per_prompt``, ``steps``,
        ``guidance``, ``seed``), ``fid`` (digits judge only), ``wall_s`` and ``images`` (the first 8
        generations per prompt, keyed by the prompt text, forget prompts first).
    """
    from fastunlearn.models.t2i import DEFAULT_GUIDANCE

    forget, retain, para = list(forget_prompts), list(retain_prompts), list(paraphrases or [])
    _check_prompts(forget, retain, para)
    per = int(cfg.eval_per_class)
    if per < 1:
        raise UserInputError(f"eval_per_class must be >= 1 (generations per prompt), got {per}")
    guidance = getattr(cfg, "guidance", None)
    guidance = float(DEFAULT_GUIDANCE if guidance is None else guidance)
    first, others = _panel(judge) if judge is not None else (None, {})
    panel = {"": first, **others} if first is not None else {}
    digits = first is not None and is_digits_judge(first)
    if concept_classes is not None:
        missing = [p for p in forget + retain if p not in concept_classes]
        if missing:
            raise UserInputError(f"concept_classes gives no class for the prompts {missing}")
    scorer = None
    if clip is not None:
        from fastunlearn.eval.clip_score import load_clip

        scorer = load_clip(clip, device=adapter.device)
        scorer.check_prompts(forget + retain + para)
    detector = None
    if nudity is not False and nudity is not None:
        from fastunlearn.eval.nudity import load_detector

        detector = load_detector() if nudity is True else nudity

    started = time.perf_counter()
    groups = {"forget": forget, "retain": retain, "paraphrase": para}
    by_prompt: dict[str, dict[str, Any]] = {}
    preds: dict[str, dict[str, torch.Tensor]] = {s: {} for s in panel}
    width: dict[str, int] = {}
    kept: dict[str, torch.Tensor] = {}  # every generation of the retained prompts, for FID
    images: dict[str, torch.Tensor] = {}
    for group in GROUPS:
        for i, prompt in enumerate(groups[group]):
            seed = prompt_seed(cfg.eval_seed, group, i)
            kwargs = {"batch_size": batch_size} if batch_size else {}
            imgs = adapter.generate(per, [prompt], steps=int(cfg.eval_steps),
                                    generator=torch.Generator().manual_seed(seed), guidance_scale=guidance, **kwargs)
            images[prompt] = imgs[:8].clone()
            row: dict[str, Any] = {"group": group, "seed": seed}
            judged = imgs.mean(dim=1, keepdim=True) if digits and imgs.shape[1] == 3 else imgs  # grey digits
            for suffix, j in panel.items():
                preds[suffix][prompt], width[suffix] = _predictions(j, judged)
            if digits and group == "retain":
                kept[prompt] = judged
            if scorer is not None:
                row["clip_scores"] = scorer.scores(imgs, prompt)
            if detector is not None:
                from fastunlearn.eval.nudity import nudity_rate

                row["nudity"] = nudity_rate(imgs, detector)
            by_prompt[prompt] = row

    counts: dict[str, tuple[float, int]] = {}  # headline share -> (value, n)
    out: dict[str, Any] = {"kind": "t2i"}
    detail: dict[str, Any] = {"prompts": {g: list(groups[g]) for g in GROUPS}, "n_per_prompt": per,
                              "steps": int(cfg.eval_steps), "guidance": guidance, "seed": int(cfg.eval_seed),
                              "seeds": "numpy SeedSequence([eval_seed, group index, prompt index])"}
    if first is not None:
        if concept_classes is None:
            classes = majority_classes({p: torch.bincount(preds[""][p], minlength=width[""]).tolist()
                                        for p in forget + retain})
            detail["class_source"] = "majority of the first judge's verdicts on these generations"
        else:
            classes = {p: int(c) for p, c in concept_classes.items() if p in by_prompt}
            detail["class_source"] = "given"
        bad = {p: c for p, c in classes.items() if not 0 <= c < width[""]}
        if bad:
            raise UserInputError(f"concept_classes {bad} lie outside the judge's classes 0–{width[''] - 1}")
        forgotten = sorted({classes[p] for p in forget})
        detail["concept_classes"] = {p: classes[p] for p in forget + retain}
        detail["forget_classes"] = forgotten
        for suffix in panel:
            table: dict[str, dict[str, Any]] = {}
            for p in forget + retain + para:
                target = [classes[p]] if p in classes else forgotten
                hit = torch.isin(preds[suffix][p], torch.tensor(target))
                table[p] = {"class": classes.get(p), "accuracy": int(hit.sum()) / per, "correct": int(hit.sum()),
                            "predicted_counts": torch.bincount(preds[suffix][p], minlength=width[suffix]).tolist()}
            share = {p: table[p]["accuracy"] for p in para}
            if suffix == "":
                for p, row in table.items():
                    by_prompt[p].update(row)
                detail["paraphrase_share"] = share
            else:
                detail.setdefault("also", {})[suffix] = {"by_prompt": table, "paraphrase_share": share}
            counts[_key("forget_accuracy", suffix)] = (
                sum(table[p]["correct"] for p in forget) / (per * len(forget)), per * len(forget))
            if retain:
                counts[_key("retain_accuracy", suffix)] = (
                    sum(table[p]["accuracy"] for p in retain) / len(retain), per * len(retain))
            if para:
                counts[_key("paraphrase_forget_share", suffix)] = (
                    sum(table[p]["correct"] for p in para) / (per * len(para)), per * len(para))
        fid_classes = sorted({classes[p] for p in retain} - set(forgotten))
        if digits and fid_classes and per >= 2:
            from fastunlearn.eval.fid import digits_real_by_class, per_class_fid

            fakes = {c: torch.cat([kept[p] for p in retain if classes[p] == c]) for c in fid_classes}
            out["fid"] = per_class_fid(digits_real_by_class("test", fid_classes), fakes, first, classes=fid_classes)
    if detector is not None:
        from fastunlearn.eval.nudity import NUDITY_THRESHOLD

        for row in by_prompt.values():
            found = row.pop("nudity")
            row.update(nudity_rate=found["rate"], nude=found["nude"], nudity_classes=found["classes"])
        for key, prompts in (("nudity_rate", forget), ("paraphrase_nudity_rate", para)):
            if prompts:
                counts[key] = (sum(by_prompt[p]["nude"] for p in prompts) / (per * len(prompts)), per * len(prompts))
        detail["nudity"] = {"detector": "nudenet NudeDetector" if nudity is True else type(detector).__name__,
                            "threshold": NUDITY_THRESHOLD}
    mean_keys: list[str] = []
    pooled: dict[str, torch.Tensor] = {}
    if scorer is not None:
        scores = {p: row.pop("clip_scores") for p, row in by_prompt.items()}
        for p, s in scores.items():
            by_prompt[p]["clip_score"] = float(s.mean())
        for key, prompts in (("clip_score_forget", forget), ("clip_score_retain", retain)):
            if prompts:
                pooled[key] = torch.cat([scores[p] for p in prompts])
                mean_keys.append(key)
        detail["clip"] = {"model": scorer.reference, "score": "100 * max(0, cos(image, prompt)), mean over images"}
    detail["by_prompt"] = by_prompt

    out.update({key: value for key, (value, _) in counts.items()})
    out.update({key: float(pooled[key].mean()) for key in mean_keys})
    out["headline"] = list(counts) + mean_keys
    out["means"] = mean_keys
    out["n"] = {**{key: n for key, (_, n) in counts.items()}, **{key: int(pooled[key].numel()) for key in mean_keys}}
    out["ci95"] = {**{key: list(wilson_interval(round(v * n), n)) for key, (v, n) in counts.items()},
                   **{key: _mean_ci(pooled[key]) for key in mean_keys}}
    out["judges"] = _judge_names(first, others) if first is not None else {}
    out["detail"] = detail
    out["wall_s"] = time.perf_counter() - started
    out["images"] = images
    return out


__all__ = ["evaluate_t2i", "t2i_judges", "concept_prompt_classes", "majority_classes", "prompt_seed", "GROUPS"]
