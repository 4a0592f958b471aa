"""ESD and AdvUnlearn on text-to-image models: fastunlearn's iteration vs the authors' loop, same model, same
machine, same run.

    python benchmarks/bench_t2i.py                         # CPU: zoo:digits-t2i and sd, both methods
    python benchmarks/bench_t2i.py --method advunlearn     # AdvUnlearn's rows only
    python benchmarks/bench_t2i.py --models tiny           # the tiny random SD pipeline (development)
    python benchmarks/bench_t2i.py --smoke                 # seconds: tiny, every code path, writes nothing

Every row is one implementation of one method at one setting (``method``, ``setting``) on one model, each
implementation on its own copy of the same initial model:

- ``fastunlearn-fp32`` — the library's method through the registry (``fastunlearn.methods.get(...)`` over a
  :class:`~fastunlearn.models.t2i.T2IAdapter`, real :class:`~fastunlearn.methods.base.Batch` objects, the
  options, lr, batch size and scope ``fastunlearn run`` resolves), fp32 without torch.compile: the same precision
  as the reference, so its ratio is the algorithm's alone; ``fastunlearn`` — the same on the device's default
  fast path (``fastunlearn run``'s), when that is not fp32. Its per-iteration time is **amortised**: the median
  step time + the bank build (timed once, in the method's ``setup``) ÷ the run's iterations (``amortised_over``).
- ``reference`` — the authors' loop re-implemented in this folder, fp32.

Steps are interleaved (one of each implementation per round) so that load from other processes hits all alike.
``speedup`` = the reference's per-iteration time ÷ this row's (same method, setting and model).
``unet_calls_per_iter``: UNet forward calls per iteration, COUNTED by forward pre-hooks on every UNet each side
runs (:class:`reference_advunlearn.CallCounter`); the library's include its bank's calls (counted during
``setup``) ÷ ``amortised_over``; ``unet_calls_ratio`` = the reference's ÷ this row's.

**ESD** (``setting`` ``run``: ESD's ``fastunlearn run`` defaults). The reference is
:class:`reference_esd.ReferenceESD`, the authors' CompVis loop (x_t sampled from the trained model every
iteration, fp32, four text encodes, batch 1). Its cost depends on the drawn prefix length k (S − t_enc DDIM calls
of 2 rows): its per-iteration time is the mean over the timed iterations corrected to the authors' expected prefix
E[k] (25.48 at S = 50) with the least-squares cost per prefix call — the raw mean and the mean k drawn are in
``note``.

**Time to erase** (ESD on ``zoo:digits-t2i`` only: the shipped digits classifier judges the generations): from
the same initial model, the library (its defaults, the device's default fast path) and the reference (the same
lr, η and scope, batch 1) train until the share of the forget prompt's generations that the classifier reads as
the forget digit is ≤ ``--erase-share`` (5%: the issue's bar), checked every ``--eval-every`` iterations on the
same ``--eval-n`` seeded generations (DDIM ``--eval-steps``, guidance 3). ``time_to_erase_s`` counts training time
only (for the library: its bank build included), not the checks; blank when ``--erase-max-iters`` was reached.

**AdvUnlearn.** The library's ``advunlearn`` (its banks built in ``setup``, the in-loop soft-prompt attack on bank
rows, one fused training pass) vs :class:`reference_advunlearn.ReferenceAdvUnlearn` (the authors' iteration:
the frozen model's prefix DDIM before every attack step and before the training step, ε₀ recomputed, UNet weight
gradients computed in every backward, fp32). Only iterations that attack are timed, on both sides: the timed
library copy runs with ``warmup=0`` and the reference with ``warmup_iter=0`` (a warm-up iteration of either is
plain ESD through the encoder). Settings (rows ``setting``):

- ``authors`` — the authors' defaults (:meth:`AdvUnlearn.defaults` for a model without measured ones: k = 1,
  30 PGD attack steps every iteration, retain batch 5, batch 1, lr 1e-5; the bank amortised over their 1,000
  iterations);
- ``digits-defaults`` (``zoo:digits-t2i`` and ``tiny`` only) — the measured defaults ``fastunlearn run`` uses
  on digits-t2i (10 attack steps, lr 1e-4; the bank amortised over its 200 iterations).

The reference runs with the same options (its attack steps, lr, γ, retain batch, k, attack lr, guidance, η, S);
its CFG is ``--ref-cfg`` — ``batched`` (default: [uncond; cond] in one UNet call per DDIM step, as the authors'
sampler) or ``split`` (two calls, the issue's description: the same rows, more calls); the row's ``note`` says
which. Its cost depends on the prefix lengths drawn (31 per iteration at 30 attack steps): its per-iteration time
is the mean over the timed iterations scaled to the expected UNet calls of an attacking iteration
(:func:`reference_advunlearn.expected_unet_calls`, 910.4 batched at the authors' defaults) at the measured time
per counted call (mean time ÷ mean counted calls: nearly all of its iteration is UNet calls, and a least-squares
slope over a few iterations is mostly noise); ``unet_calls_per_iter`` is the COUNTED mean, and ``note`` gives the
raw mean time and the formula's expectation. The retain prompts are those ``fastunlearn run`` picks: the other
digits on digits-t2i, the shipped everyday-object prompts on a model without concepts.

Not measured here: AdvUnlearn's "time to robust erase at equal ASR" (training the reference with the library's
digits defaults, then attacking both with ``fastunlearn.attacks``' unlearndiffatk): the attacks package was being
written at the same time; the robustness of the library's own runs is ``bench_robustness.py``'s.

**The SD row** (``sd``): a ``UNet2DConditionModel`` with Stable Diffusion 1.x's configuration (860M parameters,
4×64×64 latents) and a CLIP ViT-L-sized text encoder, RANDOM weights (``weights`` column), no VAE (training runs
on latents). On CUDA it runs real iterations like the others. On a CPU one 2-row UNet call takes tens of seconds,
so its rows are **composed** from timed components (``note`` says so):

- ESD: reference = 4 text encodes + E[k] guided 2-row calls + 2 frozen 1-row calls + one 1-row
  forward+backward+Adam; library = one ESD step (timed) + the bank (``ddim_steps`` × one guided call over the
  bank's 2·J rows, timed once) ÷ ``amortised_over``. UNet calls by the same counting formula.
- AdvUnlearn (``authors`` only), every component timed on 1 row (2 for a guided call) and composed by rows — a
  CPU's UNet time is linear in its rows, and a 6-row backward at SD size does not fit this machine's memory:
  reference = 2·te₀ + N·(te₀ + E[p]·g + 2·f + a) + (2B + 1)·te₀ + E[p]·(1 + B)·g + (2 + B)·f + (1 + B)·r + adam
  (te₀ a frozen text encode of one prompt, g one prefix DDIM step of one prompt — one [uncond; cond] call, or two
  1-row calls split —, f a frozen 1-row UNet call, a one attack step of theirs — the trained encoder's forward, a
  1-row UNet forward, the backward into the prefix AND every UNet weight, Adam —, r one training row — the
  trained encoder's forward, a UNet forward, the backward into the encoder's and the UNet's weights —, adam
  their optimizer step); library = N·a′ + (1 + B)·r′ + the banks' S·(2·J + 2·R·J_r) rows at g's time per row
  ÷ ``amortised_over`` (a′ one attack step of the library's, timed inside a real ``advunlearn`` step; r′ that
  step's rest, a 1-row training pass with its Adam update — counted 1 + B times, which overstates the library's
  cost; R the retain prompts). UNet calls per iteration: the reference's formula
  (:func:`reference_advunlearn.expected_unet_calls`), the library's N + 1 + its banks' S·(⌈J·P/(b/2)⌉ +
  ⌈R·J_r/(b/2)⌉) calls ÷ ``amortised_over`` (b = ``bank_batch`` rows per call). The two sides' components are
  timed one after the other, not interleaved (memory: the reference holds two UNets and their gradients; the
  initial model's UNet is released once the reference has its copies, as the last use of it).

Rows are appended to ``benchmarks/results/t2i.csv`` (date, device, torch, commit as the other CSVs); the README
table is made from it by ``benchmarks/readme_tables.py`` (markers ``<!-- t2i-table:start -->`` /
``<!-- t2i-table:end -->``).
"""
from __future__ import annotations

