"""ESD on text-to-image models: fastunlearn's step vs the authors' loop, same model, same machine, same run.

    python benchmarks/bench_t2i.py                         # CPU: zoo:digits-t2i (+ time-to-erase) and sd
    python benchmarks/bench_t2i.py --models tiny           # the tiny random SD pipeline (development)
    python benchmarks/bench_t2i.py --smoke                 # seconds: tiny, every code path, writes nothing

Implementations (each on its own copy of the same initial model):

- ``fastunlearn-fp32`` — the library's ESD through the registry (``fastunlearn.methods.get("esd")`` over a
  :class:`~fastunlearn.models.t2i.T2IAdapter`, real :class:`~fastunlearn.methods.base.Batch` objects, the
  options, lr, batch size and scope ``fastunlearn run`` resolves for a text-to-image model), fp32 without
  torch.compile: the same precision as the reference, so its ratio is the algorithm's alone;
  ``fastunlearn`` — the same on the device's default fast path (``fastunlearn run``'s), when that is not fp32.
  Its per-iteration time is **amortised**: the median step time + the bank build (timed once, in the method's
  ``setup``) ÷ the run's iterations (``amortised_over``: the run's default steps, the authors' 200 iterations).
- ``reference`` — :class:`reference_esd.ReferenceESD`, the authors' CompVis loop (x_t sampled from the
  trained model every iteration, fp32, four text encodes, batch 1). Its cost depends on the drawn prefix length
  k (S − t_enc DDIM calls of 2 rows): its per-iteration time is the mean over the timed iterations corrected to
  the authors' expected prefix E[k] (25.48 at S = 50) with the least-squares cost per prefix call — the raw mean
  and the mean k drawn are in ``note``.

Steps are interleaved (one of each implementation per round) so that load from other processes hits all alike.
``speedup`` = the reference's per-iteration time ÷ this row's.

**Time to erase** (``zoo:digits-t2i`` only: the shipped digits classifier judges the generations): from the same
initial model, the library (its defaults, the device's default fast path) and the reference (the same lr, η
and scope, batch 1) train until the share of the forget prompt's generations that the classifier reads as the
forget digit is ≤ ``--erase-share`` (5%: the issue's bar), checked every ``--eval-every`` iterations on the same
``--eval-n`` seeded generations (DDIM ``--eval-steps``, guidance 3). ``time_to_erase_s`` counts training time
only (for the library: its bank build included), not the checks; blank when ``--erase-max-iters`` was reached.

**The SD row** (``sd``): a ``UNet2DConditionModel`` with Stable Diffusion 1.x's configuration (860M parameters,
4×64×64 latents) and a CLIP ViT-L-sized text encoder, RANDOM weights (``weights`` column), no VAE (training
runs on latents). On a CPU one 2-row UNet call takes tens of seconds, so a real reference iteration (≈ 27 calls)
would take many minutes: its row is **composed** from timed components (``note`` says so): reference =
4 text encodes + E[k] guided 2-row calls + 2 frozen 1-row calls + one 1-row forward+backward+Adam; library =
one ESD step (timed) + the bank (``ddim_steps`` × one guided call over the bank's 2·J rows, timed once) ÷
``amortised_over``. No time to erase (random weights). On CUDA the sd row runs real iterations like the others.

Rows are appended to ``benchmarks/results/t2i.csv`` (date, device, torch, commit as the other CSVs); the README
table is made from it by ``benchmarks/readme_tables.py`` (markers ``<!-- t2i-table:start -->`` /
``<!-- t2i-table:end -->``).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, append_csv, environment, print_table  # noqa: E402
from reference_esd import ReferenceESD  # noqa: E402

from fastunlearn.config import UnlearnConfig  # noqa: E402
from fastunlearn.engine import prepare_model, resolve_fast_path  # noqa: E402
from fastunlearn.engine.loop import _autocast  # noqa: E402
from fastunlearn.methods import base as methods  # noqa: E402

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
            tok_dir = _write_char_tokenizer(Path(tmp) / "tokenizer", 77)
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


# ---------------------------------------------------------------------- implementations
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3, out


class Library:
    """The library's ESD on a private copy of the model under one fast path (setup = the bank build, timed)."""

    def __init__(self, case: Case, cfg: UnlearnConfig, fast, options: dict, batch: int):
        self.adapter = case.adapter.scratch_copy()
        self.device = case.adapter.device
        prepare_model(self.adapter, self.device, fast)
        self.fast, self.batch = fast, batch
        self.ids = self.adapter.prompt_ids([case.prompt])
        self.method = methods.get("esd")()
        opts = methods.parse_options("esd", options)
        self.setup_ms, _ = _timed(lambda: self.method.setup(self.adapter, methods.MethodConfig(
            lr=float(cfg.lr), options=opts, forget_classes=(int(self.ids[0]),), scope=cfg.scope,
            fused_optimizer=fast.fused_optimizer)), self.device)

    def step(self, i: int) -> float:
        g = torch.Generator().manual_seed(1000 + i)
        batch = methods.Batch(torch.zeros(self.batch, 0), self.ids.repeat(self.batch), g)
        with _autocast(self.device, self.fast.precision):
            ms, metrics = _timed(lambda: self.method.step(batch, batch), self.device)
        return ms


