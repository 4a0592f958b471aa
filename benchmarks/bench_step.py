"""EraseDiff outer step: fastunlearn vs the authors' loop, same model, same batch, same machine, same run.

    python benchmarks/bench_step.py                                  # CPU: digits @ 16,64 and cifar10 @ 16
    python benchmarks/bench_step.py --device cuda --models digits,cifar10,sd --batch-sizes 32,64,128,256
    python benchmarks/bench_step.py --smoke                          # tiny model, 1 step, writes nothing

What is timed, per model and per-side batch size B (B forget rows and B retain rows, as the authors' batch
128 "for both sets"):

- ``fastunlearn-fp32`` — the library's step in fp32 without ``torch.compile`` (fused Adam): the SAME precision
  as the references, so its ratios are the algorithm's alone; listed first. On a device whose default already
  is fp32 without compile, that row is ``fastunlearn`` itself and ``fastunlearn-bf16`` follows it.
- ``fastunlearn`` — the library's step as ``fastunlearn run`` runs it on the device, through the registry
  (``fastunlearn.methods.get("erasediff")`` over a :class:`~fastunlearn.models.ddpm.DDPMAdapter` with real
  :class:`~fastunlearn.methods.base.Batch` objects, the run's resolved options, its default EMA, the fused ops
  on the active backend and the engine's fast path for the device, :mod:`fastunlearn.engine.fastpath`: on this
  CPU bf16 autocast + fused Adam; on CUDA bf16 autocast + torch.compile + SDPA/xformers + channels-last + fused
  Adam): one forward+backward per side (≈7 forward-equivalents). Its ratios mix algorithm and precision.
- ``fastunlearn-single-forward`` — the same with ``single_forward=True``: one forward of [forget; retain] and
  two full backwards through the 2B-row graph (≈11 forward-equivalents).
- ``reference-default`` — :class:`reference_erasediff.ReferenceEraseDiffDefault`, **the authors' default path**
  (``--lambda_bome 0.1``), fp32, its outer step amortised over its schedule's inner passes (formula in
  ``reference_erasediff``'s docstring; the ``note`` column gives r for the row); the first reference, whose
  ratio is ``speedup_vs_default``. ``reference-default-outer`` is its outer step alone.
- ``reference-adaptive`` — :class:`reference_erasediff.ReferenceEraseDiffAdaptive`, the authors' adaptive-λ
  branch (K = 2 live inner steps in every outer step, two ``autograd.grad`` with retained graphs, ``torch.cat``
  flattening, a third backward, ``gc.collect()`` after each phase), ≈19 forward-equivalents; its ratio is
  ``speedup_vs_adaptive``. Rows measured before commit c2fbdd9 call it ``reference``.

Each implementation owns a deep copy of the same initial model. Steps are interleaved (one of each per
round) so load from other processes on a shared machine hits all of them alike; the first ``--warmup``
rounds are discarded (on CPU the cifar10/sd warm-up rounds use 2-row batches: they only pay one-time costs).
CPU runs use one torch thread unless ``--threads`` says otherwise (see ``main``). Reported per row: median /
p20 / p80 step time, speed-ups = each reference's median ÷ this median, peak memory of one extra untimed step (CUDA:
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
from reference_erasediff import ReferenceEraseDiffAdaptive, ReferenceEraseDiffDefault, authors_schedule  # noqa: E402

from fastunlearn.config import UnlearnConfig  # noqa: E402
from fastunlearn.engine import FastPath, prepare_model, resolve_fast_path  # noqa: E402
from fastunlearn.engine.loop import _autocast  # noqa: E402
from fastunlearn.methods import base as methods  # noqa: E402

FORGET_CLASS = 0
LR = 1e-4
ETA = 0.5  # the adaptive reference's η (the library's cosine-rule default); the value does not change the cost
#: the forget-set size the authors' schedule is applied to, where it is not the benchmark data's own class-0
#: count: CIFAR-10's data here is a random stand-in; their CIFAR-10 forget set is one class, 5,000 images.
FORGET_SET_SIZE = {"cifar10": 5000}

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
#: ``--smoke``: the cifar10 model's code path (a class-conditional ``UNet2DModel`` with attention) at a tiny size.
TINY_CONFIG = dict(
    sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8, num_class_embeds=11,
)
#: ``--smoke``: the sd model's code path (a cross-attention ``UNet2DConditionModel`` on latents) at a tiny size.
TINY_SD_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
)


# ---------------------------------------------------------------------- models
def _latent_adapter_class():
    from fastunlearn.models.ddpm import DDPMAdapter

    class LatentBenchAdapter(DDPMAdapter):
        """The Adapter contract over a ``UNet2DConditionModel`` for timing only: class c ↦ a fixed random
        77×``cross_attention_dim`` text embedding (the text encoder is frozen in EraseDiff's SD setting and runs
        outside the step). Everything but ``predict`` is :class:`~fastunlearn.models.ddpm.DDPMAdapter`'s own
        (``noised_batch`` with ``rows=``, ``parameters``, ``state_dict``...), so it follows the contract as it
        changes."""

        num_class_embeds, null_label = 10, None  # ten "prompts", no null prompt

        def __init__(self, unet, scheduler, device):  # noqa: D107 — DDPMAdapter.__init__ wants a UNet2DModel
            self.unet, self.scheduler = unet, scheduler
            g = torch.Generator().manual_seed(0)
            self.prompts = torch.randn(self.num_class_embeds, 77, int(unet.config.cross_attention_dim),
                                       generator=g).to(device)
            alphas = scheduler.alphas_cumprod.detach().to(torch.float32)
            self._sqrt_ab, self._sqrt_1mab = alphas.sqrt(), (1.0 - alphas).sqrt()

        def predict(self, x_t, t, labels=None):
            return self.unet(x_t, t, encoder_hidden_states=self.prompts[labels]).sample

    return LatentBenchAdapter


def build(model: str, device: torch.device, smoke: bool = False):
    """(adapter, retained classes, images [N,C,H,W] in [-1,1], labels [N]) for one benchmark model
    (``smoke``: cifar10 and sd through their own code paths at a tiny size; digits is small as it is)."""
    from diffusers import DDPMScheduler, UNet2DConditionModel, UNet2DModel

    from fastunlearn.models.ddpm import DDPMAdapter, load_adapter

    torch.manual_seed(0)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    if model == "digits":
        from fastunlearn.data.digits import load_digits_split

        adapter = load_adapter("zoo:digits-ddpm").to(device)
        data = load_digits_split("train")
        images, labels = data.images, data.labels
    elif model == "cifar10":
        unet = UNet2DModel(**(TINY_CONFIG if smoke else CIFAR10_CONFIG))
        adapter = DDPMAdapter(unet, sched, null_label=10).to(device)
        c, h, w = adapter.image_shape
        images, labels = torch.rand(2048, c, h, w) * 2 - 1, torch.arange(2048) % 10  # random data: timing only
    elif model == "sd":
        unet = UNet2DConditionModel(**(TINY_SD_CONFIG if smoke else SD_CONFIG)).to(device)
        adapter = _latent_adapter_class()(unet, sched, device)
        size = int(unet.config.sample_size)
        images, labels = torch.randn(512, 4, size, size), torch.arange(512) % 10
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
    """The rows, the same-precision comparison first: the library's step in fp32 without torch.compile
    (``fastunlearn-fp32``; on a CPU whose default already is fp32: ``fastunlearn`` itself, and
    ``fastunlearn-bf16`` after it), the device's default fast path (``fastunlearn``), single-forward, then the
    references: the authors' default (amortised, then its bare outer step) and their adaptive branch."""
    default = resolve_fast_path(UnlearnConfig(), device)
    plain = default.precision == "fp32" and not default.compile
    lib = ("fastunlearn", "fastunlearn-bf16") if plain else ("fastunlearn-fp32", "fastunlearn")
    return lib + ("fastunlearn-single-forward", "reference-default", "reference-default-outer", "reference-adaptive")


