"""Forgetting per outer step: fastunlearn's EraseDiff vs the authors' loop, from the same model, same rows.

    python benchmarks/bench_forgetting.py --jobs 2 --variant eta=0.1   # 4 seeds, 5 checkpoints; ~25 min on 2 cores
    python benchmarks/bench_forgetting.py --smoke                      # 2 steps, 1 seed, writes nothing

Both start from the shipped ``zoo:digits-ddpm`` and unlearn digit 0 with the same forget and retain rows at
every outer step (:class:`bench_step.Sides`; one row stream per seed). Each runs at its own settings:

- ``fastunlearn`` — the library's EraseDiff step at the **digits default** (``UnlearnConfig().resolved()``, as
  ``fastunlearn run`` resolves it: BOME rule, η 0.5, Adam lr 1e-4, batch 32 per side, grad-clip 1, EMA 0.95) on the
  engine's fast path for the CPU, exactly what ``fastunlearn run`` runs;
- ``reference`` — :class:`reference_erasediff.ReferenceEraseDiff`, the authors' outer step (K = 2 inner forget
  steps on the live optimizer, the adaptive cosine rule, lr 1e-4, grad-clip 1) with the same EMA 0.95, so
  both are judged on the weights a run would save;
- ``fastunlearn KEY=VALUE`` (``--variant``) — the library's step with those options over its defaults (e.g.
  ``eta=0.1``, the default before 2026-11-28), to show what a setting does per step.

At every checkpoint (cumulative outer steps) each is evaluated on its EMA weights as the default job
evaluates: ``--per-class`` seeded DDIM samples per class (``--eval-steps`` steps, the same noise for both)
judged by the shipped digits classifier; forget = accuracy on digit 0, retain = mean accuracy on 1–9.
``train_s`` is the cumulative time in the steps only (evaluation excluded), one torch thread; under ``--jobs``
the seeds run in parallel processes, each timing its implementations one after the other.

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
from bench_step import Sides, build, fast_path_of, library_step  # noqa: E402
from reference_erasediff import ReferenceEraseDiff  # noqa: E402

from fastunlearn.api import _judge  # noqa: E402
from fastunlearn.config import UnlearnConfig  # noqa: E402
from fastunlearn.methods import base as methods  # noqa: E402
from fastunlearn.models.ddpm import DDPMAdapter  # noqa: E402

#: the reference's λ rule parameter: the cosine rule at η 0.5 (the library's cosine default; the authors'
#: code gives no η for it, see METHODS.md)
REFERENCE_ETA = 0.5


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
            threads: int = 1) -> list[dict]:
    """Rows {seed, impl, steps, forget, retain, train_s} for every implementation at each checkpoint (one seed;
    run in its own process under ``--jobs``)."""
    torch.set_num_threads(threads)
    adapter, retained, images, labels = build("digits", torch.device("cpu"))
    evaluator = Evaluator(_judge(adapter), per_class, eval_steps)
    options, lr, batch = library_settings()
    sides = Sides(images, labels, batch, seed=seed)
    device = adapter.device
    impls = []
    for label, opts in [("fastunlearn", options)] + [(f"fastunlearn {v}", library_settings(parse_variant(v))[0])
                                                     for v in variants]:
        step, lib = library_step(adapter, retained, sides, fast_path_of("fastunlearn", device), options=opts, lr=lr)

        def judge(lib=lib):
            with ema_weights(lib):
                return evaluator(lib.adapter)

        impls.append((label, step, judge))
    ref_unet = copy.deepcopy(adapter.unet)
    ref = ReferenceEraseDiff().setup(ref_unet, adapter.scheduler, retained, lr=lr, eta=REFERENCE_ETA,
                                     ema_decay=methods.parse_options("erasediff", options).ema_decay)

    def judge_ref():
        unet = copy.deepcopy(ref.unet)
        with torch.no_grad():
            ema = ref.ema_state()
            for n, p in unet.named_parameters():
                p.copy_(ema[n])
        return evaluator(DDPMAdapter(unet, adapter.scheduler, null_label=adapter.null_label))

    impls.append(("reference", lambda i: ref.step(*sides.draw(i)), judge_ref))
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
            rows.append({"seed": seed, "impl": impl, "steps": stop, "forget": round(acc["forget"], 4),
                         "retain": round(acc["retain"], 4), "train_s": round(spent, 1)})
            print(f"  seed {seed} {impl:11s} {stop:4d} steps: forget {acc['forget']:.1%}  "
                  f"retain {acc['retain']:.1%}  ({spent:.1f} s)", flush=True)
    return rows


def means(rows: list[dict]) -> list[dict]:
    """One row per (impl, steps): the mean over seeds (seed = 'mean')."""
    out = []
    for impl in dict.fromkeys(r["impl"] for r in rows):
        for steps in dict.fromkeys(r["steps"] for r in rows):
            group = [r for r in rows if (r["impl"], r["steps"]) == (impl, steps)]
            out.append({"seed": "mean", "impl": impl, "steps": steps,
                        **{k: round(sum(r[k] for r in group) / len(group), 4 if k != "train_s" else 1)
                           for k in ("forget", "retain", "train_s")}})
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
          + f"; reference: cosine η {REFERENCE_ETA}, K=2 live inner steps, lr {lr}; "
          f"{args.per_class} generations/class, DDIM-{args.eval_steps}", flush=True)
    adapter = build("digits", device)[0]
    base = Evaluator(_judge(adapter), args.per_class, args.eval_steps)(adapter)
    rows = [{"seed": "-", "impl": "before", "steps": 0, "forget": round(base["forget"], 4),
             "retain": round(base["retain"], 4), "train_s": 0.0}]
    work = [(checkpoints, seed, args.per_class, args.eval_steps, args.variant, args.threads) for seed in range(args.seeds)]
    if args.jobs == 1:
        per_seed = [r for w in work for r in compare(*w)]
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            per_seed = [r for rs in pool.map(compare, *zip(*work)) for r in rs]
    rows += per_seed + means(per_seed)
    print_table(rows, ["seed", "impl", "steps", "forget", "retain", "train_s"])
    if not args.smoke and args.csv:
        path = Path(args.csv)
        append_csv(path, [{**env, "batch": batch, "per_class": args.per_class, "eval_steps": args.eval_steps, **r}
                          for r in rows])
        print(f"appended {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
