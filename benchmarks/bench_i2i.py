"""Image-to-image unlearning (``i2i``, Li et al. ICLR 2024): fastunlearn's step vs the authors' step structure, same
model, same batch, same machine, same run.

    python benchmarks/bench_i2i.py                  # CPU: zoo:digits-inpaint and zoo:digits-mae
    python benchmarks/bench_i2i.py --device cuda    # the same on a GPU
    python benchmarks/bench_i2i.py --smoke          # seconds: tiny random models, every code path, writes nothing

Every row is one implementation on one model, each on its own copy of the same initial model:

- ``fastunlearn-fp32`` — the library's ``i2i`` through the registry (``fastunlearn.methods.get("i2i")`` over the
  model's adapter, real :class:`~fastunlearn.methods.base.Batch` objects drawn as the engine's loop draws them, the
  options, lr, batch size and scope ``fastunlearn run`` resolves for an image-to-image model — 32 forget + 32
  retain rows, lr 1e-4, scope ``encoder``, α and the noise of the architecture), fp32 without torch.compile: the
  reference's precision, so its ratio is the structure's alone; ``fastunlearn`` — the same on the device's default
  fast path (``fastunlearn run``'s: bf16 autocast where the device has it), when that is not fp32. One step: the
  encoder over [forget; retain], the frozen encoder-only teacher over [noise images; retain], one fused
  ``dual_noise_loss``, the backward into the encoder, Adam over the encoder's parameters.
- ``reference`` — :class:`reference_i2i.ReferenceI2I`, the authors' step structure over the same adapter, fp32:
  the whole model deep-copied as the teacher, the optimizer over every parameter (the decoder's included), and the
  encodes of their fork for the architecture (``structure``): ``mage`` on the masked autoencoder (the student once,
  the teacher on the whole batch AND on a noise image of every row: three passes of the batch), ``palette`` on the
  inpainter (the student once, the teacher once: two, as the library). Its loss is the library's on the same draws
  (Palette's: ½ of it, which Adam does not see); ``tests/benchmarks/test_reference_i2i.py`` checks both.

Steps are interleaved (one of each implementation per round, every one on the round's batch: the forget and retain
rows drawn from the digits train split — classes 0–4 forgotten, 5–9 retained — with the round's seeded generator,
as the loop's ``_batch``) so that load from other processes hits all alike. ``step_ms`` is the median over the
timed rounds (``p20_ms``/``p80_ms`` the 20th/80th percentiles); ``speedup`` = the reference's median ÷ the row's.
Counted, not assumed: ``encodes_per_step`` / ``encoder_rows_per_step`` — calls and rows of every encoder each side
runs (forward pre-hooks on the student's and the teacher's encoder entry: the UNet's ``conv_in``, which every encode
runs once and the decoder never, or the ViT); ``teacher_params_M`` — the parameters the frozen copy holds;
``optimizer_params_M`` — the parameters in the optimizer; ``params_M`` — every parameter of the model (the
masked autoencoder's fixed position tables included), ``encoder_params_M`` — its encoder's trainable ones.

Models (``model``): ``digits-inpaint`` and ``digits-mae``, the embedded ``zoo:`` models when they load
(``weights`` ``trained``), else untrained models of the configuration ``fastunlearn.zoo.i2i`` trains
(``weights`` ``untrained``: the step's cost does not depend on the weights' values). ``--smoke``: the tiny random
models of ``fastunlearn.models.i2i`` (``tiny-inpaint``, ``tiny-mae``), 4 rows per side, 2 rounds.

Rows are appended to ``benchmarks/results/i2i.csv`` (date, device, torch, commit as the other CSVs) as soon as a
model's are measured; the README table is made from it by ``benchmarks/readme_tables.py`` (markers
``<!-- i2i-table:start -->`` / ``<!-- i2i-table:end -->``).
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, append_csv, environment, library_fast_paths, print_table  # noqa: E402
from reference_advunlearn import CallCounter  # noqa: E402
from reference_i2i import ReferenceI2I, encoder_module  # noqa: E402

from fastunlearn.config import UnlearnConfig  # noqa: E402
from fastunlearn.engine import prepare_model  # noqa: E402
from fastunlearn.engine.loop import _autocast  # noqa: E402
from fastunlearn.methods import base as methods  # noqa: E402

#: The CSV's columns, in order.
COLUMNS = ("date", "device", "torch", "commit", "model", "arch", "weights", "params_M", "encoder_params_M", "impl",
           "structure", "precision", "batch", "timed_iters", "step_ms", "p20_ms", "p80_ms", "speedup",
           "encodes_per_step", "encoder_rows_per_step", "teacher_params_M", "optimizer_params_M", "note")
FORGET, RETAIN = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9)
MODELS = ("digits-inpaint", "digits-mae")
SMOKE_MODELS = ("tiny-inpaint", "tiny-mae")


# ---------------------------------------------------------------------- models and data
@dataclass
class Case:
    name: str
    adapter: Any  #: the initial model (never trained: every implementation takes a copy)
    weights: str  #: "trained" (the zoo's), "untrained" (its configuration, fresh) or "random" (tiny)
    forget: torch.Tensor  #: forget images [N, 1, 16, 16]
    retain: torch.Tensor


def build(model: str) -> Case:
    from fastunlearn.data.digits import load_digits_split

    if model in SMOKE_MODELS:
        from fastunlearn.models.i2i import build_tiny_inpaint, build_tiny_mae

        adapter, weights = (build_tiny_inpaint if model == "tiny-inpaint" else build_tiny_mae)(seed=0), "random"
    elif model in MODELS:
        adapter, weights = _zoo_or_untrained(model)
    else:
        raise SystemExit(f"unknown model {model!r}; expected {', '.join(MODELS + SMOKE_MODELS)}")
    data = load_digits_split("train")
    keep_f = torch.isin(data.labels, torch.tensor(FORGET))
    keep_r = torch.isin(data.labels, torch.tensor(RETAIN))
    return Case(model, adapter, weights, data.images[keep_f], data.images[keep_r])


def _zoo_or_untrained(model: str) -> tuple[Any, str]:
    """The zoo's ``model`` when it loads, else a fresh model of the configuration ``fastunlearn.zoo.i2i`` trains."""
    from fastunlearn.errors import UserInputError
    from fastunlearn.models import load_model

    try:
        return load_model(f"zoo:{model}"), "trained"
    except (UserInputError, OSError, KeyError, ValueError) as exc:
        print(f"  zoo:{model} does not load ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}): "
              "an untrained model of its configuration", flush=True)
    from fastunlearn.zoo import i2i as zoo_i2i

    if model == "digits-inpaint":
        return zoo_i2i.build_inpaint(zoo_i2i.InpaintTrainConfig()), "untrained"
    return zoo_i2i.build_mae(zoo_i2i.MAETrainConfig()), "untrained"


