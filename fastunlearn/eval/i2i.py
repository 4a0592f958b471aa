"""The before/after evaluation of an image-to-image model: :func:`evaluate_i2i`.

The image-to-image counterpart of :func:`fastunlearn.eval.evaluate.evaluate` and
:func:`fastunlearn.eval.t2i.evaluate_t2i`, with the same result schema (``kind`` ``"i2i"``, the headline keys,
``headline``, ``means``, ``n``, ``ci95``, ``judges``, ``detail``, ``fid``, ``wall_s``, ``images``), so
``format_table``, the report and the manifest read it alike. Li et al. (ICLR 2024) evaluate an unlearned
generator by what it makes of the forget and the retain classes' images under the mask: its completions.

**Inputs.** The held-out ``test`` split of the digits (never trained on, by the model or by the unlearning), the
first n images of every forget class and every retained class (the judge's classes that are not forgotten), with
n = min(``cfg.eval_per_class``, the smallest of those classes' test counts) — the same n per class, so every
class weighs the same. Each image is masked with the model's mask (the run's ``mask``) and completed by
:func:`fastunlearn.cli_generate.complete_images` (the code ``fastunlearn generate --images`` runs) with
``cfg.eval_steps`` DDIM steps from the noise :func:`class_seed` gives its class: the same images, noise and
completions before and after unlearning, and a class's completions do not depend on which other classes are
evaluated.

**Figures**, with x an original, x̂ its completion, F and R the forget and retained classes:

- ``forget_accuracy`` / ``retain_accuracy``: the share of the completions of F's (R's) images that the first
  judge (the shipped digits CNN) classifies as the original's class — falls towards the trivial fills' floor
  when the model no longer completes the forgotten classes; ``_svm``: the second judge's on the same images;
  their ``ci95`` the Wilson interval over the n·|F| (n·|R|) completions;
- ``cosine_forget`` / ``cosine_retain``: the mean over a side's images of cos(φ(x̂), φ(x)), φ the first judge's
  128-wide penultimate features — the offline stand-in for the paper's CLIP similarity of output and
  original (↓ on the forget side, ≈ on the retained); ``ci95`` mean ± 1.96 s/√N; listed in ``means``;
- ``fid`` / ``fid_forget``: FID/KID of the retained (forget) classes' completions against their originals in φ's
  space (:func:`fastunlearn.eval.fid.per_class_fid`: per class and over the side) — ↑ on the forget side,
  ≈ on the retained;
- ``tsne``: a 2-D t-SNE (scikit-learn) of the ENCODER's embeddings of the same masked images
  (:meth:`~fastunlearn.models.i2i.I2IAdapter.encode`, the features the unlearning objective acts on): the
  inpainter's at t = T − 1 with the completion's own initial noise in the hole, i.e. what its encoder sees at
  the first step of the completion; the masked autoencoder's are deterministic. Coordinates, classes and
  settings; :func:`tsne_image` draws the before/after pair the report embeds.

``detail`` holds ``classes`` (F then R, sorted), ``forget_classes``, ``retain_classes``, ``n_per_class``,
``accuracy_by_class`` (the first judge's; ``also[suffix]`` the others'), ``cosine_by_class``, ``mask``, ``steps``,
``seed``. ``images`` holds the first 8 completions per class (the report's grids).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastunlearn.errors import UserInputError
from fastunlearn.eval.evaluate import _judge_names, _key, _panel
from fastunlearn.eval.stats import wilson_interval

#: Images per judge / feature / encoder call.
_BATCH = 256
#: The t-SNE's PCA pre-reduction (the usual 50 dimensions) and its largest perplexity.
TSNE_PCA = 50
TSNE_PERPLEXITY = 30.0
#: The held-out split every image-to-image evaluation completes.
SPLIT = "test"


def class_seed(eval_seed: int, cls: int) -> int:
    """The noise seed of class ``cls``'s completions: the first 63 bits of
    ``numpy.random.SeedSequence([eval_seed, cls])``. Row i of the class is completed from
    ``initial_noise(class_seed, n, shape)[i]``."""
    state = np.random.SeedSequence([int(eval_seed), int(cls)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 32 | int(state[1])) & ((1 << 63) - 1))


def held_out_images(classes: Sequence[int], per_class: int | None = None) -> dict[int, torch.Tensor]:
    """The first ``per_class`` images (all when None) of each class of the digits ``test`` split, in split
    order: ``{class: [n, 1, 16, 16]}``."""
    from fastunlearn.data.digits import load_digits_split

    data = load_digits_split(SPLIT)
    out = {}
    for c in classes:
        found = data.images[data.labels == int(c)]
        if found.shape[0] == 0:
            raise UserInputError(f"class {c} has no image in the digits {SPLIT} split (classes 0–9)")
        out[int(c)] = found if per_class is None else found[:int(per_class)]
    return out


def images_per_class(eval_per_class: int, classes: Sequence[int]) -> int:
    """n = min(``eval_per_class``, the smallest test count of ``classes``)."""
    counts = [v.shape[0] for v in held_out_images(classes).values()]
    if int(eval_per_class) < 1:
        raise UserInputError(f"eval_per_class must be >= 1 (test images per class), got {eval_per_class}")
    return min([int(eval_per_class), *counts])


def _complete(adapter: Any, originals: dict[int, torch.Tensor], cfg: Any, batch_size: int
              ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """``({class: completions}, {class: initial noise})`` of every class's originals (one completion each)."""
    from fastunlearn.cli_generate import complete_images, initial_noise

    noise = {c: initial_noise(class_seed(cfg.eval_seed, c), x.shape[0], adapter.image_shape)
             for c, x in originals.items()}
    xs = torch.cat(list(originals.values()))
    done = complete_images(adapter, xs, None, num=1, steps=int(cfg.eval_steps), batch_size=batch_size,
                           noise=torch.cat(list(noise.values())))
    out, start = {}, 0
    for c, x in originals.items():
        out[c] = done[start:start + x.shape[0]]
        start += x.shape[0]
    return out, noise


