"""The training loop: device, precision, compile, deterministic batches, progress, logs, checkpoints, resume.

Determinism: step s draws its forget and retain batch indices — and the method draws its timesteps, noise
and pseudo-labels — from one CPU generator seeded by :func:`step_seed` (seed, s), so the step number is the
whole sampler position. Nothing else carries over from step to step but the model, the method's state
(optimizer moments and step counts, EMA, SalUn's mask) and the loop's own (metric sums since the last log
line, the non-finite guard's counters); a checkpoint holds them all with every global RNG state (Python,
NumPy, torch CPU and CUDA), so a run resumed from the checkpoint of step k — after a crash or a SIGKILL at
any point — is bitwise the uninterrupted run, log included, on the same device and thread count.

Host syncs: the method returns device tensors; the loop adds them to device-side sums and reads them only
every ``log_every`` steps (progress bar and JSONL line), so a CUDA step never waits on the host.

Many processes (:mod:`fastunlearn.engine.distributed`): every process draws the same global batch from the
step's generator and computes its ``rows`` of it; metrics are averaged over processes at the log reads; only
process 0 writes the log, the checkpoints and the progress bar. Every process resumes from the same
checkpoint (the output must be on a filesystem they all see). Under FSDP a checkpoint holds full tensors
(gathered from the shards), so a sharded run resumes on any number of processes, sharded or not.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from fastunlearn.engine import checkpoint as ckpt
from fastunlearn.engine.distributed import Distributed, unshard_state
from fastunlearn.errors import NumericalError, OutOfMemoryError, UserInputError
from fastunlearn.methods.base import Batch



@dataclass
class SampleSet:
    """Clean samples the loop draws batches from (already checked against the model by the API)."""

    images: torch.Tensor  #: ``[N, C, H, W]`` in [-1, 1], on the CPU
    labels: torch.Tensor  #: ``[N]`` int64

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class LoopSettings:
    """How the loop runs (everything that is not the method)."""

    steps: int
    batch_size: int  #: rows per side: the step sees ``batch_size`` forget + ``batch_size`` retain rows
    seed: int = 0
    precision: str = "fp32"
    checkpoint_every: int = 0  #: 0 disables checkpoints
    keep_checkpoints: int = 2
    log_every: int = 10
    progress: bool = True
    resume: bool = False
    #: abort after this many consecutive steps skipped for a non-finite gradient (read every ``log_every``)
    max_skipped_steps: int = 10
    #: Training-relevant settings stored in checkpoints; resume refuses a checkpoint whose fingerprint differs.
    fingerprint: dict[str, Any] = field(default_factory=dict)


@dataclass
class LoopResult:
    steps: int  #: the step count reached
    resumed_from: int  #: the checkpoint step resumed from (0 for a fresh run)
    wall_s: float  #: wall time of this invocation's steps
    last_metrics: dict[str, float]
    skipped_steps: int = 0  #: steps of this invocation skipped for a non-finite gradient


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else is passed to ``torch.device`` (a ``cuda:N``
    must be a visible GPU).

    This is the requested device; under ``torchrun`` each process then takes ``cuda:LOCAL_RANK`` for ``cuda``
    or ``auto`` and refuses an explicit ``cuda:N`` (:meth:`fastunlearn.engine.distributed.Distributed.device_for`).
    """
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserInputError(f"unknown device {device!r}; use auto, cpu or cuda[:N]") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"device {device!r} was asked for but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserInputError(f"device {device!r} was asked for but {torch.cuda.device_count()} CUDA device(s) "
                             f"are visible (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return dev


#: Below this many parameters a CPU step is a few milliseconds of work per op, and intra-op threads
#: mostly spin and wait on each other: measured on the 1.1M-parameter digits DDPM on a shared 2-core
#: machine, one thread ran an EraseDiff step 3x faster than two.
SMALL_MODEL_PARAMS = 10_000_000


def cpu_threads(adapter: Any, device: torch.device, threads: int | None) -> int | None:
    """The CPU thread count a run should use: ``threads`` if given; else 1 for a small model on the CPU;
    else None (leave torch's default)."""
    if threads is not None:
        return threads
    if device.type == "cpu" and sum(p.numel() for p in adapter.network.parameters()) < SMALL_MODEL_PARAMS:
        return 1
    return None


@contextlib.contextmanager
def cpu_threads_for(adapter: Any, device: torch.device, threads: int | None = None):
    """Run the block with :func:`cpu_threads`' count set (when it names one), then give the process-global thread
    count back."""
    before = torch.get_num_threads()
    count = cpu_threads(adapter, device, threads)
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def step_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s generator: a fixed mix of (seed, step) in [0, 2⁶³)."""
    return (int(seed) * 0x9E3779B97F4A7C15 + int(step) * 0xBF58476D1CE4E5B9 + 1) % (1 << 63)


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    raise UserInputError(f"unknown precision {precision!r}; expected fp32 or bf16")


def _batch(data: SampleSet, n: int, generator: torch.Generator, rows: slice = slice(None)) -> Batch:
    """The step's global batch of ``n`` rows (drawn in full whatever ``rows`` this process computes)."""
    idx = torch.randint(0, len(data), (n,), generator=generator)
    return Batch(images=data.images[idx], labels=data.labels[idx], generator=generator, rows=rows)


