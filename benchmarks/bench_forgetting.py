"""Forgetting per outer step: fastunlearn's EraseDiff vs the authors' loop, from the same model, same rows.

    python benchmarks/bench_forgetting.py --jobs 2                     # 4 seeds, 5 checkpoints, both judges
    python benchmarks/bench_forgetting.py --references default,adaptive --variant eta=0.1
    python benchmarks/bench_forgetting.py --smoke                      # 2 steps, 1 seed, writes nothing

All start from the shipped ``zoo:digits-ddpm`` and unlearn digit 0 with the same forget and retain rows at
every outer step (:class:`bench_step.Sides`; one row stream per seed). Each runs at its own settings:

- ``fastunlearn`` — the library's EraseDiff step at the **digits default** (``UnlearnConfig().resolved()``, as
  ``fastunlearn run`` resolves it: BOME rule, η 0.5, Adam lr 1e-4, batch 32 per side, grad-clip 1, EMA 0.95) on the
  engine's fast path for the CPU, exactly what ``fastunlearn run`` runs;
- ``reference-default`` — :class:`reference_erasediff.ReferenceEraseDiffDefault`, **the authors' default code
  path** (``--lambda_bome 0.1``): fixed λ = 0.1 (the authors' η_bome), one backward of L_r + λ·L_q per outer
  step, and at the start of every round (S = 2 rounds an epoch) K = 2 full passes over the forget set with
  Adam steps on the live optimizer, θ saved before and restored after them (digits class 0, batch 32: 10 inner
  steps every 5 outer steps); lr 1e-4, grad-clip 1;
- ``reference-adaptive`` (``--references default,adaptive``) — :class:`reference_erasediff.ReferenceEraseDiffAdaptive`,
  the authors' adaptive-λ branch (``--lambda_bome < 0``: K = 2 live inner steps inside every outer step, the
  cosine rule λ = max(0, η − cos) at the authors' η_bome = 0.1);
- ``fastunlearn KEY=VALUE`` (``--variant``) — the library's step with those options over its defaults (e.g.
  ``eta=0.1``), to show what a setting does per step.

Both references keep the library's EMA (0.95) so that every implementation is judged on the weights a run
would save. At every checkpoint (cumulative outer steps) each is evaluated on its EMA weights as the default
job evaluates: ``--per-class`` seeded DDIM samples per class (``--eval-steps`` steps, the same noise for all),
each sample judged by BOTH judges — the shipped CNN (``zoo:digits-classifier``, the one the defaults were first
tuned against) and the independent RBF SVM (``zoo:digits-svm``, another model family); forget = accuracy on
digit 0, retain = mean accuracy on 1–9. ``train_s`` is the cumulative time in the steps only (evaluation
excluded), one torch thread; under ``--jobs`` the seeds run in parallel processes, each timing its
implementations one after the other.

With 100 samples per class one forget-class sample is 1 point, so single runs differ by a few points from
the row draw alone; ``--seeds`` repeats the whole comparison on independent row streams and the README shows
the mean. Rows (one per seed, impl, checkpoint, plus the means) are appended to
``benchmarks/results/forgetting.csv``.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, append_csv, environment, print_table  # noqa: E402
from bench_methods import Evaluator, ema_weights  # noqa: E402
from bench_step import FORGET_CLASS, Sides, build, fast_path_of, library_step  # noqa: E402
from reference_erasediff import ReferenceEraseDiffAdaptive, ReferenceEraseDiffDefault  # noqa: E402

from fastunlearn.config import UnlearnConfig  # noqa: E402
from fastunlearn.eval.judges import DIGITS_JUDGES, JUDGES  # noqa: E402
from fastunlearn.methods import base as methods  # noqa: E402
from fastunlearn.models.ddpm import DDPMAdapter  # noqa: E402

#: the authors' η_bome (METHODS.md): the fixed λ of their default path, and η of their adaptive branch
AUTHORS_ETA = 0.1
REFERENCES = ("default", "adaptive")
#: the judges' short names, in order ("cnn": the shipped classifier, "svm": the independent one)
JUDGE_NAMES = tuple(JUDGES[j] for j in DIGITS_JUDGES)
METRICS = tuple(f"{side}_{j}" for j in JUDGE_NAMES for side in ("forget", "retain"))


def judged(evaluator: Evaluator, adapter) -> dict:
    """``{forget_cnn, retain_cnn, forget_svm, retain_svm}`` of ``adapter`` by :class:`bench_methods.Evaluator`
    (both digits judges on the same seeded generations)."""
    acc = evaluator(adapter)
    return {f"{side}_{j}": acc[side + ("" if j == JUDGE_NAMES[0] else "_" + j)] for j in JUDGE_NAMES
            for side in ("forget", "retain")}


def library_settings(options: dict | None = None) -> tuple[dict, float, int]:
    """(EraseDiff options, lr, batch) of the digits default job with ``options`` over it, resolved exactly as
    ``fastunlearn run`` resolves them (so a variant ``lambda_rule=fixed`` gets that rule's η, not BOME's)."""
    cfg = UnlearnConfig(method="erasediff", options=dict(options or {})).resolved()
    return dict(cfg.options), float(cfg.lr), int(cfg.batch_size)


def parse_variant(text: str) -> dict:
    """``eta=0.1,lambda_rule=cosine`` → EraseDiff options over the defaults (values parsed as numbers where they are)."""
    out = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"--variant wants KEY=VALUE[,KEY=VALUE], got {text!r}")
        try:
            out[key.strip()] = float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            out[key.strip()] = value.strip()
    library_settings(out)  # unknown keys / bad values fail here, before any work
    return out


def compare(checkpoints: list[int], seed: int, per_class: int, eval_steps: int, variants: list[str],
            threads: int = 1, references: tuple[str, ...] = ("default",)) -> list[dict]:
    """Rows {seed, impl, steps, forget_cnn, retain_cnn, forget_svm, retain_svm, train_s} for every implementation
    at each checkpoint (one seed; run in its own process under ``--jobs``)."""
    torch.set_num_threads(threads)
    adapter, retained, images, labels = build("digits", torch.device("cpu"))
    evaluator = Evaluator(per_class, eval_steps)
    options, lr, batch = library_settings()
    sides = Sides(images, labels, batch, seed=seed)
    device = adapter.device
    impls = []
    for label, opts in [("fastunlearn", options)] + [(f"fastunlearn {v}", library_settings(parse_variant(v))[0])
                                                     for v in variants]:
        step, lib = library_step(adapter, retained, sides, fast_path_of("fastunlearn", device), options=opts, lr=lr)

        def judge(lib=lib):
            with ema_weights(lib):
                return judged(evaluator, lib.adapter)

        impls.append((label, step, judge))
    ema_decay = methods.parse_options("erasediff", options).ema_decay

    def ref_judge(ref):
        def judge():
            unet = copy.deepcopy(ref.unet)
            with torch.no_grad():
                ema = ref.ema_state()
                for n, p in unet.named_parameters():
                    p.copy_(ema[n])
            return judged(evaluator, DDPMAdapter(unet, adapter.scheduler, null_label=adapter.null_label))
        return judge

    for name in references:
        if name == "default":
            forget_rows = labels == FORGET_CLASS
            ref = ReferenceEraseDiffDefault().setup(copy.deepcopy(adapter.unet), adapter.scheduler, retained,
                                                    forget_images=images[forget_rows], forget_labels=labels[forget_rows],
                                                    batch=batch, lr=lr, lam=AUTHORS_ETA, ema_decay=ema_decay)
        else:
            ref = ReferenceEraseDiffAdaptive().setup(copy.deepcopy(adapter.unet), adapter.scheduler, retained, lr=lr,
                                                     eta=AUTHORS_ETA, ema_decay=ema_decay)
        impls.append((f"reference-{name}", lambda i, ref=ref: ref.step(*sides.draw(i)), ref_judge(ref)))
    rows = []
    for impl, step, judge in impls:
        spent, done = 0.0, 0
        for stop in checkpoints:
            for i in range(done, stop):
                t0 = time.perf_counter()
                step(i)
                spent += time.perf_counter() - t0
            done = stop
            acc = judge()
            rows.append({"seed": seed, "impl": impl, "steps": stop, **{k: round(acc[k], 4) for k in METRICS},
                         "train_s": round(spent, 1)})
            print(f"  seed {seed} {impl:18s} {stop:4d} steps: "
                  + "  ".join(f"{j}: forget {acc['forget_' + j]:.1%} retain {acc['retain_' + j]:.1%}" for j in JUDGE_NAMES)
                  + f"  ({spent:.1f} s)", flush=True)
    return rows


def means(rows: list[dict]) -> list[dict]:
    """One row per (impl, steps): the mean over seeds (seed = 'mean')."""
    out = []
    for impl in dict.fromkeys(r["impl"] for r in rows):
        for steps in dict.fromkeys(r["steps"] for r in rows):
            group = [r for r in rows if (r["impl"], r["steps"]) == (impl, steps)]
            out.append({"seed": "mean", "impl": impl, "steps": steps,
                        **{k: round(sum(r[k] for r in group) / len(group), 4 if k != "train_s" else 1)
                           for k in METRICS + ("train_s",)}})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoints", default="20,40,60,80,150",
                    help="outer-step counts to evaluate at (comma-separated; 150 = the default job)")
    ap.add_argument("--seeds", type=int, default=4, help="independent row streams (seeds 0..N-1)")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run in this many processes at once (one thread each)")
    ap.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                    help="also run the library with these EraseDiff options over its defaults (repeatable), "
                         "e.g. eta=0.1")
    ap.add_argument("--references", default="default",
                    help="authors' references to run, comma-separated: default (their --lambda_bome 0.1 path), "
                         "adaptive (their adaptive-λ branch)")
    ap.add_argument("--per-class", type=int, default=100, help="judged generations per class")
    ap.add_argument("--eval-steps", type=int, default=10, help="DDIM steps of the evaluation sampler")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (1: stable timings)")
    ap.add_argument("--csv", default=str(RESULTS / "forgetting.csv"), help="CSV to append rows to ('' to skip)")
    ap.add_argument("--smoke", action="store_true", help="2 steps, 1 seed, 2 generations per class, 2 DDIM steps; "
                                                         "nothing written")
    args = ap.parse_args(argv)
    try:
        checkpoints = sorted({int(c) for c in args.checkpoints.split(",")})
        for v in args.variant:
            parse_variant(v)
        references = tuple(dict.fromkeys(r.strip() for r in args.references.split(",") if r.strip()))
        unknown = [r for r in references if r not in REFERENCES]
        if unknown:
            raise ValueError(f"unknown --references {', '.join(unknown)}; expected some of {', '.join(REFERENCES)}")
    except Exception as exc:  # noqa: BLE001 - a bad flag value, reported as such
        ap.error(str(exc))
    if not checkpoints or checkpoints[0] <= 0 or min(args.seeds, args.jobs, args.per_class, args.eval_steps) <= 0:
        ap.error("--checkpoints, --seeds, --jobs, --per-class and --eval-steps must be positive")
    if args.smoke:
        checkpoints, args.seeds, args.per_class, args.eval_steps = [1, 2], 1, 2, 2
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    env = environment(device)  # the commit and date the run starts at
    options, lr, batch = library_settings()
    print(f"library: erasediff at its run defaults (λ rule {options['lambda_rule']}, η {options['eta']}), lr {lr}, "
          f"batch {batch}"
          + "".join(f"; variant {v}" for v in args.variant)
          + "".join(f"; reference-{r}" for r in references)
          + f" (authors' λ/η {AUTHORS_ETA}, lr {lr}); {args.per_class} generations/class, DDIM-{args.eval_steps}, "
          f"judges {', '.join(DIGITS_JUDGES)}", flush=True)
    adapter = build("digits", device)[0]
    base = judged(Evaluator(args.per_class, args.eval_steps), adapter)
    rows = [{"seed": "-", "impl": "before", "steps": 0, **{k: round(base[k], 4) for k in METRICS}, "train_s": 0.0}]
    work = [(checkpoints, seed, args.per_class, args.eval_steps, args.variant, args.threads, references)
            for seed in range(args.seeds)]
    if args.jobs == 1:
        per_seed = [r for w in work for r in compare(*w)]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            per_seed = [r for rs in pool.map(compare, *zip(*work)) for r in rs]
    rows += per_seed + means(per_seed)
    print_table(rows, ["seed", "impl", "steps", *METRICS, "train_s"])
    if not args.smoke and args.csv:
        path = Path(args.csv)
        append_csv(path, [{**env, "batch": batch, "per_class": args.per_class, "eval_steps": args.eval_steps, **r}
                          for r in rows])
        print(f"appended {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
