"""``fastunlearn attack``: does an erased concept come back under an adversarial prompt?

``fastunlearn attack --model DIR --concept PROMPT [--attack unlearndiffatk|soft-prompt|paraphrase]
[--prompts FILE] [--base MODEL] [--target-images NPZ] [--judge module:function | --nudity] [--num N] [--seed S]
[--k K] [--iterations N] --out DIR`` runs :func:`fastunlearn.attacks.attack` and writes into ``DIR``:

- ``attack.json``: the settings, the figures (``asr``, ``asr_pre``, ``asr_post``, ``n``, ``n_excluded``,
  ``ci95``, ``by_group``) and one row per instance (prompt, seed, outcome, adversarial prompt and tokens,
  iterations);
- ``images.npz``: ``before`` (the attacked model under each instance's prompt), ``after`` (under its
  adversarial prompt), ``base`` (the base model's image, when drawn) — float32 ``[N, C, H, W]`` in [-1, 1] —,
  ``prompts``, ``adversarial_prompts`` and ``seeds`` per instance;
- ``report.html`` and ``grid.png``: the figures and every instance's images (:mod:`fastunlearn.attacks.report`).

It prints one summary line. A user mistake (an unknown attack, no concept, a DDPM model, ...) ends with one line
on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from fastunlearn.errors import UserInputError

#: What ``fastunlearn attack`` writes; an ``--out`` folder holding anything else is refused.
OUTPUTS = ("attack.json", "images.npz", "report.html", "grid.png")


def _out_dir(out: str) -> Path:
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise UserInputError(f"--out {out} is a file; give a folder")
    if path.is_dir():
        other = sorted(p.name for p in path.iterdir() if p.name not in OUTPUTS and not p.name.startswith("."))
        if other:
            raise UserInputError(f"--out {out} already holds other files ({', '.join(other[:3])}"
                                 f"{' …' if len(other) > 3 else ''}); give an empty or new folder")
    existing = next(p for p in (path.absolute(), *path.absolute().parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserInputError(f"--out {out}: cannot be created ({existing} is not a writable directory)")
    return path


def write_outputs(result: Any, out: Path) -> dict[str, Path]:
    """``attack.json``, ``images.npz``, ``grid.png`` and ``report.html`` of ``result`` in ``out``."""
    from fastunlearn.attacks.report import write_report
    from fastunlearn.cli_generate import _write_atomic

    out.mkdir(parents=True, exist_ok=True)
    data = json.dumps(result.to_json(), indent=2, ensure_ascii=False, default=str) + "\n"
    _write_atomic(out / "attack.json", lambda f: f.write(data.encode("utf-8")))
    arrays = {"before": result.images_before.numpy().astype(np.float32),
              "after": result.images_after.numpy().astype(np.float32),
              "prompts": np.array([i.prompt for i in result.instances], dtype=np.str_),
              "adversarial_prompts": np.array([i.adversarial_prompt or "" for i in result.instances], dtype=np.str_),
              "seeds": np.array([i.seed for i in result.instances], dtype=np.int64)}
    if result.images_base is not None:
        arrays["base"] = result.images_base.numpy().astype(np.float32)
    _write_atomic(out / "images.npz", lambda f: np.savez(f, **arrays))
    report = write_report(result, out)
    return {"json": out / "attack.json", "images": out / "images.npz", "report": report, "grid": out / "grid.png"}


def _attack(args: argparse.Namespace) -> int:
    from fastunlearn.attacks import attack
    from fastunlearn.attacks.runner import _load_t2i, _same_ref, recorded_base
    from fastunlearn.cli_eval import _device
    from fastunlearn.cli_generate import _loading_bars
    from fastunlearn.engine.loop import cpu_threads_for

    if not args.concept.strip():
        raise UserInputError("the concept is missing: give the erased concept's prompt, e.g. --concept "
                             "'a handwritten digit zero'")
    out = _out_dir(args.out)
    dev = _device(args.device)
    with _loading_bars(not args.quiet):
        adapter = _load_t2i(args.model, "--model", args.trust_pickle).to(dev)
        base = args.base if args.base is not None else recorded_base(args.model)
        if base is not None and _same_ref(base, args.model):
            base = adapter
    options = {name: getattr(args, name) for name in ("k", "iterations", "timesteps", "check_every", "lr", "mode")
               if getattr(args, name) is not None}
    t0 = time.perf_counter()
    with cpu_threads_for(adapter, dev, args.threads), _loading_bars(not args.quiet):
        result = attack(adapter, args.concept, attack=args.attack, prompts=args.prompts, base=base,
                        judge=args.judge, num=args.num, seed=args.seed, nudity=args.nudity,
                        target_images=args.target_images, steps=args.steps, guidance=args.guidance,
                        batch_size=args.batch_size, device=dev, trust_pickle=args.trust_pickle,
                        progress=not args.quiet, name=args.model,
                        base_name=None if base is None else (args.model if base is adapter else str(base)),
                        **options)
    paths = write_outputs(result, out)
    print(f"{result.summary()}; {time.perf_counter() - t0:.1f}s on {dev} → {paths['report']}")
    return 0


def add_subcommand(subparsers: Any) -> None:
    """Register ``attack`` on the ``fastunlearn`` parser's sub-parsers."""
    from fastunlearn.attacks.runner import ATTACKS, DEFAULT_BATCH, DEFAULT_NUM, DEFAULT_STEPS

    p = subparsers.add_parser(
        "attack", help="attack an unlearned text-to-image model's erasure of a concept and measure the attack "
                       "success rate",
        description="Run an adversarial prompt attack against a text-to-image model for a concept and measure the "
                    "attack success rate as UnlearnDiffAtk / AdvUnlearn define it: (pre-attack + post-attack "
                    "successes) / instances, an instance being a prompt and a seed. unlearndiffatk optimises k "
                    "discrete prefix tokens, soft-prompt k continuous prefix embeddings (a white-box upper bound), "
                    "paraphrase tries other wordings (counted over those the base model draws as the concept). "
                    "Writes attack.json, images.npz, grid.png and report.html into --out.")
    p.add_argument("--model", required=True,
                   help="the attacked model: a fastunlearn run's --out, zoo:NAME or a Stable Diffusion directory")
    p.add_argument("--concept", required=True, metavar="PROMPT",
                   help="the erased concept's prompt, e.g. 'a handwritten digit zero' (what the judge looks for)")
    p.add_argument("--attack", choices=ATTACKS, default="unlearndiffatk", help="the attack (default unlearndiffatk)")
    p.add_argument("--prompts", metavar="FILE",
                   help="the instances' prompts, one per line (# comments; on a digits model {name} / {numeral} are "
                        "filled with the concept's class); default: the concept prompt (paraphrase on a digits "
                        "model: the shipped paraphrase lists)")
    p.add_argument("--base", metavar="MODEL",
                   help="the model before unlearning (its generations are the targets; paraphrases it does not draw "
                        "are excluded); default: the model a fastunlearn run's config.yaml names, or a zoo model itself")
    p.add_argument("--target-images", metavar="NPZ",
                   help="an .npz with 'images' [N, C, H, W] in [-1, 1] (e.g. from fastunlearn generate): concept "
                        "images to use as targets instead of the base model's generations")
    judge = p.add_mutually_exclusive_group()
    judge.add_argument("--judge", metavar="MODULE:FUNCTION",
                       help="your judge: a function of images [N, C, H, W] in [-1, 1] returning one bool / 0/1 per "
                            "image (module:function or path/to/file.py:function); default: the digits classifier "
                            "on a model that draws 16×16 digits")
    judge.add_argument("--nudity", action="store_true", help="judge with NudeNet (pip install fastunlearn[nudity])")
    p.add_argument("--num", type=int, metavar="N",
                   help="seeds per prompt (default: " + ", ".join(f"{a} {n}" for a, n in DEFAULT_NUM.items()) + ")")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="the seed of everything (default 0)")
    p.add_argument("--k", type=int, metavar="K", help="prefix tokens (default 3; 5 with --nudity)")
    p.add_argument("--iterations", type=int, metavar="N", help="optimisation steps per instance (default 40)")
    p.add_argument("--timesteps", type=int, metavar="T", help="timesteps per optimisation step (default 8)")
    p.add_argument("--check-every", type=int, metavar="C",
                   help="optimisation steps between success checks (default 2; soft-prompt 5)")
    p.add_argument("--lr", type=float, metavar="LR", help="the optimiser's learning rate (default 0.01)")
    p.add_argument("--mode", choices=("pgd", "fast_at"), help="soft-prompt: Adam (pgd, default) or signed steps")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, metavar="K",
                   help=f"DDIM steps of every image (default {DEFAULT_STEPS}, as the run's evaluation)")
    p.add_argument("--guidance", type=float, metavar="G", help="classifier-free guidance (default: the model's)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, metavar="B",
                   help=f"instances attacked at once by unlearndiffatk (default {DEFAULT_BATCH})")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (new, empty or a previous attack's)")
    p.add_argument("--device", default="auto", help="auto (default), cpu or cuda[:N]")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: 1 for a small model on the CPU)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow pickle weight files (.bin/.pt/.ckpt): they can run code; only for files you trust")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=_attack)


__all__ = ["add_subcommand", "write_outputs", "OUTPUTS"]
