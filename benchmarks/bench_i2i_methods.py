"""Image-to-image unlearning side by side: ``i2i`` and the paper's baselines, same runs, same evaluation.

    python benchmarks/bench_i2i_methods.py                       # both models, every method, both retain sets
    python benchmarks/bench_i2i_methods.py --models digits-mae --methods i2i --retains real,proxy
    python benchmarks/bench_i2i_methods.py --smoke                # minutes: 2 steps, tiny evaluation, writes nothing

For each embedded image-to-image model (``zoo:digits-inpaint``, ``zoo:digits-mae``), each retain set — ``real``
(the retained classes' own training images, the run's default) and ``proxy`` (``--retain proxy:mnist``: MNIST
digits from another source, the forget classes dropped) — and each method (``i2i`` and the baselines of Li et
al., ICLR 2024: ``max_loss``, ``noisy_label``, ``retain_label``, ``random_encoder``), the benchmark runs exactly
``fastunlearn run --model zoo:MODEL --method METHOD --forget class:0,1,2,3,4 [--retain proxy:mnist]`` — every
method at its defaults for the model, the run's own before/after evaluation — and records its figures:

- ``forget_acc`` / ``retain_acc``: the shipped digits CNN's accuracy on the completions of the held-out forget /
  retained classes' centre-masked test images (35 per class), before (``*_before``) and after; ``*_svm``: the
  second judge's, after;
- ``cos_forget`` / ``cos_retain``: mean cosine of completion and original in the CNN's feature space (after);
- ``fid_forget`` / ``fid_retain``: FID of the completions against their originals in that space (after);
- ``bar``: whether the issue's bar holds on the CNN — forget ≤ 30 % and retained classes ≤ 3 points below the
  base;
- ``train_s`` (the training loop) and ``wall_s`` (the whole run, evaluation included) on this machine.

Rows go to ``benchmarks/results/i2i_methods.csv`` as each run ends (a crash loses nothing); the README table
(markers ``<!-- i2i-methods-table:start -->`` / ``end``) is ``benchmarks/readme_tables.py``'s.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, append_csv, environment, print_table  # noqa: E402

MODELS = ("digits-inpaint", "digits-mae")
METHODS = ("i2i", "max_loss", "noisy_label", "retain_label", "random_encoder")
RETAINS = {"real": None, "proxy": "proxy:mnist"}
FORGET = "class:0,1,2,3,4"
#: the issue's bar: forget-class completions judged their class at most this often, retained classes losing at most
#: this much (CNN judge)
FORGET_MAX, RETAIN_DROP = 0.30, 0.03


def figures(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The row's figures from a run's before/after evaluation (module docstring)."""
    def fid(m: dict[str, Any], key: str) -> Any:
        value = ((m.get(key) or {}).get("overall") or {}).get("fid")
        return round(value, 2) if value is not None else ""

    row = {"forget_acc_before": round(before["forget_accuracy"], 4), "forget_acc": round(after["forget_accuracy"], 4),
           "forget_acc_svm": round(after["forget_accuracy_svm"], 4),
           "retain_acc_before": round(before["retain_accuracy"], 4), "retain_acc": round(after["retain_accuracy"], 4),
           "retain_acc_svm": round(after["retain_accuracy_svm"], 4),
           "cos_forget": round(after["cosine_forget"], 4), "cos_retain": round(after["cosine_retain"], 4),
           "fid_forget": fid(after, "fid_forget"), "fid_retain": fid(after, "fid")}
    row["bar"] = bool(after["forget_accuracy"] <= FORGET_MAX
                      and after["retain_accuracy"] >= before["retain_accuracy"] - RETAIN_DROP - 1e-9)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--retains", default="real,proxy", help="real, proxy or both (default)")
    ap.add_argument("--baselines-proxy", action="store_true",
                    help="run the baselines with the proxy retain set too (default: i2i only)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=None, help="where the runs' outputs go (default: a temporary directory)")
    ap.add_argument("--csv", default=str(RESULTS / "i2i_methods.csv"), help="CSV to append rows to ('' to skip)")
    ap.add_argument("--smoke", action="store_true", help="2 steps, 2 images per class; writes nothing")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)  # what each run uses (fastunlearn.run's threads), as the device label says
    import fastunlearn

    models = [m for m in args.models.split(",") if m]
    methods = [m for m in args.methods.split(",") if m]
    retains = [r for r in args.retains.split(",") if r]
    for r in retains:
        if r not in RETAINS:
            ap.error(f"unknown retain set {r!r}; expected one of {', '.join(RETAINS)}")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-i2i-methods-"))
    env = environment(torch.device("cpu"))
    print(f"{env['device']} | torch {env['torch']} | commit {env['commit']} | models {models} | methods {methods} | "
          f"retain {retains}", flush=True)
    rows = []
    for model in models:
        for retain in retains:
            for method in methods:
                if retain != "real" and method != "i2i" and not args.baselines_proxy:
                    continue
                out = work / f"{model}-{retain}-{method}"
                extra = {"steps": 2, "eval_per_class": 2} if args.smoke else {}
                print(f"{model} · retain {retain} · {method} → {out}", flush=True)
                t0 = time.perf_counter()
                result = fastunlearn.run(model=f"zoo:{model}", forget=FORGET, retain=RETAINS[retain], method=method,
                                         out_dir=out, seed=args.seed, progress=False, threads=args.threads, **extra)
                wall = time.perf_counter() - t0
                cfg = result.config
                row = {**env, "model": model, "retain": retain, "method": method, "seed": args.seed,
                       "steps": cfg.steps, "batch": cfg.batch_size, "lr": cfg.lr,
                       "alpha": cfg.options.get("alpha", ""), "noise": cfg.options.get("noise", ""),
                       "precision": result.train.get("fast_path", {}).get("precision", ""),
                       "train_s": round(result.train["train_wall_s"], 1), "wall_s": round(wall, 1),
                       **figures(result.metrics_before, result.metrics_after)}
                rows.append(row)
                print(f"  forget {row['forget_acc_before']:.3f} → {row['forget_acc']:.3f}, retain "
                      f"{row['retain_acc_before']:.3f} → {row['retain_acc']:.3f}, bar {row['bar']}, "
                      f"{row['wall_s']:.0f} s", flush=True)
                if not args.smoke and args.csv:  # as soon as it is measured
                    append_csv(Path(args.csv), rows[-1:])
    print_table(rows, ["model", "retain", "method", "steps", "lr", "alpha", "forget_acc", "retain_acc", "cos_forget",
                       "fid_forget", "fid_retain", "bar", "wall_s"])
    if args.smoke:  # machine-readable rows for the smoke test
        for r in rows:
            print("row " + json.dumps({k: r[k] for k in ("model", "retain", "method", "steps", "forget_acc",
                                                         "retain_acc", "bar")}))
    elif args.csv:
        print(f"appended {len(rows)} rows to {args.csv}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