import argparse
import copy
import gc
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, append_csv, environment, library_fast_paths, print_table  # noqa: E402
from reference_advunlearn import CallCounter, ReferenceAdvUnlearn, expected_unet_calls  # noqa: E402
from reference_esd import ReferenceESD  # noqa: E402

from fastunlearn.config import UnlearnConfig  # noqa: E402
from fastunlearn.engine import prepare_model, resolve_fast_path  # noqa: E402
from fastunlearn.engine.loop import _autocast  # noqa: E402
from fastunlearn.methods import base as methods  # noqa: E402

METHODS = ("esd", "advunlearn")
#: The CSV's columns, in order (every row has all of them; blank where a column does not apply).
COLUMNS = ("date", "device", "torch", "commit", "method", "setting", "model", "weights", "params_M", "impl",
           "precision", "batch", "trajectories", "ddim_steps", "attack_steps", "timed_iters", "per_iter_ms", "step_ms",
           "bank_s", "amortised_over", "speedup", "unet_calls_per_iter", "unet_calls_ratio", "time_to_erase_s",
           "erase_iters", "erase_share", "note")

#: Stable Diffusion 1.x's UNet (CompVis/stable-diffusion-v1-4 unet/config.json).
SD_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
#: SD 1.x's text encoder size (CLIP ViT-L/14's text tower): 12 layers, 768 wide, 77 tokens.
SD_TEXT_CONFIG = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                      max_position_embeddings=77)


def expected_prefix(ddim_steps: int) -> float:
    """E[k]: the reference's mean prefix length over t_enc ~ U{0..S−1} (S − 1 calls at t_enc 0, S − t_enc else)."""
    return sum(ReferenceESD.prefix_calls(t, ddim_steps) for t in range(ddim_steps)) / ddim_steps


# ---------------------------------------------------------------------- models
@dataclass
class Case:
    name: str
    adapter: Any  #: the initial model (never trained: every implementation takes a copy)
    prompt: str
    forget_class: int | None  #: the class the judge should stop seeing (digits); None: no time to erase
    judge: Callable[[torch.Tensor], torch.Tensor] | None
    weights: str  #: "trained" or "random"


def build(model: str, device: torch.device, smoke: bool = False) -> Case:
    from fastunlearn.models import load_model

    if model == "tiny":
        from fastunlearn.models.tiny_sd import build_tiny_sd

        adapter = load_model(build_tiny_sd(seed=0)).to(device)
        judge = forget_class = None
        if smoke:  # a stand-in that always sees the concept: runs the time-to-erase loop to its cap, nothing more
            forget_class, judge = 0, (lambda images: torch.nn.functional.one_hot(
                torch.zeros(images.shape[0], dtype=torch.long), 10).float())
        return Case("tiny", adapter, "a cat", forget_class, judge, "random")
    if model == "digits":
        from fastunlearn.eval.evaluate import digits_judges

        adapter = load_model("zoo:digits-t2i").to(device)
        from fastunlearn.data.prompts import class_prompt

        prompt = class_prompt(adapter.concepts, 0)  # "a handwritten digit zero"
        panel = digits_judges(adapter, second=False)
        return Case("digits", adapter, prompt, 0 if panel else None, panel[""] if panel else None, "trained")
    if model == "sd":
        from diffusers import DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

        from fastunlearn.models.t2i import T2IAdapter
        from fastunlearn.models.tiny_sd import _write_char_tokenizer

        import tempfile

        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            tok_dir = _write_char_tokenizer(Path(tmp) / "tokenizer")
            tokenizer = CLIPTokenizer(vocab=str(tok_dir / "vocab.json"), merges=str(tok_dir / "merges.txt"),
                                      model_max_length=77)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, **SD_TEXT_CONFIG)).eval()
        unet = UNet2DConditionModel(**SD_CONFIG)
        scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                                  beta_end=0.012, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
        adapter = T2IAdapter(unet, text_encoder, tokenizer, scheduler, vae=None).to(device)
        return Case("sd", adapter, "a photo of a cat", None, None, "random")
    raise SystemExit(f"unknown model {model!r}; expected tiny, digits, sd")