@torch.no_grad()
def encoder_embeddings(adapter: Any, images: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The encoder's rows ``[N, F]`` (float32, CPU) of ``images`` under the model's mask: an encoding that draws
    (t, ε) (the inpainter) takes t = T − 1 and ``noise`` as ε — the completion's first step."""
    was = adapter.training
    adapter.eval()
    rows = []
    try:
        for s in range(0, images.shape[0], _BATCH):
            x = images[s:s + _BATCH]
            t, eps = adapter.encoder_noise(x.shape[0], torch.Generator().manual_seed(0))
            if t is not None:
                t = torch.full_like(t, int(adapter.num_train_timesteps) - 1)
                eps = noise[s:s + _BATCH].to(device=eps.device, dtype=eps.dtype)
            rows.append(adapter.encode(x, None, t, eps).float().cpu())
    finally:
        adapter.train(was)
    return torch.cat(rows)


def tsne_points(embeddings: torch.Tensor, seed: int) -> tuple[np.ndarray, float]:
    """2-D t-SNE of ``embeddings`` ``[N, F]``: standardised to zero mean per feature, PCA to
    min(:data:`TSNE_PCA`, N, F) dimensions, then scikit-learn's Barnes–Hut t-SNE (PCA initialisation,
    perplexity min(:data:`TSNE_PERPLEXITY`, (N − 1) / 3), at least 1), seeded, on as many threads as torch uses.
    Returns the ``[N, 2]`` points and the perplexity."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = embeddings.double().numpy()
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"a t-SNE needs at least 2 points, got {n}")
    perplexity = max(1.0, min(TSNE_PERPLEXITY, (n - 1) / 3.0))
    with threadpool_limits(limits=torch.get_num_threads()):
        x = x - x.mean(axis=0, keepdims=True)
        k = min(TSNE_PCA, n, x.shape[1])
        if k < x.shape[1]:
            x = PCA(n_components=k, random_state=int(seed) % (2 ** 32)).fit_transform(x)
        if n <= 3:  # too few points for a neighbourhood: the PCA plane itself
            pts = np.zeros((n, 2))
            pts[:, :min(2, x.shape[1])] = x[:, :2]
            return pts, perplexity
        pts = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                   random_state=int(seed) % (2 ** 32)).fit_transform(x)
    return pts, perplexity


def _mean_ci(values: torch.Tensor) -> list[float]:
    from fastunlearn.eval.t2i import _mean_ci as mean_ci

    return mean_ci(values)


def evaluate_i2i(adapter: Any, cfg: Any, forget_classes: Sequence[int], retain_classes: Sequence[int],
                 judge: Any, batch_size: int = 64, tsne: bool = True) -> dict[str, Any]:
    """Completion accuracy, similarity, FID/KID and the encoder's t-SNE of ``adapter`` on held-out test digits
    of ``forget_classes`` and ``retain_classes`` (see the module docstring for every key).

    Args:
        adapter: the image-to-image model (:class:`~fastunlearn.models.i2i.I2IAdapter`) under its own mask.
        cfg: ``eval_per_class`` (test images per class, capped by the split), ``eval_steps``, ``eval_seed``.
        forget_classes / retain_classes: disjoint, non-empty class lists.
        judge: one judge or a panel ``{"": first, "svm": second}``
            (:func:`fastunlearn.eval.evaluate.digits_judges`); the first must have ``features`` for the
            similarity and FID/KID (the digits CNN does).
        batch_size: inputs per completion call.
        tsne: whether to compute the encoder's t-SNE.
    """
    forget, retain = sorted({int(c) for c in forget_classes}), sorted({int(c) for c in retain_classes})
    if not forget or not retain:
        raise UserInputError("the image-to-image evaluation needs forget classes and retained classes "
                             f"(got {forget or 'none'} and {retain or 'none'})")
    if set(forget) & set(retain):
        raise UserInputError(f"classes {sorted(set(forget) & set(retain))} are both forgotten and retained")
    first, others = _panel(judge)
    panel = {"": first, **others}
    classes = forget + retain
    per = images_per_class(cfg.eval_per_class, classes)
    started = time.perf_counter()
    originals = held_out_images(classes, per)
    completions, noise = _complete(adapter, originals, cfg, batch_size)

    from fastunlearn.eval.t2i import _predictions

    correct: dict[str, dict[int, int]] = {s: {} for s in panel}
    for suffix, j in panel.items():
        for c in classes:
            pred, _ = _predictions(j, completions[c])
            correct[suffix][c] = int((pred == c).sum())
    counts: dict[str, tuple[float, int]] = {}
    for suffix in panel:
        for side, cs in (("forget_accuracy", forget), ("retain_accuracy", retain)):
            k = sum(correct[suffix][c] for c in cs)
            counts[_key(side, suffix)] = (k / (per * len(cs)), per * len(cs))

    out: dict[str, Any] = {"kind": "i2i"}
    pooled: dict[str, torch.Tensor] = {}
    cos_by_class: dict[int, float] = {}
    if callable(getattr(first, "features", None)):
        from fastunlearn.eval.fid import JudgeFeatures, per_class_fid

        feats = JudgeFeatures(first, example=originals[classes[0]])
        cos = {}
        for c in classes:
            a = torch.cat([feats(completions[c][s:s + _BATCH]) for s in range(0, per, _BATCH)]).double()
            b = torch.cat([feats(originals[c][s:s + _BATCH]) for s in range(0, per, _BATCH)]).double()
            cos[c] = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12).float()
            cos_by_class[c] = float(cos[c].mean())
        pooled = {"cosine_forget": torch.cat([cos[c] for c in forget]),
                  "cosine_retain": torch.cat([cos[c] for c in retain])}
        if per >= 2:
            for key, cs in (("fid", retain), ("fid_forget", forget)):
                out[key] = per_class_fid({c: originals[c] for c in cs}, {c: completions[c] for c in cs}, first,
                                         classes=cs)
    if tsne:
        z = encoder_embeddings(adapter, torch.cat([originals[c] for c in classes]),
                               torch.cat([noise[c] for c in classes]))
        pts, perplexity = tsne_points(z, cfg.eval_seed)
        out["tsne"] = {"x": [round(float(v), 4) for v in pts[:, 0]], "y": [round(float(v), 4) for v in pts[:, 1]],
                       "class": [c for c in classes for _ in range(per)], "forget_classes": forget,
                       "features": int(z.shape[1]), "perplexity": perplexity,
                       "timestep": (int(adapter.num_train_timesteps) - 1
                                    if hasattr(adapter, "num_train_timesteps") else None)}
    means = list(pooled)
    out.update({key: value for key, (value, _) in counts.items()})
    out.update({key: float(v.mean()) for key, v in pooled.items()})
    out["headline"] = list(counts) + means
    out["means"] = means
    out["n"] = {**{key: n for key, (_, n) in counts.items()}, **{key: int(v.numel()) for key, v in pooled.items()}}
    out["ci95"] = {**{key: list(wilson_interval(round(v * n), n)) for key, (v, n) in counts.items()},
                   **{key: _mean_ci(v) for key, v in pooled.items()}}
    out["judges"] = _judge_names(first, others)
    detail: dict[str, Any] = {
        "classes": classes, "forget_classes": forget, "retain_classes": retain, "n_per_class": per,
        "accuracy_by_class": {c: correct[""][c] / per for c in classes}, "cosine_by_class": cos_by_class,
        "mask": adapter.mask.spec, "steps": int(cfg.eval_steps), "seed": int(cfg.eval_seed), "split": SPLIT,
        "seeds": "class c's noise: initial_noise(numpy SeedSequence([eval_seed, c]), n, image shape)"}
    for suffix in others:
        detail.setdefault("also", {})[suffix] = {"accuracy_by_class": {c: correct[suffix][c] / per for c in classes}}
    out["detail"] = detail
    out["wall_s"] = time.perf_counter() - started
    out["images"] = {c: completions[c][:8].clone() for c in classes}
    return out


def forget_accuracy(adapter: Any, forget_classes: Sequence[int], n_per_class: int, steps: int, seed: int,
                    judge: Any, batch_size: int = 64) -> float:
    """The first judge's ``forget_accuracy`` alone, with :func:`evaluate_i2i`'s protocol (the same images, noise
    and completions of the forget classes): what ``fastunlearn verify`` re-measures."""
    from types import SimpleNamespace

    from fastunlearn.eval.t2i import _predictions

    forget = sorted({int(c) for c in forget_classes})
    cfg = SimpleNamespace(eval_seed=int(seed), eval_steps=int(steps))
    originals = held_out_images(forget, int(n_per_class))
    completions, _ = _complete(adapter, originals, cfg, batch_size)
    first, _ = _panel(judge)
    hits = sum(int((_predictions(first, completions[c])[0] == c).sum()) for c in forget)
    return hits / sum(x.shape[0] for x in originals.values())


def eval_protocol(cfg: Any, adapter: Any, after: dict[str, Any]) -> dict[str, Any] | None:
    """How ``after["forget_accuracy"]`` was measured (for ``fastunlearn verify``), or None when the first judge
    is not the shipped digits CNN."""
    if after.get("judges", {}).get("") != "zoo:digits-classifier" or "forget_accuracy" not in after:
        return None
    detail = after["detail"]
    return {"kind": "i2i", "n_per_class": int(detail["n_per_class"]), "steps": int(detail["steps"]),
            "seed": int(detail["seed"]), "mask": str(detail["mask"]), "threads": getattr(cfg, "threads", None),
            "judge": "zoo:digits-classifier"}


def rerun_forget_accuracy(out_dir: str | Path, v: dict[str, Any]) -> float:
    """Re-measure a saved run's recorded ``forget_accuracy`` (``v``: its manifest's ``verification``) on the model
    in ``out_dir``, under the recorded mask and the run's thread rule."""
    from fastunlearn.engine import cpu_threads
    from fastunlearn.models import load_model
    from fastunlearn.zoo import load_classifier

    adapter = load_model(out_dir).eval()
    if getattr(adapter, "family", None) != "i2i":
        raise ValueError(f"{out_dir} holds no image-to-image model")
    adapter.set_mask(v["mask"])
    threads = cpu_threads(adapter, adapter.device, v.get("threads"))
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return forget_accuracy(adapter, v["forget_classes"], int(v["n_per_class"]), int(v["steps"]), int(v["seed"]),
                               load_classifier())
    finally:
        torch.set_num_threads(before)