class Reference:
    """The authors' loop on a private copy of the model; each iteration's prefix length k is recorded."""

    def __init__(self, case: Case, cfg: UnlearnConfig, options: dict):
        a = case.adapter
        self.device = a.device
        self.ddim_steps = int(options["ddim_steps"])
        self.ref = ReferenceESD().setup(copy.deepcopy(a.unet), a.text_encoder, a.tokenizer, a.scheduler, [case.prompt],
                                        train_method=cfg.scope, lr=float(cfg.lr),
                                        negative_guidance=float(options["eta"]),
                                        start_guidance=float(options["sampling_guidance"]), ddim_steps=self.ddim_steps)
        self.prefix: list[int] = []

    def step(self, i: int) -> float:
        seed = 2000 + i
        _, t_enc, _, _ = self.ref.draw(torch.Generator().manual_seed(seed))
        self.prefix.append(ReferenceESD.prefix_calls(t_enc, self.ddim_steps))
        ms, _ = _timed(lambda: self.ref.step(torch.Generator().manual_seed(seed)), self.device)
        return ms

    def model_view(self, adapter: Any) -> Any:
        """An adapter over the reference's trained UNet (for the erase checks' generations)."""
        view = copy.copy(adapter)
        view.unet = self.ref.unet
        return view


def corrected_mean(times: list[float], prefix: list[int], target: float) -> tuple[float, float]:
    """(mean time at the expected prefix ``target``, least-squares ms per prefix call): mean(t) + b·(E[k] − k̄)."""
    mean_t, mean_k = statistics.fmean(times), statistics.fmean(prefix)
    var = sum((k - mean_k) ** 2 for k in prefix)
    slope = sum((k - mean_k) * (t - mean_t) for k, t in zip(prefix, times)) / var if var > 0 else 0.0
    return mean_t + slope * (target - mean_k), slope


# ---------------------------------------------------------------------- measurements
def lib_names(device: torch.device) -> dict[str, Any]:
    """{row name: fast path}: fp32 without compile first; the device default when it differs."""
    fp32 = resolve_fast_path(UnlearnConfig(precision="fp32", compile=False), device)
    default = resolve_fast_path(UnlearnConfig(), device)
    names = {"fastunlearn-fp32": fp32}
    if (default.precision, default.compile) != (fp32.precision, fp32.compile):
        names["fastunlearn"] = default
    return names


