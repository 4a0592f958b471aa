"""EraseDiff outer step: fastunlearn vs the authors' loop, same model, same batch, same machine, same run.

    python benchmarks/bench_step.py                                  # CPU: digits @ 16,64 and cifar10 @ 16
    python benchmarks/bench_step.py --device cuda --models digits,cifar10,sd --batch-sizes 32,64,128,256
    python benchmarks/bench_step.py --smoke                          # tiny model, 1 step, writes nothing

What is timed, per model and per-side batch size B (B forget rows and B retain rows, as the authors' batch
128 "for both sets"):

- ``fastunlearn`` — the library's step, through the registry: ``fastunlearn.methods.get("erasediff")`` over a
  :class:`~fastunlearn.models.ddpm.DDPMAdapter` with real :class:`~fastunlearn.methods.base.Batch` objects,
  ``lambda_rule=cosine`` (the rule the reference implements; the rule does not change the cost), its
  default EMA, the fused ops on the active backend, and the engine's fast path as ``fastunlearn run`` resolves
  it for the device (:mod:`fastunlearn.engine.fastpath`: CPU fp32 + fused Adam; CUDA bf16 autocast +
  torch.compile + SDPA/xformers + channels-last + fused Adam): one forward+backward per side (≈7
  forward-equivalents: target fwd 1 + 3 + 3).
- ``fastunlearn-fp32`` / ``fastunlearn-bf16`` (CPU only) — the same step in the precision the device's default
  is not (the default is bf16 autocast on a CPU with native bf16, fp32 elsewhere; the reference is fp32).
  Rows measured at commit 616ec2e name the fp32 default ``fastunlearn`` and the opt-in bf16 ``fastunlearn-bf16``.
- ``fastunlearn-single-forward`` — the same step with ``single_forward=True``: one forward of [forget; retain]
  and two full backwards through the 2B-row graph (≈11 forward-equivalents: 1 + 2 + 4 + 4).
  Rows measured before commit "erasediff: two passes by default" name these two differently: there
  ``fastunlearn`` is the single-forward step (then the default) and ``fastunlearn-2pass`` the two-pass one.
- ``reference`` — :class:`reference_erasediff.ReferenceEraseDiff`, the authors' outer step (K = 2 inner forget
  steps on the live optimizer, separate forwards, two ``autograd.grad`` with retained graphs, ``torch.cat``
  flattening, a third backward, ``gc.collect()`` after each phase), ≈19 forward-equivalents.

Each implementation owns a deep copy of the same initial model. Steps are interleaved (one of each per
round) so load from other processes on a shared machine hits all of them alike; the first ``--warmup``
rounds are discarded (on CPU the cifar10/sd warm-up rounds use 2-row batches: they only pay one-time costs).
CPU runs use one torch thread unless ``--threads`` says otherwise (see ``main``). Reported per row: median /
p20 / p80 step time, speed-up = reference median ÷ this median, peak memory of one extra untimed step (CUDA:
``max_memory_allocated``; CPU: peak RSS growth above the RSS before the step, sampled every 2 ms by a thread,
with glibc set to return freed memory), and for the fastunlearn rows the share of that step (profiled)
spent inside the fused ops — the ``fastunlearn::`` operators in ``torch.profiler``'s key averages, their
total time ÷ the step's wall time.

``--ablation`` instead times the library step with each fast-path switch flipped from the device's default
(one row per switch, ratio vs the default) and appends them to ``benchmarks/results/fastpath.csv``.

What each step does to the model (forget/retain accuracy after the same outer steps) is
``benchmarks/bench_forgetting.py``'s measurement.

Models: ``digits`` — the shipped ``zoo:digits-ddpm`` (≈1M params, 16×16); ``cifar10`` — a random-init
``UNet2DModel`` with ``google/ddpm-cifar10-32``'s configuration (35.7M params, 32×32, channels
(128, 256, 256, 256), 2 layers per block, attention at 16×16) plus ``num_class_embeds=11`` (10 classes + null);
``sd`` (CUDA only) — an SD-1.x-sized ``UNet2DConditionModel`` (≈860M) on 4×64×64 latents with fixed random
77×768 "prompt" embeddings per class, through a small adapter defined here.
Rows are appended to ``benchmarks/results/step.csv``; ``benchmarks/results/step.png`` plots step time vs
batch size from the CSV rows the README table shows for this device (per model, its newest commit's rows —
so ``--models`` runs split across processes fill one figure).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, append_csv, environment, measure, print_table  # noqa: E402
from reference_erasediff import ReferenceEraseDiff  # noqa: E402

from fastunlearn.config import UnlearnConfig  # noqa: E402
from fastunlearn.engine import FastPath, prepare_model, resolve_fast_path  # noqa: E402
from fastunlearn.engine.loop import _autocast  # noqa: E402
from fastunlearn.methods import base as methods  # noqa: E402

FORGET_CLASS = 0
LR = 1e-4
ETA = 0.5  # the library's cosine-rule default (EraseDiff.defaults); the value does not change the cost

#: google/ddpm-cifar10-32's unet/config.json (diffusers), with a class embedding added.
CIFAR10_CONFIG = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=32, norm_eps=1e-6, act_fn="silu", downsample_padding=0, flip_sin_to_cos=False,
    freq_shift=1, center_input_sample=False, time_embedding_type="positional", attention_head_dim=None,
    num_class_embeds=11,
)
#: Stable Diffusion 1.x's UNet (CompVis/stable-diffusion-v1-4 unet/config.json).
SD_CONFIG = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32,
)
TINY_CONFIG = dict(
    sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8, num_class_embeds=11,
)


# ---------------------------------------------------------------------- models
class LatentBenchAdapter:
    """The Adapter contract over a ``UNet2DConditionModel`` for timing only: class c ↦ a fixed random
    77×768 text embedding (the text encoder is frozen in EraseDiff's SD setting and runs outside the step)."""

    conditional, null_label, num_classes = True, None, 10

    def __init__(self, unet, scheduler, device):
        self.unet, self.scheduler = unet, scheduler
        g = torch.Generator().manual_seed(0)
        self.prompts = torch.randn(self.num_classes, 77, 768, generator=g).to(device)
        self._ab = scheduler.alphas_cumprod.to(device, torch.float32)

    @property
    def device(self):
        return next(self.unet.parameters()).device

    def parameters(self, scope="all"):
        return list(self.unet.parameters())

    def noised_batch(self, x0, labels, generator, noise=None):
        from fastunlearn.models.ddpm import NoisedBatch

        n, dev = x0.shape[0], self.device
        t = torch.randint(0, 1000, (n,), generator=generator).to(dev)
        noise = (noise if noise is not None else torch.randn(x0.shape, generator=generator)).to(dev)
        a = self._ab[t].view(n, 1, 1, 1)
        return NoisedBatch(a.sqrt() * x0.to(dev) + (1 - a).sqrt() * noise, t, noise, labels.to(dev))

    def predict(self, x_t, t, labels=None):
        return self.unet(x_t, t, encoder_hidden_states=self.prompts[labels]).sample


def build(model: str, device: torch.device):
    """(adapter, retained classes, images [N,C,H,W] in [-1,1], labels [N]) for one benchmark model."""
    from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel

    from fastunlearn.models.ddpm import DDPMAdapter, load_adapter

    torch.manual_seed(0)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    if model == "digits":
        from fastunlearn.data.digits import load_digits_split

        adapter = load_adapter("zoo:digits-ddpm").to(device)
        data = load_digits_split("train")
        images, labels = data.images, data.labels
    elif model in ("cifar10", "tiny"):
        unet = UNet2DModel(**(CIFAR10_CONFIG if model == "cifar10" else TINY_CONFIG))
        adapter = DDPMAdapter(unet, sched, null_label=10).to(device)
        c, h, w = adapter.image_shape
        images, labels = torch.rand(2048, c, h, w) * 2 - 1, torch.arange(2048) % 10  # random data: timing only
    elif model == "sd":
        unet = UNet2DConditionModel(**SD_CONFIG).to(device)
        adapter = LatentBenchAdapter(unet, sched, device)
        images, labels = torch.randn(512, 4, 64, 64), torch.arange(512) % 10
    else:
        raise SystemExit(f"unknown model {model!r}; expected digits, cifar10, sd")
    adapter.unet.train()
    retained = [c for c in range(adapter.num_classes) if c != FORGET_CLASS]
    return adapter, retained, images, labels


# ---------------------------------------------------------------------- implementations under test
class Sides:
    """Draws the forget rows (class 0) and the retain rows (other classes) of step i, the same for every impl."""

    def __init__(self, images, labels, batch, seed: int = 0):
        self.seed = seed
        self.f_idx = (labels == FORGET_CLASS).nonzero().flatten()
        self.r_idx = (labels != FORGET_CLASS).nonzero().flatten()
        self.images, self.labels, self.batch = images, labels, batch

    def draw(self, i: int):
        g = torch.Generator().manual_seed(1000 + i + 10**6 * self.seed)
        fi = self.f_idx[torch.randint(0, len(self.f_idx), (self.batch,), generator=g)]
        ri = self.r_idx[torch.randint(0, len(self.r_idx), (self.batch,), generator=g)]
        return (self.images[fi], self.labels[fi], self.images[ri], self.labels[ri],
                torch.Generator().manual_seed(2000 + i + 10**6 * self.seed))


def default_names(device: torch.device) -> tuple[str, ...]:
    """The rows: the library's default step, on CPU the same in the other precision, single-forward, reference."""
    names = ("fastunlearn", "fastunlearn-single-forward", "reference")
    if device.type != "cpu":
        return names
    other = "fp32" if resolve_fast_path(UnlearnConfig(), device).precision == "bf16" else "bf16"
    return names[:1] + (f"fastunlearn-{other}",) + names[1:]


def fast_path_of(name: str, device: torch.device) -> FastPath:
    """The engine's fast path a row runs: the device default (what ``fastunlearn run`` uses), or the
    precision its name ends with."""
    precision = name.rsplit("-", 1)[-1] if name.endswith(("-bf16", "-fp32")) else "auto"
    return resolve_fast_path(UnlearnConfig(precision=precision), device)


def library_step(adapter, retained, sides: Sides, fast: FastPath, single_forward: bool = False,
                 options: dict | None = None, lr: float = LR):
    """(step(i), method) — the library's EraseDiff step on a deep copy of the model under ``fast`` (``options``:
    EraseDiff options; default the cosine rule at η 0.5, the rule the reference implements)."""
    a = copy.copy(adapter)
    a.unet = copy.deepcopy(adapter.unet)
    prepare_model(a, a.device, fast)
    m = methods.get("erasediff")()
    options = {"lambda_rule": "cosine", "eta": ETA} if options is None else options
    opts = methods.parse_options("erasediff", {**options, "single_forward": single_forward})
    m.setup(a, methods.MethodConfig(lr=lr, options=opts, forget_classes=(FORGET_CLASS,),
                                    retain_classes=tuple(retained), fused_optimizer=fast.fused_optimizer))

    def run(i):
        fx, fy, rx, ry, gen = sides.draw(i)
        with _autocast(a.device, fast.precision):
            return m.step(methods.Batch(fx, fy, gen), methods.Batch(rx, ry, gen))

    return run, m


def make_impls(adapter, retained, sides: Sides, names=("fastunlearn", "fastunlearn-single-forward", "reference"),
               options: dict | None = None):
    """({name: step(i)}, {name: method object}) — each implementation on its own deep copy of the model."""
    impls, objs = {}, {}
    for name in [n for n in names if n.startswith("fastunlearn")]:
        impls[name], objs[name] = library_step(adapter, retained, sides, fast_path_of(name, adapter.device),
                                               single_forward=name.endswith("single-forward"), options=options)
    if "reference" not in names:
        return impls, objs
    ref_unet = copy.deepcopy(adapter.unet)
    ref = ReferenceEraseDiff().setup(
        ref_unet, adapter.scheduler, retained, lr=LR, eta=ETA, ema_decay=methods.parse_options("erasediff", {}).ema_decay,
        predict=(None if not isinstance(adapter, LatentBenchAdapter)
                 else lambda x, t, y: ref_unet(x, t, encoder_hidden_states=adapter.prompts[y]).sample))
    impls["reference"], objs["reference"] = (lambda i: ref.step(*sides.draw(i))), ref
    return impls, objs


# ---------------------------------------------------------------------- memory and profile
class PeakRSS:
    """Peak resident-set growth (MB) while the context is open, sampled by a thread every 2 ms."""

    def __enter__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self._rss()
        self.peak, self._stop = self.start, threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def _poll(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._rss())
        self.mb = (self.peak - self.start) / 2**20


def peak_memory_mb(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    _libc_exact_rss()
    with PeakRSS() as p:
        fn()
    return p.mb


def _libc_exact_rss() -> None:
    """Make RSS track live memory: glibc otherwise keeps freed heap (and raises its mmap threshold after frees),
    so a warmed-up step shows ~0 growth. A fixed 64 KiB mmap threshold (every tensor buffer is mmapped and
    unmapped on free) plus ``malloc_trim(0)`` before the step. Called only after the timed rounds."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def fused_share(fn, device) -> float:
    """% of one profiled step's wall time inside ``fastunlearn::`` operators (profiler key averages)."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall_us = (time.perf_counter() - t0) * 1e6
    ours = [e for e in prof.key_averages() if e.key.startswith("fastunlearn::")]
    if device.type == "cuda":
        # Kernel time on the device vs the device's busy time over the step.
        total = sum(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0)) for e in prof.key_averages())
        mine = sum(getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0)) for e in ours)
        return 100.0 * mine / total if total else 0.0
    return 100.0 * sum(e.cpu_time_total for e in ours) / wall_us


