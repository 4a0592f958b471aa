"""The plumbing every gradient-based method shares: trainable scope, one flat gradient buffer
(:class:`fastunlearn.ops.FlatGrads`) bound to ``param.grad``, Adam, a non-finite guard, global-norm clipping,
an optional EMA of the weights, and the optimizer/EMA state for checkpoints — all on the device, with no
host read in a step. EraseDiff and the baselines (``finetune``, ``gradient_ascent``, ``salun``,
``selective_amnesia``) build on :class:`GradientMethod`.

Many processes: the methods own no distribution logic. Each flat buffer goes, right after its backward
pass, through the ``grad_sync`` of the :class:`MethodConfig` (the interface
:class:`fastunlearn.methods.sync.GradientSync`, which the engine implements): the identity in one process;
under ``torchrun`` DDP's all-reduce of the gradient, applied to the flat buffer as one bucket, so the buffer
holds the global-batch mean gradient before anything reads it (the non-finite guard, clip, Adam, EraseDiff's
λ). Under FSDP the buffer holds this process's shard of it, and the guard, the clip norm and λ come from
partial sums the sync adds over the shards.

Methods reach the model only through the adapter (``parameters``, ``noised_batch``, ``predict``,
``scratch_copy``, ``functional_predict``, ``train``): never its modules or their call signatures, so the same
method runs on every model family an adapter wraps.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch

from fastunlearn.errors import UserInputError
from fastunlearn.methods.base import Batch, MethodConfig
from fastunlearn.methods.sync import IDENTITY
from fastunlearn.ops import FlatGrads


def check_common(name: str, grad_clip: float, ema_decay: float) -> None:
    """Range checks shared by the baselines' ``Options.validate``."""
    if grad_clip != grad_clip:  # NaN
        raise UserInputError(f"{name} grad_clip must be a number, got {grad_clip}")
    if not 0.0 <= ema_decay < 1.0:
        raise UserInputError(f"{name} ema_decay must be in [0, 1), got {ema_decay}")


class GradientMethod:
    """Base of the baselines: one loss → one backward into ``self.flat.buffer`` → :meth:`apply_update`.

    Subclasses set ``Options`` (with ``grad_clip`` and ``ema_decay`` fields), call :meth:`setup_params`
    from ``setup`` and :meth:`apply_update` at the end of ``step``.
    """

    name: ClassVar[str]
    Options: ClassVar[type]

    @staticmethod
    def fsdp_unsupported(options: Any) -> str | None:
        """Why the method cannot train a sharded (FSDP) model with these options; None when it can.

        The shared plumbing can: the flat buffers, clip, Adam and EMA work on each process's shard. A method
        whose update needs the whole gradient or the whole model in one place says so here.
        """
        return None

    def setup_params(self, adapter: Any, config: MethodConfig) -> None:
        self.adapter, self.opts, self.config = adapter, config.options, config
        # Only the scope trains: frozen parameters must not accumulate gradients outside the flat buffer. An
        # adapter whose scopes change how it computes (a text-to-image model encodes prompts with gradients
        # while its text encoder trains) is told the scope first.
        if hasattr(adapter, "set_scope"):
            adapter.set_scope(config.scope)
        for p in adapter.parameters("all"):
            p.requires_grad_(False)
        self.params = adapter.parameters(config.scope)
        for p in self.params:
            p.requires_grad_(True)
        self.flat = FlatGrads(self.params)
        betas = (getattr(self.opts, "adam_beta1", 0.9), getattr(self.opts, "adam_beta2", 0.999))
        self.fused = bool(config.fused_optimizer)
        self.optimizer = torch.optim.Adam(self.params, lr=config.lr, betas=betas, fused=True if self.fused else None)
        decay = getattr(self.opts, "ema_decay", 0.0)
        self.ema = [p.detach().clone() for p in self.params] if decay > 0 else None
        self.grad_sync = config.grad_sync or IDENTITY

    def backward(self, loss: torch.Tensor) -> None:
        """∇loss → the flat buffer the optimizer reads (zeroed first), averaged over the processes."""
        self.flat.buffer.zero_()
        self.flat.bind(self.flat.buffer)
        loss.backward()
        self.grad_sync(self.flat.buffer)

    def apply_update(self, finite: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Non-finite guard, clip, Adam, EMA on the gradient in the flat buffer; returns its metrics.

        ``finite`` is the device flag when the caller already has it (``bilevel_combine`` computes it in its
        reduction pass); otherwise it is computed here. A non-finite gradient would poison Adam's moments:
        the fused optimizer skips the step on the device (``found_inf``: no weight, moment or step-count
        change); the unfused one gets a zero gradient instead. ``skipped`` (0/1) reports it; the engine
        counts skips and aborts after too many in a row.
        """
        buf = self.flat.buffer
        if finite is None:
            finite = self.grad_sync.all_finite(buf)
        skipped = (~finite).float()
        buf.masked_fill_(~finite, 0.0)
        if self.fused:
            self.optimizer.found_inf = skipped
        grad_norm = self.grad_sync.norm(buf)
        clip = self.opts.grad_clip
        if clip > 0:
            buf.mul_((clip / (grad_norm + 1e-6)).clamp(max=1.0))
        self.optimizer.step()
        if self.ema is not None:
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [p.detach() for p in self.params], 1.0 - self.opts.ema_decay)
        return {"grad_norm": grad_norm.detach(), "skipped": skipped}

    def retain_inputs(self, batch: Batch):
        return self.adapter.noised_batch(batch.images, batch.labels, batch.generator, rows=batch.rows)

    def resolved_options(self) -> dict[str, Any]:
        """The options as :meth:`setup` resolved them against the model (e.g. EraseDiff's target ``auto``):
        what the run records in config.yaml, its checkpoints' fingerprint and the manifest."""
        return dataclasses.asdict(self.opts)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "ema": [e.clone() for e in self.ema] if self.ema else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.ema is not None:
            if state.get("ema") is None:
                raise UserInputError("the checkpoint has no EMA weights but this run uses ema_decay > 0")
            for e, saved in zip(self.ema, state["ema"]):
                e.copy_(saved)

    def finalize(self) -> None:
        """Leave the model holding the weights to save: the EMA when on."""
        if self.ema is not None:
            with torch.no_grad():
                for p, e in zip(self.params, self.ema):
                    p.copy_(e)


def retained_classes(adapter: Any, config: MethodConfig) -> list[int]:
    """The classes that stay: ``config.retain_classes`` if given, else every real class not forgotten."""
    forgotten = set(config.forget_classes)
    pool = config.retain_classes or tuple(range(adapter.num_classes or 0))
    return sorted({int(c) for c in pool if c not in forgotten})


__all__ = ["GradientMethod", "check_common", "retained_classes"]