#: torch.OutOfMemoryError (torch ≥ 2.5) or its older CUDA-only name.
_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _model_size(adapter: Any) -> str:
    n = sum(p.numel() for p in adapter.network.parameters())
    return f"{n / 1e6:.1f}M parameters"


def _out_of_memory(adapter: Any, settings: LoopSettings, exc: BaseException) -> OutOfMemoryError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return OutOfMemoryError(
        f"out of memory on {adapter.device} at batch size {settings.batch_size} per side "
        f"({2 * settings.batch_size} rows a step) with a {_model_size(adapter)} model ({first}). "
        "Try a smaller --batch-size, --grad-checkpointing, --precision bf16, or more GPUs (torchrun)."
    )


def check_finite_weights(adapter: Any) -> None:
    """Raise :class:`NumericalError` naming the first parameter holding a NaN/Inf (never save such weights)."""
    from fastunlearn.models.safe_loading import first_non_finite

    found = first_non_finite(adapter.network)
    if found is not None:
        raise NumericalError(f"the weights became non-finite ({found[0]} holds NaN/Inf); nothing was saved. "
                             "Lower --lr or use --precision fp32.")


def _log_step(line: str) -> int | None:
    """The step of a JSONL log line; None for a line cut short by a kill mid-write."""
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError, TypeError):
        return None


def _trim_jsonl(path: Path, last_step: int) -> None:
    """Drop log lines past the resumed step (and a last line cut short by a kill), so the resumed log
    reads like an uninterrupted one."""
    if not path.is_file():
        return
    kept = [ln for ln in path.read_text().splitlines() if ln.strip() and (s := _log_step(ln)) is not None
            and s <= last_step]
    path.write_text("".join(ln + "\n" for ln in kept))