def fast_path_of(name: str, device: torch.device) -> FastPath:
    """The engine's fast path a row runs: the device default (what ``fastunlearn run`` uses), or for a name
    ending in ``-fp32`` fp32 *without* torch.compile (so on CUDA it separates the algorithm from bf16 and
    compilation; channels-last, fused Adam and SDPA stay as the device default has them), ``-bf16`` bf16."""
    if name.endswith("-fp32"):
        return resolve_fast_path(UnlearnConfig(precision="fp32", compile=False), device)
    precision = "bf16" if name.endswith("-bf16") else "auto"
    return resolve_fast_path(UnlearnConfig(precision=precision), device)


def run_options() -> dict:
    """EraseDiff's options exactly as ``fastunlearn run`` resolves them for the default job."""
    return dict(UnlearnConfig(method="erasediff").resolved().options)


def library_step(adapter, retained, sides: Sides, fast: FastPath, single_forward: bool = False,
                 options: dict | None = None, lr: float = LR):
    """(step(i), method) — the library's EraseDiff step on a deep copy of the model under ``fast`` (``options``:
    EraseDiff options; default: the default job's, as ``fastunlearn run`` resolves them)."""
    a = copy.copy(adapter)
    a.unet = copy.deepcopy(adapter.unet)
    prepare_model(a, a.device, fast)
    m = methods.get("erasediff")()
    options = run_options() if options is None else options
    opts = methods.parse_options("erasediff", {**options, "single_forward": single_forward})
    m.setup(a, methods.MethodConfig(lr=lr, options=opts, forget_classes=(FORGET_CLASS,),
                                    retain_classes=tuple(retained), fused_optimizer=fast.fused_optimizer))

    def run(i):
        fx, fy, rx, ry, gen = sides.draw(i)
        with _autocast(a.device, fast.precision):
            return m.step(methods.Batch(fx, fy, gen), methods.Batch(rx, ry, gen))

    return run, m