# ---------------------------------------------------------------------- main
def bench_case(model, batch, adapter, retained, images, labels, device, steps, warmup, profile_ops=True,
               impls=None):
    sides = Sides(images, labels, batch)
    if impls is None:
        impls, _ = make_impls(adapter, retained, sides, names=default_names(device))
    else:
        impls = {name: make(sides) for name, make in impls.items()}
    times = {n: [] for n in impls}
    # Warm-up rounds exist to pay one-time costs (Adam state, lazy inits, the extension load); on CPU the big
    # models pay them on a 2-row batch, since a full-size warm-up round of the reference costs minutes there.
    small_warmup = device.type == "cpu" and model in ("cifar10", "sd")
    i = 0
    for r in range(warmup + steps):
        sides.batch = min(batch, 2) if (r < warmup and small_warmup) else batch
        for name, fn in impls.items():  # interleaved rounds: shared-machine load hits every impl alike
            t = measure(lambda: fn(i), device, reps=1, warmup=0)["median_ms"]
            if r >= warmup:
                times[name].append(t)
            print(f"  {model} B={sides.batch} round {r + 1}/{warmup + steps} {name}: {t / 1e3:.2f} s", flush=True)
        i += 1
    sides.batch = batch
    rows = []
    for name, fn in impls.items():
        # One extra untimed step per impl: the memory probe, and for the fastunlearn rows the profiler too
        # (op-level recording barely moves the peak; sharing the step saves a full step of the big models).
        share = None
        if profile_ops and name != "reference":
            out = {}
            mem = peak_memory_mb(lambda: out.setdefault("share", fused_share(lambda: fn(i), device)), device)
            share = out["share"]
        else:
            mem = peak_memory_mb(lambda: fn(i), device)
        ts = sorted(times[name])
        q = statistics.quantiles(ts, n=5) if len(ts) >= 2 else [ts[0]] * 4
        rows.append({"model": model, "params_M": round(sum(p.numel() for p in adapter.unet.parameters()) / 1e6, 2),
                     "impl": name, "batch": batch, "steps": len(ts), "median_ms": round(statistics.median(ts), 1),
                     "p20_ms": round(q[0], 1), "p80_ms": round(q[3], 1), "peak_mem_MB": round(mem, 1),
                     "fused_ops_pct": "" if share is None else round(share, 2)})
    base = next(r for r in rows if r["impl"] in ("reference", "default"))["median_ms"]
    for r in rows:
        r["speedup_vs_ref"] = round(base / r["median_ms"], 2)
    return rows


