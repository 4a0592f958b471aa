"""``bilevel_combine``: the first-order bi-level gradient combination ``g_o + λ·g_i`` in two passes.

One reduction pass over both gradients gives ⟨g_o,g_i⟩, ‖g_i‖², ‖g_o‖² and a non-finite count; λ is
formed from them on the device (rules in :func:`fastunlearn.ops.reference.bilevel_lambda`); one update
pass writes the combination. λ and the finite flag are returned as device tensors, never read on the
host here, so a training step stays free of host syncs and capturable in a CUDA graph.

Under sharded training pass ``reduce_stats`` (e.g. an all-reduce sum over ranks): it receives the
4-vector of partial sums before λ is formed, so no rank ever gathers the full gradient.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from fastunlearn.ops import backends, reference

TensorOrList = torch.Tensor | Sequence[torch.Tensor]


def _check_pair(g_outer: torch.Tensor, g_inner: torch.Tensor) -> None:
    if g_outer.numel() != g_inner.numel():
        raise ValueError(f"bilevel_combine: g_outer has {g_outer.numel()} elements but g_inner has {g_inner.numel()}")
    if g_outer.dtype != g_inner.dtype:
        raise ValueError(f"bilevel_combine: g_outer is {g_outer.dtype} but g_inner is {g_inner.dtype}")
    if g_outer.device != g_inner.device:
        raise ValueError(f"bilevel_combine: g_outer is on {g_outer.device} but g_inner on {g_inner.device}")


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1) if t.is_contiguous() else t.contiguous().reshape(-1)


def _stats_one(g_outer: torch.Tensor, g_inner: torch.Tensor) -> torch.Tensor:
    _check_pair(g_outer, g_inner)
    backend = backends.select("bilevel_combine", g_outer.device, g_outer.dtype)
    if backend == "reference":
        return reference.bilevel_stats(g_outer, g_inner)
    go, gi = _flat(g_outer), _flat(g_inner)
    if backend == "triton":
        from fastunlearn.ops.triton import bilevel_combine as tk

        return tk.stats(go, gi)
    return torch.ops.fastunlearn.bilevel_stats(go, gi)


def _apply_one(g_outer, g_inner, stats, rule, eta, out):
    backend = backends.select("bilevel_combine", g_outer.device, g_outer.dtype)
    if backend == "reference":
        combined, lam, finite = reference.bilevel_apply(g_outer, g_inner, stats, rule, eta, out)
        return combined, torch.stack([lam, finite.float()])
    if out is None:
        out = torch.empty_like(g_outer, memory_format=torch.contiguous_format)
    if out.shape != g_outer.shape or out.dtype != g_outer.dtype or out.device != g_outer.device:
        raise ValueError("bilevel_combine: `out` must match g_outer's shape, dtype and device")
    # A non-contiguous `out` is written through a contiguous scratch and copied back.
    target = out if out.is_contiguous() else torch.empty_like(out, memory_format=torch.contiguous_format)
    go, gi, flat_out = _flat(g_outer), _flat(g_inner), target.view(-1)
    rule_id = reference.RULES[rule]
    if backend == "triton":
        from fastunlearn.ops.triton import bilevel_combine as tk

        lam_finite = tk.apply(go, gi, stats, rule_id, eta, flat_out)
    else:
        lam_finite = torch.ops.fastunlearn.bilevel_apply(go, gi, stats, rule_id, float(eta), flat_out)
    if target is not out:
        out.copy_(target)
    return out, lam_finite


def bilevel_stats(g_outer: TensorOrList, g_inner: TensorOrList) -> torch.Tensor:
    """The reduction pass alone: fp32 ``[⟨g_o,g_i⟩, ‖g_i‖², ‖g_o‖², #non-finite]`` (lists: summed in order)."""
    if isinstance(g_outer, torch.Tensor):
        return _stats_one(g_outer, g_inner)
    if len(g_outer) != len(g_inner) or len(g_outer) == 0:
        raise ValueError(f"bilevel_combine: lists of {len(g_outer)} and {len(g_inner)} tensors (need equal, non-empty)")
    # Per-tensor partial vectors summed in a fixed order: deterministic like the flat-buffer path.
    return torch.stack([_stats_one(o, i) for o, i in zip(g_outer, g_inner)]).sum(0)


def bilevel_combine(
    g_outer: TensorOrList,
    g_inner: TensorOrList,
    rule: str = "bome",
    eta: float = 0.1,
    out: TensorOrList | None = None,
    reduce_stats: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[TensorOrList, torch.Tensor, torch.Tensor]:
    """``(combined, λ, finite)`` with ``combined = g_outer + λ·g_inner``.

    λ rules (``rule``): ``bome`` — λ = max(0, (η‖g_i‖² − ⟨g_o,g_i⟩)/‖g_i‖²), the BOME rule EraseDiff's paper
    uses (Liu et al., NeurIPS 2022); ``cosine`` — λ = max(0, η − cos(g_o,g_i)), the EraseDiff authors'
    adaptive code; ``fixed`` — λ = η. λ = 0 when ‖g_i‖ = 0. If any element of either input is NaN/Inf,
    ``finite`` is False, λ is 0 and ``combined`` equals ``g_outer`` (left untouched when ``out`` is it).

    Inputs are one flat tensor each (the engine's gradient buffer, see :class:`FlatGrads`) or equal-length
    lists of tensors. ``out`` may be ``g_outer`` itself for an in-place update. ``λ`` is an fp32 0-dim and
    ``finite`` a bool 0-dim tensor on the gradients' device.
    """
    if rule not in reference.RULES:
        raise ValueError(f"bilevel_combine: unknown rule {rule!r}; expected one of {sorted(reference.RULES)}")
    stats = bilevel_stats(g_outer, g_inner)
    if reduce_stats is not None:
        stats = reduce_stats(stats)
    if isinstance(g_outer, torch.Tensor):
        combined, lam_finite = _apply_one(g_outer, g_inner, stats, rule, eta, out)
    else:
        outs = list(out) if out is not None else [None] * len(g_outer)
        if len(outs) != len(g_outer):
            raise ValueError("bilevel_combine: `out` must be a list as long as g_outer")
        results = [_apply_one(o, i, stats, rule, eta, x) for o, i, x in zip(g_outer, g_inner, outs)]
        combined, lam_finite = [r[0] for r in results], results[0][1]
    return combined, lam_finite[0], lam_finite[1] > 0