def run_config(batch: int | None = None) -> UnlearnConfig:
    """``i2i``'s settings as ``fastunlearn run`` resolves them for an image-to-image model."""
    return UnlearnConfig(method="i2i", batch_size=batch).resolved(family="i2i")


def draw_batches(case: Case, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The round's forget and retain rows, drawn as the engine's loop draws them (forget indices, then retain)."""
    f = torch.randint(0, len(case.forget), (n,), generator=generator)
    r = torch.randint(0, len(case.retain), (n,), generator=generator)
    return case.forget[f], case.retain[r]


def millions(params) -> float:
    return round(sum(p.numel() for p in params) / 1e6, 4)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def frozen_encoder_entry(frozen: Any) -> torch.nn.Module:
    """The library's frozen encoder copy's entry module (its ``conv_in`` on the inpainter, the ViT copy itself)."""
    return getattr(frozen.module, "conv_in", frozen.module)


# ---------------------------------------------------------------------- the two sides
class Library:
    """The library's ``i2i`` on a private copy of the model under one fast path."""

    def __init__(self, case: Case, cfg: UnlearnConfig, fast: Any, device: torch.device):
        self.adapter = case.adapter.scratch_copy()
        self.device, self.fast, self.cfg = device, fast, cfg
        prepare_model(self.adapter, device, fast)
        self.method = methods.get("i2i")()
        self.method.setup(self.adapter, methods.MethodConfig(
            lr=float(cfg.lr), options=methods.parse_options("i2i", cfg.options), forget_classes=FORGET,
            retain_classes=RETAIN, scope=cfg.scope, fused_optimizer=fast.fused_optimizer))
        self.counter = CallCounter({"student": encoder_module(self.adapter),
                                    "teacher": frozen_encoder_entry(self.method.teacher)})
        self.structure = "library"
        self.teacher_params = millions(self.method.teacher.module.parameters())
        self.optimizer_params = millions(p for g in self.method.optimizer.param_groups for p in g["params"])

    def step(self, case: Case, seed: int) -> float:
        g = torch.Generator().manual_seed(seed)
        x_f, x_r = draw_batches(case, self.cfg.batch_size, g)
        fb = methods.Batch(x_f, torch.zeros(len(x_f), dtype=torch.long), g)
        rb = methods.Batch(x_r, torch.ones(len(x_r), dtype=torch.long), g)
        _sync(self.device)
        t0 = time.perf_counter()
        with _autocast(self.device, self.fast.precision):
            self.method.step(fb, rb)
        _sync(self.device)
        return (time.perf_counter() - t0) * 1e3


class Reference:
    """The authors' step structure (:class:`reference_i2i.ReferenceI2I`) on a private copy of the model, fp32."""

    def __init__(self, case: Case, cfg: UnlearnConfig, alpha: float, noise: str, device: torch.device):
        adapter = case.adapter.scratch_copy()
        if any(p.dtype != torch.float32 for p in adapter.network.parameters()):
            adapter.network.to(dtype=torch.float32)
        adapter.to(device)
        self.ref = ReferenceI2I().setup(adapter, lr=float(cfg.lr), alpha=alpha, noise=noise)
        self.device, self.cfg = device, cfg
        self.counter = CallCounter({"student": encoder_module(self.ref.student),
                                    "teacher": encoder_module(self.ref.teacher)})
        self.structure = self.ref.structure
        self.teacher_params = millions(self.ref.teacher.network.parameters())
        self.optimizer_params = millions(p for g in self.ref.optimizer.param_groups for p in g["params"])

    def step(self, case: Case, seed: int) -> float:
        g = torch.Generator().manual_seed(seed)
        x_f, x_r = draw_batches(case, self.cfg.batch_size, g)
        _sync(self.device)
        t0 = time.perf_counter()
        self.ref.step(x_f, x_r, g)  # ends with their loss.item(): synchronised
        _sync(self.device)
        return (time.perf_counter() - t0) * 1e3


def bench_model(case: Case, cfg: UnlearnConfig, device: torch.device, iters: int, warmup: int) -> list[dict]:
    """Interleaved rounds of every implementation on ``case``; one row each (module docstring)."""
    impls: dict[str, Any] = {name: Library(case, cfg, fast, device) for name, fast in library_fast_paths(device, case.adapter).items()}
    opts = impls["fastunlearn-fp32"].method.opts  # α and the noise as the library resolved them for the model
    impls["reference"] = Reference(case, cfg, opts.alpha, opts.noise, device)
    precision = {name: lib.fast.precision for name, lib in impls.items() if name != "reference"} | {"reference": "fp32"}
    times: dict[str, list[float]] = {name: [] for name in impls}
    for r in range(warmup + iters):
        for name, impl in impls.items():
            if r == warmup:
                impl.counter.reset()
            ms = impl.step(case, 1000 + r)
            if r >= warmup:
                times[name].append(ms)
        print(f"  {case.name} round {r + 1}/{warmup + iters}: " + ", ".join(
            f"{n} {t[-1]:.1f} ms" for n, t in times.items() if t), flush=True)
    ref_ms = statistics.median(times["reference"])
    rows = []
    for name, impl in impls.items():
        ts = sorted(times[name])
        q = statistics.quantiles(ts, n=5, method="inclusive") if len(ts) >= 2 else [ts[0]] * 4
        med = statistics.median(ts)
        calls, rows_in = sum(impl.counter.calls.values()), sum(impl.counter.rows.values())
        rows.append({
            "impl": name, "structure": impl.structure, "precision": precision[name], "batch": cfg.batch_size,
            "timed_iters": iters, "step_ms": round(med, 2), "p20_ms": round(q[0], 2), "p80_ms": round(q[3], 2),
            "speedup": round(ref_ms / med, 2), "encodes_per_step": round(calls / iters, 2),
            "encoder_rows_per_step": round(rows_in / iters, 1), "teacher_params_M": impl.teacher_params,
            "optimizer_params_M": impl.optimizer_params,
            "note": (f"authors' {impl.structure} step: whole-model teacher, every parameter in the optimizer, fp32"
                     if name == "reference" else
                     f"median step; alpha {opts.alpha:g}, noise {opts.noise}, scope {cfg.scope}, lr {cfg.lr:g}")})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {', '.join(MODELS + SMOKE_MODELS)}")
    ap.add_argument("--iters", type=int, default=None, help="timed rounds (default 20; --smoke 2)")
    ap.add_argument("--warmup", type=int, default=None, help="discarded rounds (default 3; --smoke 0)")
    ap.add_argument("--batch", type=int, default=None, help="rows per side (default: the run's, 32; --smoke 4)")
    ap.add_argument("--threads", type=int, default=None, help="CPU: torch threads (default 1, as bench_step.py)")
    ap.add_argument("--csv", default=str(RESULTS / "i2i.csv"), help="CSV to append rows to ('' to skip)")
    ap.add_argument("--smoke", action="store_true", help="tiny models, 2 rounds, every code path, nothing written")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    models = list(SMOKE_MODELS) if args.smoke else [m.strip() for m in args.models.split(",") if m.strip()]
    iters = args.iters or (2 if args.smoke else 20)
    warmup = args.warmup if args.warmup is not None else (0 if args.smoke else 3)
    cfg = run_config(args.batch or (4 if args.smoke else None))
    env = environment(device)
    print(f"{env['device']} | torch {env['torch']} | commit {env['commit']} | i2i batch {cfg.batch_size} per side",
          flush=True)
    rows = []
    for model in models:
        case = build(model)
        a = case.adapter
        shared = {**env, "model": model, "arch": a.arch, "weights": case.weights,
                  "params_M": millions(a.network.parameters()), "encoder_params_M": millions(a.parameters("encoder"))}
        model_rows = [{k: {**shared, **r}[k] for k in COLUMNS}
                      for r in bench_model(case, cfg, device, iters, warmup)]
        if not args.smoke and args.csv:  # each model's rows as soon as they are measured
            append_csv(Path(args.csv), model_rows)
            print(f"appended {len(model_rows)} {model} rows to {args.csv}", flush=True)
        rows += model_rows
        del case
        gc.collect()
    print_table(rows, ["model", "weights", "params_M", "impl", "structure", "precision", "batch", "step_ms", "p20_ms",
                       "p80_ms", "speedup", "encodes_per_step", "encoder_rows_per_step", "teacher_params_M",
                       "optimizer_params_M"])
    print("speedup = the reference's median step ÷ this row's; encodes and rows counted by hooks on every encoder")
    return 0


if __name__ == "__main__":
    sys.exit(main())
