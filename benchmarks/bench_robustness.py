"""Robustness side by side: every eraser on ``zoo:digits-t2i``, then every attack against each.

    python benchmarks/bench_robustness.py                                   # all methods, seeds 0 and 1
    python benchmarks/bench_robustness.py --methods esd,advunlearn --seeds 0,1,2
    python benchmarks/bench_robustness.py --smoke                           # minutes: tiny settings, writes nothing

For each method (``esd``, ``erasediff``, ``salun``, ``advunlearn`` — each at its defaults, ``fastunlearn run``'s)
and each seed, the benchmark erases the concept prompt (default "a handwritten digit zero") from the embedded
default with the run's own evaluation (100 generations per prompt, DDIM-10, guidance 3, both digits judges), then
attacks the output with :func:`fastunlearn.attacks.attack` — the library's ``unlearndiffatk`` (discrete prefix
tokens against the output's denoising loss on the base model's own generations of the concept), ``paraphrase``
(the shipped digits list, used while choosing defaults, and the held-out list, never used for that: two rows),
and ``soft-prompt`` (the continuous attack, an upper bound on a white-box attacker) — each at its defaults, from
the attack seed = the run's seed. The base model is attacked too (its ASR is the ceiling: it draws the concept).
``advunlearn+plug`` is AdvUnlearn's saved ``text_encoder/`` alone dropped into the BASE pipeline (a fresh load of
``zoo:digits-t2i`` with only its encoder replaced by the output's, stock ``transformers``), judged by the same
quick check and attacked like the others: the plug-and-play claim, measured.

Columns (``benchmarks/results/robustness.csv``, one row per model and seed): the run's figures — ``train_s``,
``forget_acc`` (the concept prompt's generations judged as the digit, CNN), ``retain_acc`` (the nine other digits'
prompts, CNN), ``fid`` (FID of the retained classes' generations vs the held-out real digits, in the CNN's
feature space), ``paraphrase_share`` (the run's six reported wordings) — and per attack ``asr_*`` (attack success
rate as the authors define it: pre-attack + post-attack successes over all instances; for paraphrases, over the
instances the base model draws as the concept), with ``*_pre`` / ``*_n``. The README table (markers
``<!-- robustness-table:start -->`` / ``<!-- robustness-table:end -->``) is the mean ± spread over seeds per
method, from ``benchmarks/readme_tables.py``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, append_csv, environment, print_table  # noqa: E402

MODEL = "zoo:digits-t2i"
CONCEPT = "a handwritten digit zero"
METHODS = ("esd", "erasediff", "salun", "advunlearn")
#: (column prefix, attack, prompts list) — paraphrase lists are the shipped ones (fastunlearn/attacks/paraphrases)
ATTACKS = (("unlearndiffatk", "unlearndiffatk", None), ("paraphrase", "paraphrase", "digits"),
           ("paraphrase_heldout", "paraphrase", "digits-heldout"), ("soft_prompt", "soft-prompt", None))


def shipped_list(name: str) -> Path:
    from fastunlearn.attacks import runner

    return runner.PARAPHRASE_DIR / f"{name}.txt"


def run_attacks(model: Any, seed: int, attacks: list[str], smoke: bool, name: str) -> dict[str, Any]:
    """ASR columns of ``model`` under every attack (the base model: ``zoo:digits-t2i`` itself)."""
    from fastunlearn.attacks import attack

    out: dict[str, Any] = {}
    small = {"num": 2, "iterations": 4, "check_every": 2} if smoke else {}
    for col, kind, listed in ATTACKS:
        if col not in attacks:
            continue
        kwargs: dict[str, Any] = dict(small)
        if listed is not None:
            kwargs["prompts"] = shipped_list(listed)
            kwargs.pop("iterations", None), kwargs.pop("check_every", None)
        t0 = time.perf_counter()
        res = attack(model, CONCEPT, attack=kind, base=MODEL, seed=seed, name=name, base_name=MODEL, **kwargs)
        out[f"asr_{col}"] = round(res.asr, 4) if res.asr is not None else ""
        out[f"{col}_pre"] = round(res.asr_pre, 4) if res.asr_pre is not None else ""
        out[f"{col}_n"] = res.n
        out[f"{col}_s"] = round(time.perf_counter() - t0, 1)
        print(f"    {res.summary()} [{out[f'{col}_s']:.0f} s]", flush=True)
    return out


def run_figures(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The run's own evaluation, after unlearning (CNN judge)."""
    if not metrics:
        return {"forget_acc": "", "retain_acc": "", "fid": "", "paraphrase_share": ""}
    fid = (metrics.get("fid") or {}).get("overall", {}).get("fid", "")
    return {"forget_acc": round(metrics["forget_accuracy"], 4), "retain_acc": round(metrics["retain_accuracy"], 4),
            "fid": round(fid, 2) if fid != "" else "",
            "paraphrase_share": round(metrics["paraphrase_forget_share"], 4)
            if metrics.get("paraphrase_forget_share") is not None else ""}


def plug_into_base(out_dir: Path) -> Any:
    """An adapter over the BASE pipeline's components (a fresh load of ``zoo:digits-t2i``) with the run's saved
    ``text_encoder/`` in place of the base encoder, loaded by ``transformers`` alone (the plug-and-play use)."""
    from transformers import AutoModel

    from fastunlearn.models import load_model
    from fastunlearn.models.t2i import T2IAdapter

    base = load_model(MODEL)
    encoder = AutoModel.from_pretrained(out_dir / "text_encoder").eval()
    return T2IAdapter(base.unet, encoder, base.tokenizer, base.scheduler, vae=base.vae, concepts=base.concepts)