def bench_iterations(case: Case, cfg: UnlearnConfig, options: dict, iters: int, warmup: int, device) -> list[dict]:
    """Real iterations of every implementation, interleaved; per-iteration times as the module docstring says."""
    libs = {name: Library(case, cfg, fast, options, cfg.batch_size) for name, fast in lib_names(device).items()}
    ref = Reference(case, cfg, options)
    times: dict[str, list[float]] = {name: [] for name in [*libs, "reference"]}
    for r in range(warmup + iters):
        for name, lib in libs.items():
            ms = lib.step(r)
            if r >= warmup:
                times[name].append(ms)
        ms = ref.step(r)
        if r >= warmup:
            times["reference"].append(ms)
        else:
            ref.prefix.pop()
        print(f"  {case.name} round {r + 1}/{warmup + iters}: " + ", ".join(
            f"{n} {t[-1] / 1e3:.3f} s" for n, t in times.items() if t), flush=True)
    e_k = expected_prefix(int(options["ddim_steps"]))
    ref_ms, per_call = corrected_mean(times["reference"], ref.prefix, e_k)
    rows = [{"impl": "reference", "precision": "fp32", "batch": 1, "timed_iters": iters, "per_iter_ms": ref_ms,
             "step_ms": statistics.fmean(times["reference"]), "bank_s": "", "amortised_over": "",
             "note": f"fp32, authors' loop; raw mean {statistics.fmean(times['reference']):.1f} ms at mean k "
                     f"{statistics.fmean(ref.prefix):.2f}, corrected to E[k] {e_k:.2f} ({per_call:.2f} ms/prefix call)"}]
    for name, lib in libs.items():
        step = statistics.median(times[name])
        rows.append({"impl": name, "precision": lib.fast.precision, "batch": cfg.batch_size, "timed_iters": iters,
                     "per_iter_ms": step + lib.setup_ms / cfg.steps, "step_ms": step,
                     "bank_s": lib.setup_ms / 1e3, "amortised_over": cfg.steps,
                     "note": f"median step + bank build / {cfg.steps} iterations"})
    return rows


def bench_components(case: Case, cfg: UnlearnConfig, options: dict, device, reps: int) -> list[dict]:
    """The composed sd row (module docstring): every component timed once per round over ``reps`` interleaved
    rounds, the medians composed."""
    S, J = int(options["ddim_steps"]), int(options["trajectories"])
    lib = Library(case, cfg, lib_names(device)["fastunlearn-fp32"], {**options, "trajectories": 1, "ddim_steps": 1},
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
        print(f"  sd components round {r + 1}/{reps} (ms): " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in times.items()),
              flush=True)
    t_text, t_cfg, t_frozen, t_train, t_bank_call, step = (statistics.median(times[k]) for k in
                                                           ("text", "guided", "frozen", "train", "bank_call", "step"))
    bank_ms = S * t_bank_call
    e_k = expected_prefix(S)
    ref_ms = 4 * t_text + e_k * t_cfg + 2 * t_frozen + t_train
    return [
        {"impl": "reference", "precision": "fp32", "batch": 1, "timed_iters": reps, "per_iter_ms": ref_ms,
         "step_ms": "", "bank_s": "", "amortised_over": "",
         "note": f"composed: 4 x text {t_text:.0f} + E[k] {e_k:.2f} x guided call {t_cfg:.0f} + 2 x frozen "
                 f"{t_frozen:.0f} + train {t_train:.0f} ms"},
        {"impl": "fastunlearn-fp32", "precision": "fp32", "batch": cfg.batch_size, "timed_iters": reps,
         "per_iter_ms": step + bank_ms / cfg.steps, "step_ms": step, "bank_s": bank_ms / 1e3,
         "amortised_over": cfg.steps,
         "note": f"composed: step + bank ({S} x one {2 * J}-row guided call {t_bank_call:.0f} ms) / {cfg.steps}"},
    ]


@torch.no_grad()
def forget_share(adapter: Any, case: Case, n: int, steps: int) -> float:
    """Share of ``n`` seeded generations of the forget prompt the judge reads as the forget class."""
    images = adapter.generate(n, [case.prompt] * n, steps=steps, generator=torch.Generator().manual_seed(7))
    return float((case.judge(images.to(adapter.device)).argmax(1).cpu() == case.forget_class).float().mean())