def run_config() -> UnlearnConfig:
    """ESD's settings as ``fastunlearn run`` resolves them for a text-to-image model."""
    return UnlearnConfig(method="esd").resolved(family="t2i")


# ---------------------------------------------------------------------- shared
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3, out


def corrected_mean(times: list[float], xs: list[float], target: float) -> tuple[float, float]:
    """(mean time at ``x = target``, least-squares ms per unit of x): mean(t) + b·(target − x̄), b the slope of t on
    x over the timed iterations (0 when every x is the same). ESD's reference, x = its prefix length."""
    mean_t, mean_x = statistics.fmean(times), statistics.fmean(xs)
    var = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (t - mean_t) for x, t in zip(xs, times)) / var if var > 0 else 0.0
    return mean_t + slope * (target - mean_x), slope


def bank_calls(ddim_steps: int, rows: int, bank_batch: int) -> int:
    """UNet calls of :func:`fastunlearn.methods.esd.build_bank` over ``rows`` trajectories: ``ddim_trajectory`` runs
    ⌈rows / (bank_batch // 2)⌉ chunks of [uncond; cond] rows, one call per DDIM step each."""
    return ddim_steps * math.ceil(rows / max(1, bank_batch // 2)) if rows else 0


# ---------------------------------------------------------------------- ESD
class Library:
    """The library's ESD on a private copy of the model under one fast path (setup = the bank build, timed; its
    UNet calls counted)."""

    def __init__(self, case: Case, cfg: UnlearnConfig, fast, options: dict, batch: int):
        self.adapter = case.adapter.scratch_copy()
        self.device = case.adapter.device
        prepare_model(self.adapter, self.device, fast)
        self.counter = CallCounter({"unet": self.adapter.unet})
        self.fast, self.batch = fast, batch
        self.ids = self.adapter.prompt_ids([case.prompt])
        self.method = methods.get("esd")()
        opts = methods.parse_options("esd", options)
        self.setup_ms, _ = _timed(lambda: self.method.setup(self.adapter, methods.MethodConfig(
            lr=float(cfg.lr), options=opts, forget_classes=(int(self.ids[0]),), scope=cfg.scope,
            fused_optimizer=fast.fused_optimizer)), self.device)
        self.bank_calls = self.counter.calls["unet"]
        self.counter.reset()

    def step(self, i: int) -> float:
        g = torch.Generator().manual_seed(1000 + i)
        batch = methods.Batch(torch.zeros(self.batch, 0), self.ids.repeat(self.batch), g)
        with _autocast(self.device, self.fast.precision):
            ms, metrics = _timed(lambda: self.method.step(batch, batch), self.device)
        return ms


class Reference:
    """The authors' ESD loop on a private copy of the model; each iteration's prefix length k and UNet calls are
    recorded."""

    def __init__(self, case: Case, cfg: UnlearnConfig, options: dict):
        a = case.adapter
        self.device = a.device
        self.ddim_steps = int(options["ddim_steps"])
        self.ref = ReferenceESD().setup(copy.deepcopy(a.unet), a.text_encoder, a.tokenizer, a.scheduler, [case.prompt],
                                        train_method=cfg.scope, lr=float(cfg.lr),
                                        negative_guidance=float(options["eta"]),
                                        start_guidance=float(options["sampling_guidance"]), ddim_steps=self.ddim_steps)
        self.counter = CallCounter({"unet": self.ref.unet, "frozen": self.ref.frozen})
        self.prefix: list[int] = []
        self.calls: list[int] = []

    def step(self, i: int) -> float:
        seed = 2000 + i
        _, t_enc, _, _ = self.ref.draw(torch.Generator().manual_seed(seed))
        self.prefix.append(ReferenceESD.prefix_calls(t_enc, self.ddim_steps))
        self.counter.reset()
        ms, _ = _timed(lambda: self.ref.step(torch.Generator().manual_seed(seed)), self.device)
        self.calls.append(sum(self.counter.calls.values()))
        return ms

    def model_view(self, adapter: Any) -> Any:
        """An adapter over the reference's trained UNet (for the erase checks' generations)."""
        view = copy.copy(adapter)
        view.unet = self.ref.unet
        return view


def esd_expected_calls(ddim_steps: int) -> float:
    """The ESD reference's UNet calls per iteration at E[k]: the prefix, e_0, e_p, e_n."""
    return expected_prefix(ddim_steps) + 3


def bench_iterations(case: Case, cfg: UnlearnConfig, options: dict, iters: int, warmup: int, device) -> list[dict]:
    """ESD: real iterations of every implementation, interleaved; per-iteration times as the module docstring
    says."""
    libs = {name: Library(case, cfg, fast, options, cfg.batch_size) for name, fast in library_fast_paths(device).items()}
    ref = Reference(case, cfg, options)
    times: dict[str, list[float]] = {name: [] for name in [*libs, "reference"]}
    for r in range(warmup + iters):
        for name, lib in libs.items():
            if r == warmup:
                lib.counter.reset()
            ms = lib.step(r)
            if r >= warmup:
                times[name].append(ms)
        ms = ref.step(r)
        if r >= warmup:
            times["reference"].append(ms)
        else:
            ref.prefix.pop()
            ref.calls.pop()
        print(f"  {case.name} esd round {r + 1}/{warmup + iters}: " + ", ".join(
            f"{n} {t[-1] / 1e3:.3f} s" for n, t in times.items() if t), flush=True)
    e_k = expected_prefix(int(options["ddim_steps"]))
    ref_ms, per_call = corrected_mean(times["reference"], ref.prefix, e_k)
    rows = [{"impl": "reference", "precision": "fp32", "batch": 1, "timed_iters": iters, "per_iter_ms": ref_ms,
             "step_ms": statistics.fmean(times["reference"]), "bank_s": "", "amortised_over": "",
             "unet_calls": statistics.fmean(ref.calls),
             "note": f"fp32, authors' loop; raw mean {statistics.fmean(times['reference']):.1f} ms at mean k "
                     f"{statistics.fmean(ref.prefix):.2f}, corrected to E[k] {e_k:.2f} ({per_call:.2f} ms/prefix call)"}]
    for name, lib in libs.items():
        step = statistics.median(times[name])
        rows.append({"impl": name, "precision": lib.fast.precision, "batch": cfg.batch_size, "timed_iters": iters,
                     "per_iter_ms": step + lib.setup_ms / cfg.steps, "step_ms": step,
                     "bank_s": lib.setup_ms / 1e3, "amortised_over": cfg.steps,
                     "unet_calls": lib.counter.calls["unet"] / iters + lib.bank_calls / cfg.steps,
                     "note": f"median step + bank build / {cfg.steps} iterations"})
    return rows


def bench_components(case: Case, cfg: UnlearnConfig, options: dict, device, reps: int) -> list[dict]:
    """ESD's composed sd row (module docstring): every component timed once per round over ``reps`` interleaved
    rounds, the medians composed."""
    S, J = int(options["ddim_steps"]), int(options["trajectories"])
    lib = Library(case, cfg, library_fast_paths(device)["fastunlearn-fp32"], {**options, "trajectories": 1, "ddim_steps": 1},
                  cfg.batch_size)  # setup's bank: one 2-row call, not timed here
    ref = Reference(case, cfg, {**options, "ddim_steps": S}).ref
    a = lib.adapter
    x1 = torch.randn(ref.latent_shape, device=device)
    emb = ref.encode(case.prompt)
    t1 = torch.full((1,), 500, device=device, dtype=torch.long)
    ids = lib.ids.repeat(J)

    def train_part():
        ref.optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(ref.apply_model(ref.unet, x1, t1, emb), torch.zeros_like(x1))
        loss.backward()
        ref.optimizer.step()
        return loss.item()

    parts = {
        "text": lambda: ref.encode(case.prompt),
        "guided": lambda: ref.apply_model(ref.unet, torch.cat([x1, x1]), t1.repeat(2), torch.cat([emb, emb])),
        "frozen": lambda: ref.apply_model(ref.frozen, x1, t1, emb),
        "train": train_part,
        "bank_call": lambda: a.ddim_trajectory(ids, steps=1, guidance_scale=3.0, generator=torch.Generator(),
                                               batch_size=2 * J),
    }
    times: dict[str, list[float]] = {k: [] for k in [*parts, "step"]}
    for r in range(reps):  # interleaved rounds: load from other processes hits every component alike
        for name, fn in parts.items():
            with torch.set_grad_enabled(name == "train"):
                times[name].append(_timed(fn, device)[0])
        times["step"].append(lib.step(r))
        print(f"  sd esd components round {r + 1}/{reps} (ms): " +
              ", ".join(f"{k} {v[-1]:.0f}" for k, v in times.items()), flush=True)
    t_text, t_cfg, t_frozen, t_train, t_bank_call, step = (statistics.median(times[k]) for k in
                                                           ("text", "guided", "frozen", "train", "bank_call", "step"))
    bank_ms = S * t_bank_call
    e_k = expected_prefix(S)
    ref_ms = 4 * t_text + e_k * t_cfg + 2 * t_frozen + t_train
    lib_calls = 1 + bank_calls(S, J, int(options["bank_batch"])) / cfg.steps
    return [
        {"impl": "reference", "precision": "fp32", "batch": 1, "timed_iters": reps, "per_iter_ms": ref_ms,
         "step_ms": "", "bank_s": "", "amortised_over": "", "unet_calls": esd_expected_calls(S),
         "note": f"composed: 4 x text {t_text:.0f} + E[k] {e_k:.2f} x guided call {t_cfg:.0f} + 2 x frozen "
                 f"{t_frozen:.0f} + train {t_train:.0f} ms"},
        {"impl": "fastunlearn-fp32", "precision": "fp32", "batch": cfg.batch_size, "timed_iters": reps,
         "per_iter_ms": step + bank_ms / cfg.steps, "step_ms": step, "bank_s": bank_ms / 1e3,
         "amortised_over": cfg.steps, "unet_calls": lib_calls,
         "note": f"composed: step + bank ({S} x one {2 * J}-row guided call {t_bank_call:.0f} ms) / {cfg.steps}"},
    ]


@torch.no_grad()
def forget_share(adapter: Any, case: Case, n: int, steps: int) -> float:
    """Share of ``n`` seeded generations of the forget prompt the judge reads as the forget class."""
    images = adapter.generate(n, [case.prompt] * n, steps=steps, generator=torch.Generator().manual_seed(7))
    return float((case.judge(images.to(adapter.device)).argmax(1).cpu() == case.forget_class).float().mean())


def time_to_erase(case: Case, cfg: UnlearnConfig, options: dict, device, args) -> dict[str, dict]:
    """ESD: {impl: {"time_to_erase_s", "erase_iters", "erase_share"}} (module docstring)."""
    out = {}
    lib = Library(case, cfg, resolve_fast_path(UnlearnConfig(), device), options, cfg.batch_size)
    ref = Reference(case, cfg, options)
    for name, impl, model, start_ms in (("fastunlearn", lib, lib.adapter, lib.setup_ms),
                                        ("reference", ref, ref.model_view(case.adapter), 0.0)):
        trained_ms, share, done = start_ms, None, None
        for i in range(1, args.erase_max_iters + 1):
            trained_ms += impl.step(10_000 + i)
            if i % args.eval_every == 0 or i == args.erase_max_iters:
                share = forget_share(model, case, args.eval_n, args.eval_steps)
                print(f"  {case.name} erase {name}: iteration {i}, {trained_ms / 1e3:.1f} s trained, forget share "
                      f"{share:.1%}", flush=True)
                if share <= args.erase_share:
                    done = i
                    break
        out[name] = {"time_to_erase_s": round(trained_ms / 1e3, 2) if done else "", "erase_iters": done or "",
                     "erase_share": round(share, 4) if share is not None else ""}
    return out


def esd_rows(case: Case, model: str, device, args) -> tuple[dict, list[dict]]:
    """({row columns shared by ESD's rows}, its measured rows) on one model."""
    cfg = run_config()
    options = dict(cfg.options)
    if args.smoke:
        options.update(ddim_steps=10, trajectories=1)
    if (model == "sd" and device.type == "cpu") or model.endswith("-composed"):
        got = bench_components(case, cfg, options, device, reps=1 if args.smoke else (args.iters or 3))
    else:
        iters = 2 if args.smoke else (args.iters or (3 if model == "sd" else 20))
        warmup = 0 if args.smoke else (2 if args.warmup is None else args.warmup)
        got = bench_iterations(case, cfg, options, iters, warmup, device)
    erase = time_to_erase(case, cfg, options, device, args) \
        if case.judge is not None and not model.endswith("-composed") else {}
    for r in got:
        e = erase.get("fastunlearn" if r["impl"].startswith("fastunlearn") else r["impl"], {})
        if r["impl"] == "fastunlearn-fp32" and "fastunlearn" in {g["impl"] for g in got}:
            e = {}  # the erase run uses the device's default path: its row carries the result
        r.update(time_to_erase_s=e.get("time_to_erase_s", ""), erase_iters=e.get("erase_iters", ""),
                 erase_share=e.get("erase_share", ""))
    shared = {"method": "esd", "setting": "run", "trajectories": options["trajectories"],
              "ddim_steps": options["ddim_steps"], "attack_steps": ""}
    return shared, got


# ---------------------------------------------------------------------- AdvUnlearn
@dataclass
class AdvSetting:
    name: str  #: the rows' ``setting``: "authors" or "digits-defaults"
    cfg: UnlearnConfig  #: resolved; ``cfg.steps`` = the run's iterations (the banks' amortisation)


def adv_settings(model: str, smoke: bool = False) -> list[AdvSetting]:
    """AdvUnlearn's settings measured on ``model`` (module docstring): the authors' defaults, and on digits-t2i
    (and the tiny development model) the measured defaults ``fastunlearn run`` picks there."""
    out = [AdvSetting("authors", UnlearnConfig(method="advunlearn").resolved(family="t2i"))]
    if model in ("digits", "tiny"):
        out.append(AdvSetting("digits-defaults",
                              UnlearnConfig(method="advunlearn", model="zoo:digits-t2i").resolved(family="t2i")))
    if smoke:  # every code path in seconds: short trajectories, two or three attack steps
        for setting, steps in zip(out, (3, 2)):
            setting.cfg.options.update(ddim_steps=4, trajectories=1, attack_steps=steps)
    return out


def retain_prompt_ids(case: Case) -> torch.Tensor:
    """The retain prompts ``fastunlearn run`` picks for AdvUnlearn when none are given (the model's other concepts,
    else the method's shipped everyday-object prompts), as prompt ids of ``case.adapter``."""
    from fastunlearn.data.prompts import select_prompts
    from fastunlearn.methods.advunlearn import default_retain_prompts

    sets = select_prompts(f"prompt:{case.prompt}", None, case.adapter, default_retain_prompts())
    return case.adapter.prompt_ids(sets.retain_prompts, "retain prompt")


class AdvLibrary:
    """The library's AdvUnlearn on a private copy of the model under one fast path (setup = both banks' build,
    timed; UNet calls counted). ``time_attack``: each step's attack is timed on its own (``attack_ms``)."""

    def __init__(self, case: Case, cfg: UnlearnConfig, fast, retain_ids: Any, options: dict,
                 time_attack: bool = False):
        self.adapter = case.adapter.scratch_copy()
        self.device = case.adapter.device
        prepare_model(self.adapter, self.device, fast)
        self.counter = CallCounter({"unet": self.adapter.unet})
        self.fast, self.batch = fast, cfg.batch_size
        self.ids = self.adapter.prompt_ids([case.prompt])
        self.opts = methods.parse_options("advunlearn", options)
        self.method = methods.get("advunlearn")()
        self.setup_ms, _ = _timed(lambda: self.method.setup(self.adapter, methods.MethodConfig(
            lr=float(cfg.lr), options=self.opts, forget_classes=(int(self.ids[0]),),
            retain_classes=tuple(int(i) for i in retain_ids), scope=cfg.scope,
            fused_optimizer=fast.fused_optimizer)), self.device)
        self.bank_calls = self.counter.calls["unet"]
        self.counter.reset()
        self.attack_ms: list[float] = []
        if time_attack:
            attack = self.method.attack

            def timed_attack(batch):
                self.attack_ms.append(_timed(lambda: attack(batch), self.device)[0])

            self.method.attack = timed_attack

    def step(self, i: int) -> float:
        g = torch.Generator().manual_seed(1000 + i)
        batch = methods.Batch(torch.zeros(self.batch, 0), self.ids.repeat(self.batch), g)
        with _autocast(self.device, self.fast.precision):
            ms, _ = _timed(lambda: self.method.step(batch, batch), self.device)
        return ms


class AdvReference:
    """:class:`ReferenceAdvUnlearn` with a setting's options (every iteration attacks: ``warmup_iter`` 0) on its own
    copies of the model; each iteration's counted UNet calls are recorded."""

    def __init__(self, case: Case, cfg: UnlearnConfig, retain_ids: Any, ref_cfg: str,
                 attack_steps: int | None = None):
        o = cfg.options
        self.device = case.adapter.device
        self.ref = ReferenceAdvUnlearn().setup(
            case.adapter, case.adapter.prompt_ids([case.prompt]), retain_ids, scope=cfg.scope, lr=float(cfg.lr),
            retain_loss_w=float(o["gamma"]), retain_batch=int(o["retain_batch"]),
            attack_steps=int(o["attack_steps"] if attack_steps is None else attack_steps),
            attack_lr=float(o["attack_lr"]), adv_prompt_num=int(o["attack_tokens"]), attack_method=o["attack"],
            attack_init=o["attack_init"], warmup_iter=0, adv_prompt_update_step=int(o["attack_every"]),
            start_guidance=float(o["sampling_guidance"]), negative_guidance=float(o["eta"]),
            ddim_steps=int(o["ddim_steps"]), cfg=ref_cfg)
        self.generator = torch.Generator().manual_seed(2000)
        self.calls: list[int] = []

    def step(self) -> float:
        ms, _ = _timed(lambda: self.ref.step(self.generator), self.device)
        self.calls.append(self.ref.last.unet_calls)
        return ms


def _cfg_words(ref_cfg: str) -> str:
    return "CFG batched: one [uncond; cond] UNet call per DDIM step, as the authors' sampler" \
        if ref_cfg == "batched" else "CFG split: two UNet calls per DDIM step"


def bench_adv_iterations(case: Case, setting: AdvSetting, retain_ids: Any, iters: int, warmup: int, device,
                         ref_cfg: str) -> list[dict]:
    """AdvUnlearn: real attacking iterations of every implementation, interleaved (module docstring)."""
    cfg = setting.cfg
    n_attack = int(cfg.options["attack_steps"])
    libs = {name: AdvLibrary(case, cfg, fast, retain_ids, {**cfg.options, "warmup": 0})
            for name, fast in library_fast_paths(device).items()}
    ref = AdvReference(case, cfg, retain_ids, ref_cfg)
    times: dict[str, list[float]] = {name: [] for name in [*libs, "reference"]}
    for r in range(warmup + iters):
        for name, lib in libs.items():
            if r == warmup:
                lib.counter.reset()
            ms = lib.step(r)
            if r >= warmup:
                times[name].append(ms)
        ms = ref.step()
        if r >= warmup:
            times["reference"].append(ms)
        else:
            ref.calls.pop()
        print(f"  {case.name} advunlearn {setting.name} round {r + 1}/{warmup + iters}: " + ", ".join(
            f"{n} {t[-1] / 1e3:.3f} s" for n, t in times.items() if t), flush=True)
    e_calls, _ = ref.ref.expected_unet_calls(attacked=True)
    raw, counted = statistics.fmean(times["reference"]), statistics.fmean(ref.calls)
    ref_ms = raw * e_calls / counted
    rows = [{"impl": "reference", "precision": "fp32", "batch": 1, "timed_iters": iters, "per_iter_ms": ref_ms,
             "step_ms": raw, "bank_s": "", "amortised_over": "", "unet_calls": counted,
             "note": f"fp32, authors' loop, {_cfg_words(ref_cfg)}; {n_attack} attack steps; raw mean {raw:.1f} ms at "
                     f"{counted:.1f} counted UNet calls, scaled to the formula's E {e_calls:.1f} "
                     f"({raw / counted:.2f} ms/call)"}]
    for name, lib in libs.items():
        step = statistics.median(times[name])
        step_calls = lib.counter.calls["unet"] / iters
        rows.append({"impl": name, "precision": lib.fast.precision, "batch": cfg.batch_size, "timed_iters": iters,
                     "per_iter_ms": step + lib.setup_ms / cfg.steps, "step_ms": step,
                     "bank_s": lib.setup_ms / 1e3, "amortised_over": cfg.steps,
                     "unet_calls": step_calls + lib.bank_calls / cfg.steps,
                     "note": f"median attacking step ({n_attack} attack steps) + banks' build / {cfg.steps} "
                             f"iterations; UNet calls {step_calls:g} per step + {lib.bank_calls} bank calls / "
                             f"{cfg.steps}"})
    return rows


def _library_components(case: Case, setting: AdvSetting, device, reps: int) -> dict[str, float]:
    """The library's a′ and r′ (medians over ``reps`` rounds, ms): real advunlearn steps with one attack step and no
    retain rows, on a 1-step bank; each step's attack is timed on its own (a′), its rest is r′ (a 1-row training
    pass with its Adam update)."""
    o = setting.cfg.options
    lib = AdvLibrary(case, setting.cfg, library_fast_paths(device)["fastunlearn-fp32"], (),
                     {**o, "warmup": 0, "attack_steps": 1, "ddim_steps": 1, "trajectories": 1, "gamma": 0.0},
                     time_attack=True)
    times: dict[str, list[float]] = {"a'": [], "r'": []}  # a′, r′
    for r in range(reps):
        step = lib.step(r)
        times["a'"].append(lib.attack_ms[-1])
        times["r'"].append(step - lib.attack_ms[-1])
        print(f"  {case.name} advunlearn components, library round {r + 1}/{reps} (ms): " +
              ", ".join(f"{k} {v[-1]:.0f}" for k, v in times.items()), flush=True)
    return {k: statistics.median(v) for k, v in times.items()}


def _reference_components(case: Case, setting: AdvSetting, retain_ids: Any, device, reps: int, ref_cfg: str,
                          release: bool = False) -> dict[str, float]:
    """The reference's te₀, g, f, a, r, adam (medians over ``reps`` rounds, ms; module docstring, "The SD row"):
    its own modules and code on one row (two for a guided call). ``release``: the case's UNet is dropped once the
    reference has its copies (the model's last use; at SD size on a CPU, the memory for the weight gradients)."""
    import torch.nn.functional as F

    ref = AdvReference(case, setting.cfg, retain_ids, ref_cfg, attack_steps=1).ref
    if release:
        case.adapter.unet = None
        gc.collect()
    word, null = int(ref.concept[0]), ref.model.null_label
    ref.word, ref.word_prompt = word, ref.prompt([word])
    uc, emb_p = ref.encode_frozen([null]), ref.encode_frozen([word])
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn((1, *ref.latent_shape), generator=g).to(device)
    t1, t2 = ref._t(ref.T // 2, 1), ref._t(ref.T // 2, 2)
    with torch.no_grad():
        target = ref.frozen.predict_embedded(x1, t1, emb_p)
    adv_prompt = ref.prompt([word], ref.k)
    adv = ref.init_adv(g)
    adv_opt = torch.optim.Adam([adv], lr=ref.attack_lr)

    def guided_step():  # one prefix DDIM step of one prompt, as sample_till calls the UNet
        if ref.cfg == "batched":
            ref.model.predict_embedded(torch.cat([x1, x1]), t2, torch.cat([uc, emb_p]))
        else:
            ref.model.predict_embedded(x1, t1, uc)
            ref.model.predict_embedded(x1, t1, emb_p)

    def attack_step():  # their soft_prompt_attack's step after x_t is drawn (the encoder frozen, as theirs sets it)
        ref.text_encoder.eval()
        ref.text_encoder.requires_grad_(False)
        loss, _ = ref.attack_step(adv, adv_opt, adv_prompt, x1, t1, target)
        loss.item()

    def train_row():  # one row of their training step's gradient part: TE_θ, the UNet, the backward
        ref.text_encoder.train()
        ref.text_encoder.requires_grad_(True)
        wp = ref.word_prompt
        e_n = ref.model.predict_embedded(x1, t1, ref.encode_embeds(wp.ids, wp.mask, wp.embeds))
        F.mse_loss(e_n, target).backward()

    parts: dict[str, Callable[[], Any]] = {
        "te0": lambda: ref.encode_frozen([word]),
        "g": guided_step,
        "f": lambda: ref.frozen.predict_embedded(x1, t1, emb_p),
        "a": attack_step,
        "r": train_row,
        "adam": ref.optimizer.step,
    }
    times: dict[str, list[float]] = {k: [] for k in parts}
    for r in range(reps):
        for name, fn in parts.items():
            with torch.set_grad_enabled(name in ("a", "r", "adam")), torch.autocast(device.type, enabled=False):
                times[name].append(_timed(fn, device)[0])
        print(f"  {case.name} advunlearn components, reference round {r + 1}/{reps} (ms): " +
              ", ".join(f"{k} {v[-1]:.0f}" for k, v in times.items()), flush=True)
    return {k: statistics.median(v) for k, v in times.items()}


def bench_adv_components(case: Case, setting: AdvSetting, retain_ids: Any, device, reps: int, ref_cfg: str,
                         release: bool = False) -> list[dict]:
    """AdvUnlearn's composed rows (module docstring, "The SD row"): the library's components over ``reps``
    rounds, then the reference's (each side's copies freed before the other's are made), medians composed.
    ``release``: see :func:`_reference_components`."""
    cfg, o = setting.cfg, setting.cfg.options
    S, N, B = int(o["ddim_steps"]), int(o["attack_steps"]), int(o["retain_batch"])
    J, Jr, R, bb = int(o["trajectories"]), int(o["retain_trajectories"]), len(retain_ids), int(o["bank_batch"])
    B_lib = B if float(o["gamma"]) > 0 and R else 0  # the library trains no retain rows without its regulariser
    lib = _library_components(case, setting, device, reps)
    gc.collect()
    c = _reference_components(case, setting, retain_ids, device, reps, ref_cfg, release)
    gc.collect()
    e_p = expected_prefix(S)
    ref_ms = ((2 + N + 2 * B + 1) * c["te0"] + e_p * (N + 1 + B) * c["g"] + (2 * N + 2 + B) * c["f"] + N * c["a"]
              + (1 + B) * c["r"] + c["adam"])
    ref_calls, _ = expected_unet_calls(N, S, B, ref_cfg)
    bank_rows = S * (2 * J + (2 * R * Jr if B_lib else 0))
    bank_ms = bank_rows * c["g"] / 2
    a_lib, r_lib = lib["a'"], lib["r'"]
    lib_step = N * a_lib + (1 + B_lib) * r_lib
    n_bank = bank_calls(S, J, bb) + (bank_calls(S, R * Jr, bb) if B_lib else 0)
    lib_calls = N + 1 + n_bank / cfg.steps
    return [
        {"impl": "reference", "precision": "fp32", "batch": 1, "timed_iters": reps, "per_iter_ms": ref_ms,
         "step_ms": "", "bank_s": "", "amortised_over": "", "unet_calls": ref_calls,
         "note": f"composed, {_cfg_words(ref_cfg)}: (2 + N + 2B + 1) x te0 {c['te0']:.0f} + E[p] {e_p:.2f} x "
                 f"(N + 1 + B) x g {c['g']:.0f} + (2N + 2 + B) x f {c['f']:.0f} + N x a {c['a']:.0f} + (1 + B) x r "
                 f"{c['r']:.0f} + adam {c['adam']:.0f} ms (N {N}, B {B}); UNet calls: the formula's"},
        {"impl": "fastunlearn-fp32", "precision": "fp32", "batch": cfg.batch_size, "timed_iters": reps,
         "per_iter_ms": lib_step + bank_ms / cfg.steps, "step_ms": lib_step, "bank_s": bank_ms / 1e3,
         "amortised_over": cfg.steps, "unet_calls": lib_calls,
         "note": f"composed: N x a' {a_lib:.0f} + (1 + B) x r' {r_lib:.0f} ms + banks ({bank_rows} rows at "
                 f"g/2) / {cfg.steps}; UNet calls N + 1 + {n_bank} bank calls / {cfg.steps}"},
    ]


def adv_rows(case: Case, model: str, device, args) -> list[tuple[dict, list[dict]]]:
    """[({row columns shared by a setting's rows}, its measured rows)] of AdvUnlearn on one model."""
    retain_ids = retain_prompt_ids(case)
    composed = (model == "sd" and device.type == "cpu") or model.endswith("-composed")
    out = []
    settings = adv_settings(model.removesuffix("-composed"), args.smoke)
    for setting in settings:
        if composed:  # at SD size the case's UNet goes once the last setting's reference has its copies
            got = bench_adv_components(case, setting, retain_ids, device, reps=1 if args.smoke else (args.iters or 1),
                                       ref_cfg=args.ref_cfg, release=model == "sd" and setting is settings[-1])
        else:
            iters = 2 if args.smoke else (args.iters or (3 if model == "sd" else 5))
            warmup = 0 if args.smoke else (1 if args.warmup is None else args.warmup)
            got = bench_adv_iterations(case, setting, retain_ids, iters, warmup, device, args.ref_cfg)
        o = setting.cfg.options
        out.append(({"method": "advunlearn", "setting": setting.name, "trajectories": o["trajectories"],
                     "ddim_steps": o["ddim_steps"], "attack_steps": o["attack_steps"]}, got))
    return out


# ---------------------------------------------------------------------- main
def _round(value: Any, digits: int) -> Any:
    return round(value, digits) if value != "" else ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--models", default="digits,sd", help="comma-separated: digits, sd, tiny (default digits,sd)")
    ap.add_argument("--method", default=",".join(METHODS),
                    help=f"comma-separated: {', '.join(METHODS)} (default both)")
    ap.add_argument("--iters", type=int, default=None,
                    help="timed iterations per implementation (default: ESD 20, sd 3; AdvUnlearn 5, sd 3; on a CPU "
                         "the sd rows' rounds of components: ESD 3, AdvUnlearn 1)")
    ap.add_argument("--warmup", type=int, default=None, help="discarded rounds (default: ESD 2, AdvUnlearn 1)")
    ap.add_argument("--ref-cfg", default="batched", choices=["batched", "split"],
                    help="the AdvUnlearn reference's CFG: one [uncond; cond] call per DDIM step (the authors' "
                         "sampler) or two calls")
    ap.add_argument("--erase-share", type=float, default=0.05, help="erased when the forget share is at most this")
    ap.add_argument("--erase-max-iters", type=int, default=1000, help="give up after this many iterations")
    ap.add_argument("--eval-every", type=int, default=25, help="iterations between erase checks")
    ap.add_argument("--eval-n", type=int, default=64, help="generations per erase check")
    ap.add_argument("--eval-steps", type=int, default=20, help="DDIM steps of the erase checks' generations")
    ap.add_argument("--threads", type=int, default=None, help="CPU: torch threads (default 1, as bench_step.py)")
    ap.add_argument("--csv", default=str(RESULTS / "t2i.csv"), help="CSV to append rows to ('' to skip)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 2 iterations, every code path, nothing written")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    chosen = [m.strip() for m in args.method.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(METHODS))
    if unknown or not chosen:
        ap.error(f"--method: unknown {', '.join(unknown) or '(none given)'}; expected a comma-separated subset of "
                 f"{', '.join(METHODS)}")
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    # --smoke: the tiny model through both measurement paths (real iterations, and the sd rows' composed one)
    models = ["tiny", "tiny-composed"] if args.smoke else args.models.split(",")
    if args.smoke:
        args.erase_max_iters, args.eval_every, args.eval_n, args.eval_steps = 2, 1, 4, 2
    env = environment(device)
    print(f"{env['device']} | torch {env['torch']} | commit {env['commit']} | methods {', '.join(chosen)}", flush=True)
    rows = []
    for model in models:
        case = build(model.removesuffix("-composed"), device, smoke=args.smoke)
        params = round(sum(p.numel() for p in case.adapter.unet.parameters()) / 1e6, 2)
        measured: list[tuple[dict, list[dict]]] = []
        model_rows: list[dict] = []
        for method in (m for m in METHODS if m in chosen):  # ESD first: AdvUnlearn's sd rows release the model
            if method == "esd":
                measured.append(esd_rows(case, model, device, args))
            else:
                measured += adv_rows(case, model, device, args)
        for shared, got in measured:
            ref = next(r for r in got if r["impl"] == "reference")
            for r in got:
                row = {**env, **shared, "model": model, "weights": case.weights, "params_M": params, **r,
                       "per_iter_ms": round(r["per_iter_ms"], 1), "step_ms": _round(r["step_ms"], 1),
                       "bank_s": _round(r["bank_s"], 2), "speedup": round(ref["per_iter_ms"] / r["per_iter_ms"], 2),
                       "unet_calls_per_iter": round(r["unet_calls"], 2),
                       "unet_calls_ratio": round(ref["unet_calls"] / r["unet_calls"], 1),
                       "note": r["note"] + ("; random weights" if case.weights == "random" else "")}
                for key in ("time_to_erase_s", "erase_iters", "erase_share"):
                    row.setdefault(key, "")
                model_rows.append({k: row[k] for k in COLUMNS})
        if not args.smoke and args.csv:  # each model's rows as soon as they are measured
            append_csv(Path(args.csv), model_rows)
            print(f"appended {len(model_rows)} {model} rows to {args.csv}", flush=True)
        rows += model_rows
        del case
        gc.collect()
    print_table(rows, ["method", "setting", "model", "weights", "impl", "precision", "batch", "per_iter_ms",
                       "step_ms", "bank_s", "speedup", "unet_calls_per_iter", "unet_calls_ratio", "time_to_erase_s",
                       "erase_iters"])
    print("speedup = the reference's per-iteration time ÷ this row's (the library's amortised over its run); "
          "unet_calls_ratio = the reference's UNet calls per iteration ÷ this row's")
    return 0


if __name__ == "__main__":
    sys.exit(main())