def ablation_impls(adapter, retained, device, smoke: bool = False):
    """{name: make(sides)}: the device's default fast path and, per switch, the default with it flipped
    (``smoke``: without the compile variant, whose compilation alone takes minutes on a CPU)."""
    default = resolve_fast_path(UnlearnConfig(), device)
    variants = {"default": default,
                f"precision={'fp32' if default.precision == 'bf16' else 'bf16'}":
                    dataclasses.replace(default, precision="fp32" if default.precision == "bf16" else "bf16"),
                f"compile={not default.compile}": dataclasses.replace(default, compile=not default.compile),
                f"channels_last={not default.channels_last}":
                    dataclasses.replace(default, channels_last=not default.channels_last),
                f"fused_optimizer={not default.fused_optimizer}":
                    dataclasses.replace(default, fused_optimizer=not default.fused_optimizer),
                "attention=eager": dataclasses.replace(default, attention="eager")}
    if smoke:
        variants = {k: v for k, v in variants.items() if not k.startswith("compile")}
    return {name: (lambda sides, f=f: library_step(adapter, retained, sides, f)[0]) for name, f in variants.items()}


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 4), squeeze=False)
    for ax, model in zip(axes[0], models):
        for impl, style in (("reference", "o-"), ("fastunlearn", "s-"), ("fastunlearn-bf16", "s:"), ("fastunlearn-fp32", "s:"),
                            ("fastunlearn-single-forward", "^--"), ("fastunlearn-2pass", "^--")):
            pts = sorted((r["batch"], r["median_ms"] / 1e3) for r in rows if r["model"] == model and r["impl"] == impl)
            if pts:
                ax.plot(*zip(*pts), style, label=impl)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size per side (forget = retain)")
        ax.set_ylabel("median outer-step time (s)")
        p = next(r["params_M"] for r in rows if r["model"] == model)
        ax.set_title(f"{model} ({p}M params)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    env = rows[0]
    commits = ", ".join(sorted({str(r["commit"]) for r in rows}))
    fig.suptitle(f"EraseDiff outer step — {env['device']} — torch {env['torch']} — commit {commits}", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--models", default=None, help="comma-separated: digits,cifar10,sd (default: digits,cifar10; +sd on CUDA)")
    ap.add_argument("--batch-sizes", default=None,
                    help="per-side batch sizes, 'all' models or model:b1/b2,... (CPU default digits:16/64,cifar10:16; "
                         "CUDA default 32/64/128/256, sd:4/8/16)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per case (CPU default: digits 10, cifar10 5; CUDA 20)")
    ap.add_argument("--warmup", type=int, default=None, help="discarded rounds per case (CPU default 1, CUDA 3)")
    ap.add_argument("--csv", default=str(RESULTS / "step.csv"), help="CSV to append rows to ('' to skip)")
    ap.add_argument("--png", default=str(RESULTS / "step.png"), help="plot to write ('' to skip)")
    ap.add_argument("--threads", type=int, default=None, help="CPU: torch threads (default 1, see main())")
    ap.add_argument("--ablation", action="store_true",
                    help="time the library step with each fast-path switch flipped from the device default "
                         "(rows appended to benchmarks/results/fastpath.csv)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, batch 2, 1 step, nothing written")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    cpu = device.type == "cpu"
    if cpu:
        # One thread by default: on a machine shared with other jobs, OpenMP's worker threads are descheduled
        # mid-barrier and a 2-thread step measured here swung from 2 s to 37 s between rounds; one thread
        # per process gives stable medians (and matches the issue's "one core" figures).
        torch.set_num_threads(args.threads or 1)
    models = (args.models or ("digits,cifar10" if cpu else "digits,cifar10,sd")).split(",")
    if cpu and "sd" in models:
        print("skipping sd: the SD-1.x-sized UNet is benchmarked on CUDA only")
        models = [m for m in models if m != "sd"]
    per_model = {"digits": [16, 64], "cifar10": [16], "sd": [4, 8, 16]} if cpu else \
        {"digits": [32, 64, 128, 256], "cifar10": [32, 64, 128, 256], "sd": [4, 8, 16]}
    if args.batch_sizes:
        for part in args.batch_sizes.split(","):
            if ":" in part:
                m, bs = part.split(":")
                per_model[m] = [int(b) for b in bs.split("/")]
            else:
                per_model = {m: [int(b) for b in part.split("/")] for m in per_model}
    steps_default = {"digits": 10, "cifar10": 5, "sd": 5} if cpu else {"digits": 20, "cifar10": 20, "sd": 10}
    warmup = args.warmup if args.warmup is not None else (1 if cpu else 3)
    if args.smoke:
        models, per_model, warmup = ["tiny"], {"tiny": [2]}, 0

    env = environment(device)
    print(f"{env['device']} | torch {env['torch']} | commit {env['commit']} | "
          f"fast path {resolve_fast_path(UnlearnConfig(), device).as_dict()}", flush=True)
    rows = []
    for model in models:
        adapter, retained, images, labels = build(model, device)
        for batch in per_model[model]:
            steps = 1 if args.smoke else (args.steps or steps_default[model])
            impls = ablation_impls(adapter, retained, device, args.smoke) if args.ablation else None
            for r in bench_case(model, batch, adapter, retained, images, labels, device, steps, warmup,
                                profile_ops=not args.ablation, impls=impls):
                rows.append({**env, **r})
        del adapter
    if args.ablation:
        cols = ["model", "params_M", "batch", "impl", "steps", "median_ms", "p20_ms", "p80_ms", "speedup_vs_ref"]
        print_table(rows, cols)
        print("speedup_vs_ref here = the default's median ÷ this variant's (> 1: the flipped switch is faster)")
        if not args.smoke and args.csv:
            path = Path(args.csv).with_name("fastpath.csv")
            append_csv(path, rows)
            print(f"appended {len(rows)} rows to {path}")
        return 0
    cols = ["model", "params_M", "batch", "impl", "steps", "median_ms", "p20_ms", "p80_ms", "speedup_vs_ref",
            "peak_mem_MB", "fused_ops_pct"]
    print_table(rows, cols)
    if not args.smoke:
        if args.csv:
            append_csv(Path(args.csv), rows)
            print(f"appended {len(rows)} rows to {args.csv}")
        if args.png:
            # Plot every row of this commit (separate --models runs of one commit fill one figure), the
            # latest per (model, impl, batch).
            if args.csv and Path(args.csv).exists():
                import csv

                from readme_tables import _latest_commit_rows

                with open(args.csv) as fh:  # the rows the README table shows, for this device
                    rows = [r for r in _latest_commit_rows(list(csv.DictReader(fh)), ("model", "impl", "batch"))
                            if r["device"] == env["device"]]
                for r in rows:
                    r["batch"], r["median_ms"] = int(r["batch"]), float(r["median_ms"])
            plot(rows, Path(args.png))
            print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