def tsne_image(before: dict[str, Any] | None, after: dict[str, Any] | None):
    """The encoder's t-SNE before and after (``result["tsne"]`` of two evaluations) side by side, as a PIL image:
    one colour per class, forgotten classes as crosses, retained ones as dots; None when neither has one."""
    panels = [(name, res["tsne"]) for name, res in (("before unlearning", before), ("after unlearning", after))
              if res and res.get("tsne")]
    if not panels:
        return None
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.3), dpi=110, squeeze=False)
    cmap = plt.get_cmap("tab10")
    for ax, (name, t) in zip(axes.flat, panels):
        x, y, cls = np.asarray(t["x"]), np.asarray(t["y"]), np.asarray(t["class"])
        forgotten = set(int(c) for c in t.get("forget_classes", []))
        for c in sorted(set(cls.tolist())):
            sel = cls == c
            gone = int(c) in forgotten
            ax.scatter(x[sel], y[sel], s=16 if gone else 9, marker="x" if gone else "o", color=cmap(int(c) % 10),
                       alpha=0.85, linewidths=1.1 if gone else 0,
                       label=f"{c} (forgotten)" if gone else str(c))
        ax.set_title(f"encoder embeddings, {name}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


__all__ = ["evaluate_i2i", "forget_accuracy", "eval_protocol", "rerun_forget_accuracy", "tsne_image", "tsne_points",
           "encoder_embeddings", "held_out_images", "images_per_class", "class_seed", "SPLIT"]