def train(
    adapter: Any,
    method: Any,
    forget: SampleSet,
    retain: SampleSet,
    settings: LoopSettings,
    work_dir: Path,
    on_step: Callable[[int], None] | None = None,
    dist: Distributed | None = None,
) -> LoopResult:
    """Run ``settings.steps`` method steps; checkpoints in ``work_dir/checkpoints``, logs in ``work_dir/metrics.jsonl``.

    ``on_step(step)`` is called after each completed step (and its checkpoint): a hook for callers and for
    the crash tests. ``dist``: this process's place in a multi-process job (default: one process).
    """
    dist = dist or Distributed()
    main = dist.is_main
    rows = dist.rows(settings.batch_size)
    if settings.steps <= 0:
        raise UserInputError(f"steps must be > 0, got {settings.steps}")
    if len(forget) == 0 or len(retain) == 0:
        raise UserInputError(f"need non-empty forget and retain sets, got {len(forget)} and {len(retain)} samples")
    device = adapter.device
    autocast = _autocast(device, settings.precision)
    work_dir = Path(work_dir)
    ckpt_dir = work_dir / "checkpoints"
    log_path = work_dir / "metrics.jsonl"
    start_step = 0
    loop_state: dict[str, Any] = {}
    if settings.resume:
        if main:
            ckpt.remove_partial_writes(ckpt_dir)  # a kill mid-write leaves its temporary file
        latest = ckpt.latest_checkpoint(ckpt_dir)
        if latest is None:
            raise UserInputError(f"nothing to resume: no checkpoint in {ckpt_dir}")
        state = ckpt.load_checkpoint(latest)
        if dist.sharded:  # this process's shard of every full tensor the checkpoint holds
            if state.get("sharding") != "fsdp":
                raise UserInputError(f"cannot resume {latest} with sharding 'fsdp': it was written by a run without "
                                     "it; resume with --sharding ddp")
            state = dist.shard_state(state, adapter.network)
        else:
            state = unshard_state(state)  # a sharded run's checkpoint resumes whole, on any number of processes
        if state.get("fingerprint") != settings.fingerprint:
            diff = sorted(k for k in set(state.get("fingerprint", {})) | set(settings.fingerprint)
                          if state.get("fingerprint", {}).get(k) != settings.fingerprint.get(k))
            raise UserInputError(f"cannot resume from {latest}: the run's settings differ in {', '.join(diff)}")
        adapter.load_state_dict(state["model"])
        method.load_state_dict(state["method"])
        ckpt.set_rng_state(state["rng"])
        start_step = int(state["step"])
        loop_state = state.get("loop") or {}
        if main:
            _trim_jsonl(log_path, start_step)
    else:
        torch.manual_seed(settings.seed)
        if main:
            log_path.unlink(missing_ok=True)
    if main:
        work_dir.mkdir(parents=True, exist_ok=True)

    sums: dict[str, torch.Tensor] = {}
    count = 0
    # Non-finite guard, on the device: the current run of consecutive skips and its longest run since the
    # last read (reading them every step would be a host sync).
    zero = torch.zeros((), device=device)
    run_len, longest, skipped_total = zero.clone(), zero.clone(), zero.clone()
    if loop_state:  # the metrics summed since the last log line and the guard, as the checkpoint left them
        sums = {k: v.to(device) for k, v in loop_state["sums"].items()}
        count = int(loop_state["count"])
        run_len, longest, skipped_total = (loop_state[k].to(device) for k in ("run_len", "longest", "skipped_total"))
    skipped_seen = 0
    last: dict[str, float] = {}
    t_start = time.perf_counter()
    t_log, step_log = t_start, start_step
    bar = tqdm(total=settings.steps, initial=start_step, disable=not (settings.progress and main), desc="unlearn",
               dynamic_ncols=True, leave=True)
    try:
        with (log_path.open("a") if main else contextlib.nullcontext()) as log:
            for step in range(start_step + 1, settings.steps + 1):
                gen = torch.Generator().manual_seed(step_seed(settings.seed, step))
                fb = _batch(forget, settings.batch_size, gen, rows)
                rb = _batch(retain, settings.batch_size, gen, rows)
                try:
                    with autocast:
                        metrics = method.step(fb, rb)
                except _OOM as exc:
                    raise _out_of_memory(adapter, settings, exc) from None
                skipped = metrics.get("skipped")
                if skipped is not None:
                    run_len = (run_len + skipped) * skipped
                    longest = torch.maximum(longest, run_len)
                    skipped_total = skipped_total + skipped
                for k, v in metrics.items():
                    v = v.detach().float()
                    sums[k] = sums[k] + v if k in sums else v.clone()
                count += 1
                bar.update(1)
                if step % settings.log_every == 0 or step == settings.steps:
                    keys = list(sums)
                    stacked = dist.average_(torch.stack([sums[k] for k in keys] + [longest, skipped_total]))
                    *values, n_long, n_skip = stacked.cpu().tolist()  # the one host sync
                    now = time.perf_counter()
                    last = {k: v / count for k, v in zip(keys, values)}
                    skipped_seen = int(n_skip)
                    if n_long >= settings.max_skipped_steps:
                        raise NumericalError(
                            f"{int(n_long)} consecutive steps (up to step {step}) had a non-finite gradient and "
                            f"were skipped (limit {settings.max_skipped_steps}); the weights were left as they "
                            "were. Lower --lr, use --precision fp32, or check the data and model for NaN/Inf.")
                    longest = torch.zeros_like(longest)
                    record = {"step": step, **last, "skipped_total": skipped_seen, "steps_per_s": (step - step_log) / max(now - t_log, 1e-9),
                              "elapsed_s": now - t_start}
                    if main:
                        log.write(json.dumps(record) + "\n")
                        log.flush()
                    # the method's own figures only (EraseDiff's λ, AdvUnlearn's attack loss), not zeros for the rest
                    shown = {"L_f": ("loss_forget", 4), "L_r": ("loss_retain", 4), "λ": ("lambda", 3),
                             "L_atk": ("loss_attack", 4)}
                    postfix = {k: f"{float(last[m]):.{d}f}" for k, (m, d) in shown.items() if m in last}
                    bar.set_postfix({**postfix, "skip": skipped_seen, "it/s": f"{record['steps_per_s']:.2f}"})
                    sums, count, t_log, step_log = {}, 0, now, step
                if settings.checkpoint_every > 0 and (step % settings.checkpoint_every == 0 or step == settings.steps):
                    check_finite_weights(adapter)  # on every process: the weights are the same everywhere
                    if dist.enabled and sums:  # the checkpoint holds the job's sums, not process 0's
                        keys = list(sums)
                        sums = dict(zip(keys, dist.average_(torch.stack([sums[k] for k in keys])).unbind()))
                    model_state, method_state = adapter.state_dict(), method.state_dict()
                    if dist.sharded:  # full tensors, gathered by every process, so any world size resumes
                        model_state, method_state = dist.gather_state((model_state, method_state))
                    if main:
                        ckpt.save_checkpoint(ckpt_dir, step, {
                            "step": step, "model": model_state, "method": method_state,
                            "sharding": "fsdp" if dist.sharded else "none",
                            "rng": ckpt.rng_state(), "fingerprint": settings.fingerprint,
                            "loop": {"sums": {k: v.cpu() for k, v in sums.items()}, "count": count,
                                     "run_len": run_len.cpu(), "longest": longest.cpu(),
                                     "skipped_total": skipped_total.cpu()},
                        }, keep=settings.keep_checkpoints)
                if on_step is not None:
                    on_step(step)
    finally:
        bar.close()
    return LoopResult(steps=settings.steps, resumed_from=start_step, wall_s=time.perf_counter() - t_start,
                      last_metrics=last, skipped_steps=skipped_seen)


__all__ = ["SampleSet", "LoopSettings", "LoopResult", "train", "resolve_device", "step_seed", "cpu_threads",
           "check_finite_weights"]