def _predict_for(adapter, unet):
    """The reference's forward ``(x_t, t, y) -> ε`` on its own copy ``unet`` of the model."""
    if hasattr(adapter, "prompts"):  # the latent (SD-sized) adapter: class ↦ its prompt embedding
        return lambda x, t, y: unet(x, t, encoder_hidden_states=adapter.prompts[y]).sample
    return None


def _timed(fn, device) -> float:
    return measure(fn, device, reps=1, warmup=0)["median_ms"]


def default_reference(adapter, retained, sides: Sides, model: str):
    """(step(i) -> {"amortised", "outer"} ms, the reference object, its schedule): the authors' default code path.

    Per call i: save θ, ONE inner step (the forget rows of draw i), restore θ, the outer step (draw i), each timed
    on its own; ``amortised = outer + r · inner + (save + restore) / n_outer`` with r and n_outer from
    :func:`reference_erasediff.authors_schedule` for the model's forget-set size at this batch (module docstring
    of ``reference_erasediff``). The model's state evolves as in their loop (Adam's moments advanced by the inner
    step, θ restored), one inner step per outer step instead of r."""
    unet = copy.deepcopy(getattr(adapter.unet, "_orig_mod", adapter.unet))
    n_f = FORGET_SET_SIZE.get(model, len(sides.f_idx))
    ref = ReferenceEraseDiffDefault().setup(unet, adapter.scheduler, retained, batch=sides.batch, lr=LR, lam=0.1,
                                            ema_decay=0.99, predict=_predict_for(adapter, unet))
    dev = ref.device

    def step(i):
        fx, fy, rx, ry, gen = sides.draw(i)
        sched = authors_schedule(n_f, sides.batch)
        t_save = _timed(ref.save_params, dev)
        t_inner = _timed(lambda: ref.inner_step(fx, fy, gen), dev)
        t_restore = _timed(ref.restore_params, dev)
        t_outer = _timed(lambda: ref.outer_step(fx, fy, rx, ry, gen), dev)
        return {"outer": t_outer, "inner": t_inner, "round": t_save + t_restore,
                "amortised": t_outer + sched["inner_per_outer"] * t_inner + (t_save + t_restore) / sched["outer_per_round"]}

    step.composite = True
    step.outer_only = lambda i: ref.outer_step(*sides.draw(i))
    return step, ref, (lambda: authors_schedule(n_f, sides.batch))


