"""``fastunlearn eval`` and ``fastunlearn verify``: measure any model, and check a run against its manifest.

``cli.py`` registers them with :func:`add_subcommands`. Each handler returns the exit code: ``verify`` gives
0 when the output matches its ``manifest.json`` and 1 naming the mismatching fields; user mistakes raise
:class:`~fastunlearn.errors.UserInputError` (the CLI prints one line, exit code 2).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from fastunlearn.errors import UserInputError


def _verify(args: argparse.Namespace) -> int:
    from fastunlearn.eval.manifest import MANIFEST, verify

    out = Path(args.out_dir).expanduser()
    if not (out / MANIFEST).is_file():
        raise UserInputError(f"{out} has no {MANIFEST}: not the output of a fastunlearn run (or written before manifests)")
    res = verify(out, rerun_metric=not args.no_metric)
    if args.json:
        print(json.dumps({"ok": res.ok, "mismatches": res.mismatches, "checks": res.checks}, indent=2))
    else:
        for line in res.lines():
            print(line)
        print(f"verify: {out} matches its manifest" if res.ok else
              f"verify: MISMATCH in {', '.join(res.mismatches)}")
    return 0 if res.ok else 1


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"--device {name}: CUDA is not available on this machine")
    return dev


def evaluate_model(model: str, forget: str | None = None, eval_per_class: int = 50, eval_steps: int = 20,
                   seed: int = 1234, inception_weights: str | None = None, device: str = "auto",
                   fid: bool = True, mia: bool = True) -> dict[str, Any]:
    """Evaluate a model without unlearning it (what ``fastunlearn eval`` prints).

    Generation accuracy per class by both judges (the shipped digits CNN, and the independent RBF-SVM
    ``zoo:digits-svm``: keys ``*_svm``; for 1×16×16 models of ≤ 10 classes), forget/retain accuracy when
    ``forget`` is given (``n``: the generations behind each), FID/KID of the retained classes against the digits test
    split in the judge's feature space (plus an Inception FID with ``inception_weights``), and the membership
    AUC of the forget set against held-out test digits of its classes.
    """
    from fastunlearn.engine.loop import cpu_threads_for
    from fastunlearn.models.ddpm import load_adapter

    if eval_per_class < 2:
        raise UserInputError(f"--eval-per-class must be at least 2 (FID needs two samples), got {eval_per_class}")
    if inception_weights is not None and not Path(inception_weights).expanduser().is_file():
        raise UserInputError(f"--inception-weights {inception_weights}: no such file (nothing is downloaded)")
    from fastunlearn.models import family_of_ref

    if family_of_ref(model) == "t2i":
        raise UserInputError(
            f"{model} is a text-to-image model: `fastunlearn eval` measures class-conditional DDPMs. A text-to-image "
            "run measures before and after itself (fastunlearn run --model ... --forget 'prompt:...'); look at any "
            "model's outputs with `fastunlearn generate --model ... --prompt TEXT --num N --seed S --out grid.png`")
    if family_of_ref(model) == "i2i":
        raise UserInputError(
            f"{model} is an image-to-image model: `fastunlearn eval` measures class-conditional DDPMs. An "
            "image-to-image run measures before and after itself (fastunlearn run --model ... --forget class:C); look "
            "at its completions with `fastunlearn generate --model ... --images FILE.npz --out grid.png`")
    dev = _device(device)
    adapter = load_adapter(model).to(dev)
    adapter.unet.eval()
    with cpu_threads_for(adapter, dev):  # the run's rule: 1 thread for a small model on the CPU
        return _evaluate(adapter, dev, model, forget, eval_per_class, eval_steps, seed, inception_weights, fid, mia)


def _evaluate(adapter: Any, dev: torch.device, model: str, forget: str | None, eval_per_class: int, eval_steps: int,
              seed: int, inception_weights: str | None, fid: bool, mia: bool) -> dict[str, Any]:
    from fastunlearn.data.selection import select_forget_retain
    from fastunlearn.eval.classifier import generation_accuracy
    from fastunlearn.eval.fid import digits_real_by_class, per_class_fid
    from fastunlearn.eval.mia import forget_membership_auc
    from fastunlearn.eval.judges import load_judge
    from fastunlearn.eval.perf import Measure

    c, h, w = adapter.image_shape
    if (c, h, w) != (1, 16, 16) or not adapter.num_classes or adapter.num_classes > 10:
        raise UserInputError(
            f"fastunlearn eval judges 1×16×16 class-conditional digit models (the shipped judge); this model draws "
            f"{c}×{h}×{w} images with {adapter.num_classes or 'no'} classes")
    judge = load_judge("zoo:digits-classifier", device=str(dev))
    svm = load_judge("zoo:digits-svm", device=str(dev))  # the second, independent judge
    classes = list(range(adapter.num_classes))
    sets = select_forget_retain(forget, None, image_size=h, channels=c) if forget else None
    forget_classes = list(sets.forget_classes) if sets is not None else []
    drawn: dict[int, list[torch.Tensor]] = {k: [] for k in classes}

    def sample_fn(n: int, class_labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        images = adapter.generate(n, class_labels, steps=eval_steps, generator=generator)
        for y, img in zip(class_labels.tolist(), images):
            drawn[int(y)].append(img)
        return images

    out: dict[str, Any] = {"model": str(model), "forget": forget, "device": str(dev), "eval_steps": eval_steps,
                           "eval_seed": seed}
    with Measure(dev) as m:
        res = generation_accuracy(sample_fn, judge, classes, eval_per_class,
                                  generator=torch.Generator().manual_seed(seed), also={"svm": svm})
    out["generation"] = m.result(samples=res["n_samples"])
    acc = res["accuracy_by_class"]
    acc_svm = res["also"]["svm"]["accuracy_by_class"]
    out["judges"] = {"": "zoo:digits-classifier", "svm": "zoo:digits-svm"}
    out["accuracy_by_class"] = acc
    out["accuracy_by_class_svm"] = acc_svm
    out["n_per_class"] = eval_per_class
    out["mean_accuracy"] = res["mean_accuracy"]
    out["mean_accuracy_svm"] = res["also"]["svm"]["mean_accuracy"]
    out["n"] = {"mean_accuracy": res["n_samples"], "mean_accuracy_svm": res["n_samples"]}
    retained = [k for k in classes if k not in forget_classes]
    if forget_classes:
        out["forget_classes"] = forget_classes
        for suffix, a in (("", acc), ("_svm", acc_svm)):
            out["forget_accuracy" + suffix] = sum(a[k] for k in forget_classes) / len(forget_classes)
            out["retain_accuracy" + suffix] = sum(a[k] for k in retained) / max(len(retained), 1)
            out["n"]["forget_accuracy" + suffix] = eval_per_class * len(forget_classes)
            out["n"]["retain_accuracy" + suffix] = eval_per_class * len(retained)
    fake = {k: torch.stack(v) for k, v in drawn.items()}
    if fid and retained:
        real = digits_real_by_class("test", retained)
        out["fid"] = per_class_fid(real, fake, judge, classes=retained)
        if inception_weights is not None:
            out["fid_inception"] = per_class_fid(real, fake, None, classes=retained,
                                                 inception_weights=inception_weights)["overall"]
    if mia and sets is not None:
        out["mia"] = forget_membership_auc(adapter, sets.forget_images, sets.forget_labels)
    return out


def format_eval(res: dict[str, Any]) -> str:
    """The table ``fastunlearn eval`` prints: per class each judge's accuracy (of ``n_per_class`` generations)
    and FID / KID; then the forget/retain (or mean) accuracy of each judge with its 95 % Wilson interval
    and count."""
    from fastunlearn.eval.stats import rate_text

    forget = set(res.get("forget_classes", []))
    per = res["n_per_class"]
    lines = [f"model {res['model']} on {res['device']}: {per} generations per class, "
             f"{res['eval_steps']} DDIM steps, seed {res['eval_seed']} "
             f"({res['generation']['samples_per_s']:.1f} samples/s)", ""]
    fid = res.get("fid", {}).get("by_class", {})
    svm = res.get("accuracy_by_class_svm", {})
    lines.append(f"{'class':<12}{'CNN acc':>10}{'SVM acc':>10}{'FID':>10}{'KID':>10}")
    for k, a in res["accuracy_by_class"].items():
        f = fid.get(k)
        label = f"{k}{' (forget)' if k in forget else ''}"
        s = f"{svm[k]:>10.1%}" if k in svm else f"{'–':>10}"
        lines.append(f"{label:<12}{a:>10.1%}{s}"
                     + (f"{f['fid']:>10.2f}{f['kid_mean']:>10.3f}" if f else f"{'–':>10}{'–':>10}"))
    lines.append(f"(per class: n={per} generations each, 95% interval about ±{_half_width(per)} points; "
                 "per-class FID/KID on so few images is for orientation only)")
    lines.append("")
    n = res.get("n", {})
    keys = (("forget_accuracy", "retain_accuracy") if "forget_accuracy" in res else ("mean_accuracy",))
    for suffix, name in (("", "CNN judge zoo:digits-classifier"), ("_svm", "SVM judge zoo:digits-svm")):
        for key in keys:
            if key + suffix in res:
                label = key.replace("_", " ") + (" (SVM)" if suffix else "")
                lines.append(f"{label:<24}{rate_text(res[key + suffix], n.get(key + suffix))}   [{name}]")
    if "fid" in res:
        o = res["fid"]["overall"]
        lines.append(f"FID (retained)    {o['fid']:.2f}   KID {o['kid_mean']:.3f} ± {o['kid_std']:.3f} "
                     f"(spread over subsets of {o.get('kid_subset_size', '?')}; unit-normalised features)   "
                     f"({o['n_real']} real test / {o['n_fake']} generated, {o['feature_space']})")
    if "fid_inception" in res:
        lines.append(f"FID (Inception)   {res['fid_inception']['fid']:.2f}")
    if res.get("mia"):
        mi = res["mia"]
        lines.append(f"membership AUC    {mi['auc']:.3f} ± {mi.get('auc_se', float('nan')):.3f}   "
                     f"({mi['n_members']} forget-set members vs {mi['n_non_members']} held-out; 0.5 = indistinguishable)")
    return "\n".join(lines)


def _half_width(n: int) -> str:
    from fastunlearn.eval.stats import wilson_interval

    lo, hi = wilson_interval(round(0.95 * n), n)
    return f"{(hi - lo) * 50:.0f}"


def _eval(args: argparse.Namespace) -> int:
    res = evaluate_model(args.model, forget=args.forget, eval_per_class=args.eval_per_class,
                         eval_steps=args.eval_steps, seed=args.seed, inception_weights=args.inception_weights,
                         device=args.device, fid=not args.no_fid)
    print(json.dumps(res, indent=2, default=str) if args.json else format_eval(res))
    return 0


def add_subcommands(subparsers: Any) -> None:
    """Register ``eval`` and ``verify`` on the ``fastunlearn`` parser's sub-parsers."""
    p_eval = subparsers.add_parser(
        "eval", help="evaluate a model without unlearning (accuracy per class, FID/KID, membership AUC)",
        description="Judge a model's class-conditional generations with the shipped digits classifier and a "
                    "second, independent judge (an RBF SVM on the pixels): accuracy per class, FID/KID of the retained classes against held-out digits in the judge's feature "
                    "space, and with --forget the forget/retain accuracy and the forget set's membership AUC.")
    p_eval.add_argument("--model", required=True, help="zoo:NAME or a model directory (e.g. a run's --out)")
    p_eval.add_argument("--forget", help="selector of the forgotten data (class:C, index:I, ...)")
    p_eval.add_argument("--eval-per-class", type=int, default=50, metavar="N", help="generations per class (default 50)")
    p_eval.add_argument("--eval-steps", type=int, default=20, help="DDIM steps (default 20)")
    p_eval.add_argument("--seed", type=int, default=1234, help="noise seed of the generations (default 1234)")
    p_eval.add_argument("--inception-weights", metavar="PATH", help="local Inception weight file for an Inception FID")
    p_eval.add_argument("--no-fid", action="store_true", help="skip FID/KID")
    p_eval.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:N]")
    p_eval.add_argument("--json", action="store_true", help="print the results as JSON")
    p_eval.set_defaults(func=_eval)
    p_ver = subparsers.add_parser(
        "verify", help="check a run's output against its manifest.json (weight hashes, forget metric)",
        description="Recompute the SHA-256 of the saved weights and re-run the forget metric with the recorded "
                    "protocol; exit 0 when both match the manifest, 1 naming what does not.")
    p_ver.add_argument("out_dir", metavar="OUT_DIR", help="the output directory of `fastunlearn run`")
    p_ver.add_argument("--no-metric", action="store_true", help="only check the weight hashes")
    p_ver.add_argument("--json", action="store_true", help="print the checks as JSON")
    p_ver.set_defaults(func=_verify)


__all__ = ["add_subcommands", "evaluate_model", "format_eval"]