def time_to_erase(case: Case, cfg: UnlearnConfig, options: dict, device, args) -> dict[str, dict]:
    """{impl: {"time_to_erase_s", "erase_iters", "erase_share"}} (module docstring)."""
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


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--models", default="digits,sd", help="comma-separated: digits, sd, tiny (default digits,sd)")
    ap.add_argument("--iters", type=int, default=None,
                    help="timed iterations per implementation (default 20; sd: 3, on CPU rounds of its components)")
    ap.add_argument("--warmup", type=int, default=2, help="discarded rounds")
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
    if device.type == "cpu":
        torch.set_num_threads(args.threads or 1)
    # --smoke: the tiny model through both measurement paths (real iterations, and the sd row's composed one)
    models = ["tiny", "tiny-composed"] if args.smoke else args.models.split(",")
    cfg = run_config()
    options = dict(cfg.options)
    if args.smoke:
        options.update(ddim_steps=10, trajectories=1)
        args.warmup, args.erase_max_iters, args.eval_every, args.eval_n, args.eval_steps = 0, 2, 1, 4, 2
    env = environment(device)
    print(f"{env['device']} | torch {env['torch']} | commit {env['commit']} | ESD {cfg.steps} steps, batch "
          f"{cfg.batch_size}, lr {cfg.lr}, scope {cfg.scope}, options {options}", flush=True)
    rows = []
    for model in models:
        case = build(model.removesuffix("-composed"), device, smoke=args.smoke)
        params = round(sum(p.numel() for p in case.adapter.unet.parameters()) / 1e6, 2)
        if (model == "sd" and device.type == "cpu") or model.endswith("-composed"):
            got = bench_components(case, cfg, options, device, reps=1 if args.smoke else (args.iters or 3))
        else:
            iters = 2 if args.smoke else (args.iters or (3 if model == "sd" else 20))
            got = bench_iterations(case, cfg, options, iters, args.warmup, device)
        erase = time_to_erase(case, cfg, options, device, args) \
            if case.judge is not None and not model.endswith("-composed") else {}
        ref_ms = next(r["per_iter_ms"] for r in got if r["impl"] == "reference")
        for r in got:
            e = erase.get("fastunlearn" if r["impl"].startswith("fastunlearn") else r["impl"], {})
            if r["impl"] == "fastunlearn-fp32" and "fastunlearn" in {g["impl"] for g in got}:
                e = {}  # the erase run uses the device's default path: its row carries the result
            rows.append({**env, "model": model, "weights": case.weights, "params_M": params, "impl": r["impl"],
                         "precision": r["precision"], "batch": r["batch"], "trajectories": options["trajectories"],
                         "ddim_steps": options["ddim_steps"], "timed_iters": r["timed_iters"],
                         "per_iter_ms": round(r["per_iter_ms"], 1),
                         "step_ms": round(r["step_ms"], 1) if r["step_ms"] != "" else "",
                         "bank_s": round(r["bank_s"], 2) if r["bank_s"] != "" else "",
                         "amortised_over": r["amortised_over"], "speedup": round(ref_ms / r["per_iter_ms"], 2),
                         "time_to_erase_s": e.get("time_to_erase_s", ""), "erase_iters": e.get("erase_iters", ""),
                         "erase_share": e.get("erase_share", ""),
                         "note": r["note"] + ("; random weights" if case.weights == "random" else "")})
        del case
    print_table(rows, ["model", "weights", "impl", "precision", "batch", "per_iter_ms", "step_ms", "bank_s",
                       "speedup", "time_to_erase_s", "erase_iters"])
    print("speedup = the reference's per-iteration time ÷ this row's (the library's amortised over its run)")
    if not args.smoke and args.csv:
        append_csv(Path(args.csv), rows)
        print(f"appended {len(rows)} rows to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