def make_impls(adapter, retained, sides: Sides, names=None, options: dict | None = None, model: str = "digits"):
    """({name: step(i)}, {name: method object}) — each implementation on its own deep copy of the model.
    ``reference-default`` is a composite step (see :func:`default_reference`) that also yields the
    ``reference-default-outer`` row."""
    names = default_names(adapter.device) if names is None else names
    impls, objs = {}, {}
    for name in [n for n in names if n.startswith("fastunlearn")]:
        impls[name], objs[name] = library_step(adapter, retained, sides, fast_path_of(name, adapter.device),
                                               single_forward=name.endswith("single-forward"), options=options)
    if "reference-default" in names:
        impls["reference-default"], objs["reference-default"], objs["schedule"] = default_reference(
            adapter, retained, sides, model)
    if "reference-adaptive" in names:
        ref_unet = copy.deepcopy(getattr(adapter.unet, "_orig_mod", adapter.unet))
        ref = ReferenceEraseDiffAdaptive().setup(ref_unet, adapter.scheduler, retained, lr=LR, eta=ETA, ema_decay=0.99,
                                                 predict=_predict_for(adapter, ref_unet))
        impls["reference-adaptive"], objs["reference-adaptive"] = (lambda i: ref.step(*sides.draw(i))), ref
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
def _note(name: str, device: torch.device, sched: dict | None) -> str:
    if name == "reference-default":
        return (f"fp32; amortised: outer + {sched['inner_per_outer']:.2f} x inner + (save+restore)/{sched['outer_per_round']}"
                f" (n_f {sched['n_forget']}: {sched['inner_steps_per_round']} inner / {sched['outer_per_round']} outer per round)")
    if name == "reference-default-outer":
        return "fp32; the outer step alone (no share of the inner passes)"
    if name == "reference-adaptive":
        return "fp32; adaptive-lambda branch, K=2 inner steps in every outer step"
    if name == "default":
        return "the device's default fast path"
    fast = fast_path_of(name, device) if name.startswith("fastunlearn") else None
    if fast is None:
        return ""
    parts = [fast.precision + (" autocast" if fast.precision == "bf16" else "")]
    parts += ["compile" if fast.compile else "no compile"] + (["channels-last"] if fast.channels_last else []) \
        + (["fused Adam"] if fast.fused_optimizer else [])
    return ", ".join(parts) + ("; one forward of [forget; retain]" if name.endswith("single-forward") else "")


