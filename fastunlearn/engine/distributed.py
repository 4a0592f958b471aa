"""Many processes, one result: data-parallel training under ``torchrun`` (or ``accelerate launch``).

Launch the ordinary command under PyTorch's launcher; nothing else changes::

    torchrun --nproc-per-node 4 -m fastunlearn run --forget class:0 --batch-size 128
    accelerate launch -m fastunlearn run ...          # sets the same WORLD_SIZE / RANK / LOCAL_RANK

:meth:`Distributed.from_env` reads ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; :meth:`Distributed.start`
puts each process on ``cuda:LOCAL_RANK`` (when the run is on CUDA: ``--device cuda`` or ``auto``; an explicit
``cuda:K`` is refused, see :meth:`Distributed.device_for`) and opens the process group — NCCL on CUDA, gloo on
the CPU — and :meth:`Distributed.stop` closes it.

What a step means does not depend on the number of processes W:

- ``batch_size`` is the GLOBAL batch per side (forget and retain), as in one process. Every process draws
  the whole global batch — its indices, and every timestep, noise tensor and pseudo-label the method draws
  from the step's generator — exactly as one process does, and computes only its own contiguous slice of
  rows, ``rows(batch_size)`` (the method receives it as :attr:`fastunlearn.methods.base.Batch.rows`).
  So sample r of step s is the same sample with the same noise for any W; ``batch_size`` must divide by W.
- Gradients: the method's losses are means over its B/W rows; the global-batch mean is the plain average of
  the W local means (equal slices), and that is what :class:`GradientSync` makes of each flat gradient
  buffer: one ``all_reduce`` (sum, then ÷W) of the whole buffer — DDP's gradient all-reduce, done on the flat
  buffer as one bucket instead of through ``torch.nn.parallel.DistributedDataParallel`` (which would fight the
  two backward passes into two buffers an EraseDiff step makes). EraseDiff reduces both buffers before
  :func:`fastunlearn.ops.bilevel_combine`, so ⟨g_r, g_f⟩, ‖g_f‖² and λ are those of the global batch and
  identical on every process, as are the clip, Adam and EMA that follow: the weights stay equal everywhere.
- Metrics are averaged over processes only where the loop reads them (every ``log_every`` steps).
- Only process 0 writes: the partial output dir, checkpoints, logs, progress bar, evaluation, report and
  manifest. The others wait at a barrier until the output is in place, then return the same result.

The result equals one process's run up to floating-point summation order (the per-process means are summed
in a different order than one process's); the 2-process test measures it (tests/engine/test_distributed.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Mapping

import torch

from fastunlearn.errors import UserInputError
from fastunlearn.methods import sync as _sync
from fastunlearn.methods.sync import IDENTITY  # noqa: F401  (re-exported: the one-process sync)
from fastunlearn.methods.sync import Done as _Done
from fastunlearn.ops.flat_grads import is_dtensor

SHARDINGS = ("ddp", "fsdp")

#: Process 0 evaluates alone (before and after training) while the others wait at a barrier: allow for a
#: slow evaluation rather than the 10-minute NCCL default.
TIMEOUT = timedelta(hours=2)


class _PendingAverage:
    """An in-flight all-reduce (sum) of a buffer; :meth:`wait` finishes it and divides by W."""

    def __init__(self, work: Any, buffer: torch.Tensor, world_size: int):
        self.work, self.buffer, self.world_size = work, buffer, world_size

    def wait(self) -> None:
        self.work.wait()
        self.buffer.div_(self.world_size)


class GradientSync(_sync.GradientSync):
    """The methods' gradient-sync interface (:class:`fastunlearn.methods.sync.GradientSync`) for many processes.

    - ``sync(buf)`` (or ``pending = sync.start(buf)`` … ``pending.wait()``, to overlap the all-reduce with
      other work), right after the buffer's backward pass: makes it the global-batch mean gradient. DDP
      (``sharded=False``): an all-reduce average of the whole buffer. FSDP (``sharded=True``): nothing —
      FSDP2's backward already reduce-scattered the averaged gradient into this process's shard.
    - ``sum_partials(t)``: sums over the shards of per-shard partial sums (FSDP: all-reduce; else identity)
      — :func:`fastunlearn.ops.bilevel_combine`'s ``reduce_stats``.
    - ``all_finite(buf)`` and ``norm(buf)``: of the whole gradient, from this process's buffer.

    One process: every call is the identity (or the plain local value).
    """

    def __init__(self, world_size: int = 1, sharded: bool = False, group: Any = None):
        self.world_size, self.sharded, self.group = int(world_size), bool(sharded) and world_size > 1, group

    @property
    def averages(self) -> bool:
        return self.world_size > 1 and not self.sharded

    def start(self, buffer: torch.Tensor):
        if not self.averages:
            return _Done()
        import torch.distributed as dist

        # Sum then ÷W rather than ReduceOp.AVG, which gloo does not have.
        work = dist.all_reduce(buffer, op=dist.ReduceOp.SUM, group=self.group, async_op=True)
        return _PendingAverage(work, buffer, self.world_size)

    def __call__(self, buffer: torch.Tensor) -> torch.Tensor:
        self.start(buffer).wait()
        return buffer

    def sum_partials(self, partials: torch.Tensor) -> torch.Tensor:
        if self.sharded:
            import torch.distributed as dist

            dist.all_reduce(partials, op=dist.ReduceOp.SUM, group=self.group)
        return partials

    def all_finite(self, buffer: torch.Tensor) -> torch.Tensor:
        if not self.sharded:
            return torch.isfinite(buffer).all()
        bad = (~torch.isfinite(buffer)).sum().to(torch.float32).reshape(1)
        return self.sum_partials(bad)[0] == 0

    def norm(self, buffer: torch.Tensor) -> torch.Tensor:
        if not self.sharded:
            return buffer.norm()
        return self.sum_partials(buffer.float().pow(2).sum().reshape(1))[0].sqrt().to(buffer.dtype)


def unshard_state(obj: Any) -> Any:
    """A checkpoint state with each ``{"sharded": full}`` (see :meth:`Distributed.gather_state`) replaced by
    the full tensor: how a run that is not sharded reads a sharded run's checkpoint."""
    if isinstance(obj, dict):
        if set(obj) == {"sharded"} and isinstance(obj["sharded"], torch.Tensor):
            return obj["sharded"]
        return {k: unshard_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(unshard_state(v) for v in obj)
    return obj


def _env_int(env: Mapping[str, str], key: str, default: int) -> int:
    value = env.get(key)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise UserInputError(f"environment variable {key}={value!r} is not an integer (set by the launcher)") from None


def is_main_process(env: Mapping[str, str] | None = None) -> bool:
    """True unless this is a launched process other than rank 0 (for printing once per job)."""
    return _env_int(os.environ if env is None else env, "RANK", 0) == 0


@dataclass
class Distributed:
    """This process's place in the job and the collectives the engine uses (no-ops in one process)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    sharding: str = "ddp"
    device: torch.device | None = None  #: set by :meth:`start`
    _owns_group: bool = field(default=False, repr=False)
    _plain_class: Any = field(default=None, repr=False)  #: the UNet's class before FSDP2 wrapped it

    @classmethod
    def from_env(cls, sharding: str = "ddp", env: Mapping[str, str] | None = None) -> "Distributed":
        """The job as ``torchrun`` / ``accelerate launch`` describe it (one process when the variables are unset)."""
        env = os.environ if env is None else env
        world = _env_int(env, "WORLD_SIZE", 1)
        rank = _env_int(env, "RANK", 0)
        local = _env_int(env, "LOCAL_RANK", rank)
        if world < 1 or not 0 <= rank < world:
            raise UserInputError(f"inconsistent launcher variables WORLD_SIZE={world} RANK={rank}")
        if sharding not in SHARDINGS:
            raise UserInputError(f"unknown sharding {sharding!r}; expected one of {', '.join(SHARDINGS)}")
        return cls(world_size=world, rank=rank, local_rank=local, sharding=sharding)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        """FSDP across more than one process (one process holds the whole model whatever ``sharding`` says)."""
        return self.enabled and self.sharding == "fsdp"

    # ------------------------------------------------------------------ checks and batches
    def check_batch_size(self, batch_size: int) -> None:
        if batch_size % self.world_size:
            raise UserInputError(
                f"batch_size {batch_size} (the global batch per side) must divide by the {self.world_size} "
                f"processes; use e.g. --batch-size {max(1, round(batch_size / self.world_size)) * self.world_size}")

    def rows(self, batch_size: int) -> slice:
        """This process's contiguous rows of a global batch of ``batch_size`` rows."""
        per = batch_size // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    # ------------------------------------------------------------------ lifetime
    def device_for(self, requested: torch.device, device_count: int) -> torch.device:
        """This process's device for a requested one (pure: no CUDA call; ``device_count``: the visible GPUs).

        - One process: ``requested`` as it is (``cuda:K`` with K < ``device_count``).
        - Several processes on CUDA: ``cuda:LOCAL_RANK``, one GPU per process on each node. A requested
          ``cuda`` (or ``auto``, which resolves to it) means exactly that. An explicit ``cuda:K`` is accepted
          only when K is this process's LOCAL_RANK (a caller starting its own processes, one device each);
          otherwise it is refused — under ``torchrun`` every process gets the same ``--device``, and putting
          them all on GPU K (or offsetting K by the rank) is never what was meant: choose the GPUs with
          ``CUDA_VISIBLE_DEVICES`` and pass ``--device cuda``.
        - Several processes on the CPU: the CPU (gloo).
        """
        if requested.type != "cuda":
            return requested
        if not self.enabled:
            if requested.index is not None and requested.index >= device_count:
                raise UserInputError(f"device cuda:{requested.index} was asked for but {device_count} CUDA "
                                     f"device(s) are visible")
            return requested
        if requested.index is not None and requested.index != self.local_rank:
            raise UserInputError(
                f"--device cuda:{requested.index} with {self.world_size} processes: each process runs on "
                f"cuda:LOCAL_RANK (this one: LOCAL_RANK={self.local_rank}). Pass --device cuda (or auto) and "
                f"choose the GPUs with CUDA_VISIBLE_DEVICES, e.g. CUDA_VISIBLE_DEVICES=2,3 torchrun --nproc-per-node 2 ...")
        if self.local_rank >= device_count:
            raise UserInputError(
                f"process LOCAL_RANK={self.local_rank} needs cuda:{self.local_rank} but {device_count} CUDA "
                f"device(s) are visible on this node: start at most {device_count} processes per node "
                f"(--nproc-per-node) or use --device cpu")
        return torch.device("cuda", self.local_rank)

    def start(self, device: torch.device) -> torch.device:
        """Pick this process's device (:meth:`device_for`), make it the current CUDA device, and open the
        process group."""
        if device.type == "cuda":
            device = self.device_for(device, torch.cuda.device_count())
            if device.index is not None:
                torch.cuda.set_device(device)  # for anything that launches on the current device
        self.device = device
        if self.enabled:
            import torch.distributed as dist

            if not dist.is_available():
                raise UserInputError("this torch build has no torch.distributed; run one process")
            if not dist.is_initialized():  # a caller's own process group is used as it is
                backend = "nccl" if device.type == "cuda" else "gloo"
                dist.init_process_group(backend=backend, timeout=TIMEOUT)
                self._owns_group = True
            if dist.get_world_size() != self.world_size or dist.get_rank() != self.rank:
                raise UserInputError(
                    f"the process group has {dist.get_world_size()} processes (this is {dist.get_rank()}) but "
                    f"WORLD_SIZE={self.world_size} RANK={self.rank}")
        return device

    def stop(self) -> None:
        """Close the process group if :meth:`start` opened it."""
        if self._owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._owns_group = False

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if self.device is not None and self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def average_(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of ``tensor`` over the processes, in place (the loop's metric reads)."""
        return GradientSync(self.world_size)(tensor)

    def gradient_sync(self) -> GradientSync:
        """The methods' gradient sync for this job (:class:`GradientSync`)."""
        return GradientSync(self.world_size, sharded=self.sharded)

    # ------------------------------------------------------------------ FSDP2
    def shard(self, unet: torch.nn.Module) -> None:
        """``--sharding fsdp``: FSDP2 (``fully_shard``) each block of the UNet, then the UNet itself, in place.

        Every parameter becomes a ``DTensor`` sharded on dim 0 over the processes; the forward all-gathers a
        block's parameters just before the block runs and frees them after, the backward reduce-scatters
        the block's averaged gradient into each process's shard. Call before the method builds its flat
        gradient buffers and optimizer (they are laid out over the local shards) and before torch.compile.
        """
        if not self.sharded:
            return
        from torch.distributed.fsdp import fully_shard

        self._plain_class = type(unet)
        for name in ("down_blocks", "mid_block", "up_blocks"):
            child = getattr(unet, name, None)
            blocks = list(child) if isinstance(child, torch.nn.ModuleList) else [child] if child is not None else []
            for block in blocks:
                if next(block.parameters(), None) is not None:
                    fully_shard(block)
        fully_shard(unet)

    def gather_state(self, obj: Any) -> Any:
        """``obj`` with every sharded tensor replaced by ``{"sharded": full tensor on the CPU}``, for a
        checkpoint that holds plain tensors only (a collective: every process calls it, in the same order)."""
        if isinstance(obj, dict):
            return {k: self.gather_state(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.gather_state(v) for v in obj)
        if is_dtensor(obj):
            return {"sharded": obj.full_tensor().detach().cpu()}
        return obj

    def shard_state(self, obj: Any, module: Any) -> Any:
        """The inverse of :meth:`gather_state` for this job: each ``{"sharded": full}`` becomes this process's
        dim-0 shard of it as a ``DTensor`` on ``module``'s device mesh (no communication: every process read
        the full tensor)."""
        mesh = next(p.device_mesh for p in module.parameters() if is_dtensor(p))
        return self._shard_state(obj, mesh)

    def _shard_state(self, obj: Any, mesh: Any) -> Any:
        if isinstance(obj, dict):
            if set(obj) == {"sharded"} and isinstance(obj["sharded"], torch.Tensor):
                from torch.distributed.tensor import Shard, distribute_tensor

                return distribute_tensor(obj["sharded"].to(self.device), mesh, [Shard(0)], src_data_rank=None)
            return {k: self._shard_state(v, mesh) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self._shard_state(v, mesh) for v in obj)
        return obj

    def _plain_unet(self, unet: torch.nn.Module, attention: str) -> torch.nn.Module:
        """A plain (unsharded) UNet holding a sharded one's full weights (a collective: every process calls)."""
        from fastunlearn.engine.fastpath import set_attention

        sharded = getattr(unet, "_orig_mod", unet)
        full = {k: (v.full_tensor() if is_dtensor(v) else v).detach() for k, v in sharded.state_dict().items()}
        plain = self._plain_class.from_config(sharded.config)
        plain.load_state_dict(full)
        plain.to(device=self.device)
        set_attention(plain, attention)
        plain.train(sharded.training)
        return plain

    def unshard(self, adapter: Any, attention: str = "sdpa") -> None:
        """After FSDP training: every process gathers the full weights into a plain (unsharded) copy of the
        UNet, which replaces the sharded one — for evaluation and saving, which then run as in DDP."""
        if self.sharded:
            adapter.network = self._plain_unet(adapter.network, attention)

    def evaluation_copy(self, adapter: Any, attention: str = "sdpa") -> Any:
        """The adapter process 0 evaluates alone: itself, or under FSDP a copy over a plain UNet with the
        full weights (a collective: every process calls; the others get None). A sharded model cannot be
        evaluated alone, and its all-gather buffers must not be made under the samplers' inference mode."""
        if not self.sharded:
            return adapter
        import copy

        plain = self._plain_unet(adapter.network, attention)
        if not self.is_main:
            return None
        evaluated = copy.copy(adapter)
        evaluated.network = plain
        return evaluated

    def broadcast_object(self, obj: Any) -> Any:
        """Process 0's ``obj`` on every process."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]


__all__ = ["Distributed", "GradientSync", "IDENTITY", "unshard_state", "SHARDINGS", "TIMEOUT", "is_main_process"]