@torch.no_grad()
def quick_check(adapter: Any, n: int, smoke: bool) -> dict[str, Any]:
    """forget / retain accuracy of a model without a run (the base, the plugged encoder): ``n`` generations per
    prompt from the evaluation's seeds, judged by the CNN."""
    from fastunlearn.data.prompts import class_prompt
    from fastunlearn.eval.t2i import evaluate_t2i, t2i_judges

    concepts = adapter.concepts
    retain = [class_prompt(concepts, c) for c in range(1, 10)]
    if smoke:
        retain = retain[:2]
    from types import SimpleNamespace

    cfg = SimpleNamespace(eval_per_class=n, eval_steps=10, eval_seed=1234, guidance=None)
    metrics = evaluate_t2i(adapter, cfg, [CONCEPT], retain, judge=t2i_judges(adapter),
                           concept_classes={CONCEPT: 0, **{p: c + 1 for c, p in enumerate(retain)}})
    return run_figures(metrics)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all four)")
    ap.add_argument("--seeds", default="0,1", help="seeds of the runs and the attacks (default 0,1)")
    ap.add_argument("--attacks", default=",".join(a[0] for a in ATTACKS), help="columns to measure")
    ap.add_argument("--no-base", action="store_true", help="skip the base model's rows")
    ap.add_argument("--work", default=None, help="where the runs' outputs go (default: a temporary directory)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--csv", default=str(RESULTS / "robustness.csv"), help="CSV to append rows to ('' to skip)")
    ap.add_argument("--smoke", action="store_true", help="tiny settings through every path; writes nothing")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import fastunlearn

    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    attacks = [a for a in args.attacks.split(",") if a]
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-robustness-"))
    env = environment(torch.device("cpu"))
    print(f"{env['device']} | torch {env['torch']} | commit {env['commit']} | methods {methods} | seeds {seeds}",
          flush=True)
    rows = []

    def add(name: str, seed: int, train_s: Any, figures: dict, asr: dict) -> None:
        rows.append({**env, "model": MODEL, "concept": CONCEPT, "method": name, "seed": seed, "train_s": train_s,
                     **figures, **{k: asr.get(k, "") for k in asr_columns}})
        if not args.smoke and args.csv:  # each row as soon as it is measured: a crash later loses nothing
            append_csv(Path(args.csv), rows[-1:])

    asr_columns = [c for col, _, _ in ATTACKS for c in (f"asr_{col}", f"{col}_pre", f"{col}_n", f"{col}_s")]
    if not args.no_base:
        from fastunlearn.models import load_model

        for seed in seeds:
            print(f"base, seed {seed}", flush=True)
            figures = quick_check(load_model(MODEL), 8 if args.smoke else 100, args.smoke)
            add("base", seed, "", figures, run_attacks(MODEL, seed, attacks, args.smoke, "base"))
    for method in methods:
        for seed in seeds:
            out = work / f"{method}-{seed}"
            print(f"{method}, seed {seed} → {out}", flush=True)
            extra = {"steps": 2, "eval_per_class": 4, "images_per_prompt": 4} if args.smoke else {}
            if args.smoke and method == "advunlearn":
                extra.update(warmup=1, attack_steps=2, trajectories=1, ddim_steps=5)
            if args.smoke and method == "esd":
                extra.update(trajectories=1, ddim_steps=5)
            result = fastunlearn.run(model=MODEL, forget=f"prompt:{CONCEPT}", method=method, out_dir=out, seed=seed,
                                     progress=False, threads=args.threads, **extra)
            train_s = round(result.train["train_wall_s"], 1)
            figures = run_figures(result.metrics_after)
            print(f"  trained {train_s} s; {figures}", flush=True)
            add(method, seed, train_s, figures, run_attacks(out, seed, attacks, args.smoke, method))
            if method == "advunlearn":
                plugged = plug_into_base(out)
                figures = quick_check(plugged, 8 if args.smoke else 100, args.smoke)
                print(f"  plugged into the base pipeline: {figures}", flush=True)
                add("advunlearn+plug", seed, "", figures, run_attacks(plugged, seed, attacks, args.smoke,
                                                                      "advunlearn+plug"))
    print_table(rows, ["method", "seed", "train_s", "forget_acc", "retain_acc", "fid", "paraphrase_share",
                       *[f"asr_{c}" for c, _, _ in ATTACKS]])
    if args.smoke:  # machine-readable rows for the smoke test
        for r in rows:
            print("row " + json.dumps({k: r[k] for k in ("method", "seed", "forget_acc", "retain_acc",
                                                         "asr_unlearndiffatk", "asr_paraphrase")}))
    if not args.smoke and args.csv:
        print(f"appended {len(rows)} rows to {args.csv}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def summary(rows: list[dict]) -> dict[str, dict[str, Any]]:
    """Per method: mean and (max − min)/2 of every numeric column over its seeds (the README table's cells)."""
    out: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        cell = {"seeds": len(mine)}
        for key in mine[0]:
            vals = []
            for r in mine:
                try:
                    vals.append(float(r[key]))
                except (TypeError, ValueError):
                    pass
            if len(vals) == len(mine) and vals:
                cell[key] = (statistics.fmean(vals), (max(vals) - min(vals)) / 2)
        out[method] = cell
    return out


if __name__ == "__main__":
    sys.exit(main())