def bench_case(model, batch, adapter, retained, images, labels, device, steps, warmup, profile_ops=True,
               impls=None, names=None):
    sides = Sides(images, labels, batch)
    objs = {}
    if impls is None:
        impls, objs = make_impls(adapter, retained, sides, names=names, model=model)
    else:
        impls = {name: make(sides) for name, make in impls.items()}
    names = []
    for n, fn in impls.items():
        names += [n, n + "-outer"] if getattr(fn, "composite", False) else [n]
    times = {n: [] for n in names}
    # Warm-up rounds exist to pay one-time costs (Adam state, lazy inits, the extension load); on CPU the big
    # models pay them on a 2-row batch, since a full-size warm-up round of the reference costs minutes there.
    small_warmup = device.type == "cpu" and model in ("cifar10", "sd") and steps > 1
    i = 0
    for r in range(warmup + steps):
        sides.batch = min(batch, 2) if (r < warmup and small_warmup) else batch
        for name, fn in impls.items():  # interleaved rounds: shared-machine load hits every impl alike
            if getattr(fn, "composite", False):
                parts = fn(i)
                got = {name: parts["amortised"], name + "-outer": parts["outer"]}
                extra = f" (outer {parts['outer'] / 1e3:.2f} s, inner {parts['inner'] / 1e3:.2f} s)"
            else:
                got, extra = {name: measure(lambda: fn(i), device, reps=1, warmup=0)["median_ms"]}, ""
            for n, t in got.items():
                if r >= warmup:
                    times[n].append(t)
            print(f"  {model} B={sides.batch} round {r + 1}/{warmup + steps} {name}: {got[name] / 1e3:.2f} s{extra}", flush=True)
        i += 1
    sides.batch = batch
    sched = objs["schedule"]() if "schedule" in objs else None
    if sched:
        import gc

        t_gc = _timed(gc.collect, device)
        print(f"  {model} B={batch}: one gc.collect() here (the references call it after every step): {t_gc:.0f} ms "
              f"over {len(gc.get_objects())} tracked objects", flush=True)
        print(f"  {model} B={batch}: the authors' schedule for n_f={sched['n_forget']}: {sched['inner_steps_per_round']} "
              f"inner steps ({sched['inner_full_per_round']:.2f} full-batch) and {sched['outer_per_round']} outer steps per "
              f"round -> amortised outer step = outer + {sched['inner_per_outer']:.3f} x inner + "
              f"(save+restore)/{sched['outer_per_round']}", flush=True)
    rows = []
    for name in names:
        fn = impls.get(name) or impls[name[:-len("-outer")]].outer_only
        # One extra untimed step per impl: the memory probe, and for the fastunlearn rows the profiler too
        # (op-level recording barely moves the peak; sharing the step saves a full step of the big models).
        share = None
        if profile_ops and name.startswith("fastunlearn"):
            out = {}
            mem = peak_memory_mb(lambda: out.setdefault("share", fused_share(lambda: fn(i), device)), device)
            share = out["share"]
        else:
            mem = peak_memory_mb(lambda: fn(i), device)
        ts = sorted(times[name])
        q = statistics.quantiles(ts, n=5) if len(ts) >= 2 else [ts[0]] * 4
        fast = fast_path_of(name, device) if name.startswith("fastunlearn") else None
        rows.append({"model": model, "params_M": round(sum(p.numel() for p in adapter.unet.parameters()) / 1e6, 2),
                     "impl": name, "precision": fast.precision if fast else ("fp32" if name.startswith("reference") else ""),
                     "batch": batch, "steps": len(ts), "median_ms": round(statistics.median(ts), 1),
                     "p20_ms": round(q[0], 1), "p80_ms": round(q[3], 1), "peak_mem_MB": round(mem, 1),
                     "fused_ops_pct": "" if share is None else round(share, 2)})
    if "default" in impls:  # --ablation: the ratio is the default fast path's median ÷ this variant's
        base = next(r for r in rows if r["impl"] == "default")["median_ms"]
        for r in rows:
            del r["precision"]
            r["speedup_vs_ref"] = round(base / r["median_ms"], 2)
        return rows
    medians = {r["impl"]: r["median_ms"] for r in rows}
    for r in rows:
        for col, ref in (("speedup_vs_default", "reference-default"), ("speedup_vs_adaptive", "reference-adaptive")):
            r[col] = round(medians[ref] / r["median_ms"], 2) if ref in medians else ""
        r["note"] = _note(r["impl"], device, sched)
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
        for impl, style in (("reference-default", "o-"), ("reference-default-outer", "o:"), ("reference-adaptive", "o--"),
                            ("fastunlearn-fp32", "s-"), ("fastunlearn", "s:"), ("fastunlearn-bf16", "s:"),
                            ("fastunlearn-single-forward", "^--")):
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
    ap.add_argument("--impls", default=None,
                    help="comma-separated subset of the rows (default all: " + ",".join(default_names(torch.device("cpu")))
                         + "; reference-default also gives reference-default-outer)")
    ap.add_argument("--smoke", action="store_true",
                    help="every model's code path at a tiny size (digits as it is; cifar10 and sd shrunk, sd on CPU "
                         "too), batch 2, 1 step, nothing written")
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
    if cpu and "sd" in models and not args.smoke:
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
        models = args.models.split(",") if args.models else ["digits", "cifar10", "sd"]
        per_model, warmup = {m: [2] for m in models}, 0

    names = default_names(device)
    if args.impls:
        unknown = set(args.impls.split(",")) - set(names)
        if unknown:
            ap.error(f"--impls: unknown rows {sorted(unknown)} for this device; known: {', '.join(names)}")
        names = tuple(n for n in names if n in args.impls.split(","))
    env = environment(device)
    print(f"{env['device']} | torch {env['torch']} | commit {env['commit']} | "
          f"fast path {resolve_fast_path(UnlearnConfig(), device).as_dict()}", flush=True)
    rows = []
    for model in models:
        adapter, retained, images, labels = build(model, device, smoke=args.smoke)
        for batch in per_model[model]:
            steps = 1 if args.smoke else (args.steps or steps_default[model])
            impls = ablation_impls(adapter, retained, device, args.smoke) if args.ablation else None
            for r in bench_case(model, batch, adapter, retained, images, labels, device, steps, warmup,
                                profile_ops=not args.ablation, impls=impls, names=names):
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
    cols = ["model", "params_M", "batch", "impl", "precision", "steps", "median_ms", "p20_ms", "p80_ms",
            "speedup_vs_default", "speedup_vs_adaptive", "peak_mem_MB", "fused_ops_pct"]
    print_table(rows, cols)
    print("speedup_vs_default = reference-default's amortised median ÷ this median (the authors' default code path, "
          "fp32: compare the fp32 rows for the algorithm alone); speedup_vs_adaptive = reference-adaptive's ÷ this")
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
