"""UnlearnDiffAtk's discrete prefix optimiser (Zhang et al., ECCV 2024): ``k`` real tokens placed after a
prompt's first token, chosen so that the attacked model denoises images of the concept well under the prompt.

    min_{c′ ∈ V^k}  E_{t,ε} ‖ε_θ*(√ᾱ_t z_tgt + √(1−ᾱ_t) ε, t, TE(c′ ⊕ c)) − ε‖²

with z_tgt the latent of an image of the concept (the base model's own generation, or a user image). The
tokens are relaxed to distributions P ∈ Δ^{k×V′} over the vocabulary V′ without the special tokens
(:attr:`~fastunlearn.models.t2i.T2IAdapter.special_token_ids` never enter a prompt):

- **straight-through** (:class:`StraightThroughArgmax`): the forward pass takes one-hot(argmax P) — the prompt is
  always a real token sequence, and its embeddings are exactly those tokens' (one-hot · E) —, the backward
  pass hands the one-hot's gradient, clipped to [−1, 1] (``hardtanh``, as the authors' ``STERandSelect``),
  to P unchanged. The authors' forward *samples* the one-hot from P (``torch.multinomial``); the argmax makes
  the attack deterministic for a seed and is the token their code decodes and checks;
- **Adam** on P at lr 0.01 with the authors' weight decay 0.1, then the **Euclidean projection onto the
  simplex** of every row (:func:`project_simplex`: sort-based, batched, on the device);
- P starts uniform (1/|V′|, the authors' ``init_adv``), so the first argmax is the first allowed token.

Our schedule batches timesteps: each iteration draws ``timesteps`` pairs (t ~ U{0..T−1}, ε ~ N(0, I)) per
instance and takes one step on their mean loss (:func:`fastunlearn.ops.dual_noise_loss`); every
``check_every`` iterations the current tokens' image (the instance's own initial noise, the evaluation's
DDIM sampler) is judged, and an instance stops at its first success. The authors walk 50 timesteps one at a
time, 40 iterations each, with a generation and a check after each timestep: 2,000 single-timestep UNet
passes and 50 generations per instance. :func:`run_discrete` attacks a batch of instances in lockstep — one
UNet pass over ``instances × timesteps`` rows per iteration —; every instance draws its own t and ε from its
own generator and has its own rows of P and of Adam's state (Adam and the projection act per element / per
row, the loss is the *sum* over instances of their mean losses), so an instance's attack does not depend on
which others share its batch (up to the backend's batch-size-dependent rounding, ≈1e-6).

Defaults (:data:`DEFAULTS`), measured on ``zoo:digits-t2i`` erased of "a handwritten digit zero" by ESD at its
defaults (16 instances of the concept prompt, seed 0, ``nice``, 1 thread of this 2-core CPU shared with other
jobs; instances in batches of 8 → 64 UNet rows per iteration, ≈0.5 s per iteration, ≈0.45 s per check of 8
images): 40 iterations (the authors' count per timestep), 8 timesteps per iteration (4: 1/8 successes where 8
found 3/8 on the same instances), a check every 2 iterations — ASR 56 % in 53 s; a check every 5: 50 % in
58 s; every iteration: 56 % in 96 s (the argmax tokens change from one iteration to the next, and a success
can be passed over between checks). 80 iterations found 4/8 where 40 found 3/8, at twice the time of every
failed instance. See :mod:`fastunlearn.attacks.runner` for what the attack is run on and how its success rate
is counted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from fastunlearn.errors import UserInputError
from fastunlearn.ops import dual_noise_loss

#: UnlearnDiffAtk's settings: prefix length ``k`` (3 for objects, 5 for nudity: chosen by the runner),
#: Adam's ``lr`` and ``weight_decay`` (the authors'), ``iterations`` (optimisation steps per instance),
#: ``timesteps`` (t, ε pairs per instance per iteration) and ``check_every`` (iterations between checks).
DEFAULTS: dict[str, Any] = {"lr": 0.01, "weight_decay": 0.1, "iterations": 40, "timesteps": 8, "check_every": 2}


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of every row of ``v`` (``[..., V]``, float) onto the probability simplex
    {p : p ≥ 0, Σ p = 1}: ``argmin_p ‖p − v‖²``, by the sort-based algorithm of Held et al. (1974) / Duchi et
    al. (2008), batched over the leading dimensions, on ``v``'s device, without a host read.

    With u the row sorted in decreasing order and ρ = max{j : u_j − (Σ_{i≤j} u_i − 1)/j > 0} (the set of such j
    is {1..ρ}, so ρ is their count), θ = (Σ_{i≤ρ} u_i − 1)/ρ and p = max(v − θ, 0). Ties are harmless: θ does not
    depend on their order. Computed in float64 when ``v`` is float64, else in float32; returns ``v``'s dtype.
    """
    if not v.is_floating_point():
        raise UserInputError(f"the simplex projection takes a float tensor, got {v.dtype}")
    if v.shape[-1] == 0:
        raise UserInputError("the simplex projection needs at least one coordinate per row")
    x = v.double() if v.dtype == torch.float64 else v.float()
    u, _ = torch.sort(x, dim=-1, descending=True)
    css = u.cumsum(-1) - 1.0
    j = torch.arange(1, x.shape[-1] + 1, device=x.device, dtype=x.dtype)
    rho = (u - css / j > 0).sum(-1, keepdim=True).clamp_min(1)  # ≥ 1 always holds in exact arithmetic
    theta = css.gather(-1, rho - 1) / rho.to(x.dtype)
    return (x - theta).clamp_min(0).to(v.dtype)


class StraightThroughArgmax(torch.autograd.Function):
    """Forward: one-hot(argmax over the last dimension) of the relaxed distribution ``P`` (first maximum on
    ties); backward: the incoming gradient clipped to [−1, 1], passed to ``P`` as it is (the straight-through
    estimator of UnlearnDiffAtk's ``STERandSelect``)."""

    @staticmethod
    def forward(ctx: Any, p: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(p.argmax(-1), p.shape[-1]).to(p.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(-1.0, 1.0)


def allowed_token_ids(adapter: Any) -> torch.Tensor:
    """The vocabulary an attack may place in a prompt: every id but the special tokens (int64, CPU)."""
    keep = torch.ones(adapter.vocab_size, dtype=torch.bool)
    special = adapter.special_token_ids
    if special:
        keep[torch.tensor(special, dtype=torch.long)] = False
    if not bool(keep.any()):
        raise UserInputError("the tokenizer has no token that is not a special token: nothing to attack with")
    return keep.nonzero().squeeze(1)


@dataclass
class DiscreteOutcome:
    """What :func:`run_discrete` found for each instance of a batch."""

    success: torch.Tensor  #: bool ``[n]``: an image judged the concept at some check
    token_ids: torch.Tensor  #: int64 ``[n, k]``: the prefix at the success (else at the last check)
    iterations: torch.Tensor  #: int64 ``[n]``: optimisation steps taken (to the success, else all)
    images: torch.Tensor  #: ``[n, C, H, W]`` in [-1, 1]: the image under the prefix in ``token_ids``
    loss: torch.Tensor  #: float ``[n]``: the instance's mean denoising loss at its last step
    relaxed: torch.Tensor  #: float ``[n, k, V′]``: each instance's relaxed distributions when it stopped
    allowed: torch.Tensor  #: int64 ``[V′]``: the token id of each column of ``relaxed``


def run_discrete(adapter: Any, labels: torch.Tensor, z_target: torch.Tensor, noise: torch.Tensor,
                 generators: list[torch.Generator], judge: Callable[[torch.Tensor], torch.Tensor], k: int,
                 iterations: int = DEFAULTS["iterations"], timesteps: int = DEFAULTS["timesteps"],
                 check_every: int = DEFAULTS["check_every"], lr: float = DEFAULTS["lr"],
                 weight_decay: float = DEFAULTS["weight_decay"], steps: int = 10, guidance: float = 3.0,
                 on_done: Callable[[int], None] | None = None) -> DiscreteOutcome:
    """UnlearnDiffAtk on ``n`` instances at once (see the module docstring).

    Args:
        adapter: the attacked model (a :class:`~fastunlearn.models.t2i.T2IAdapter`; its weights are not touched).
        labels: prompt ids ``[n]`` of the instances' prompts (the prefix goes in front of them).
        z_target: ``[n, C, h, w]`` latents of the concept images the loss denoises.
        noise: ``[n, C, h, w]`` each instance's initial noise for the success checks.
        generators: one CPU generator per instance, for its timesteps and ε.
        judge: images ``[m, C, H, W]`` → bool ``[m]`` "shows the concept".
        k: prefix tokens. iterations / timesteps / check_every / lr / weight_decay: see :data:`DEFAULTS`.
        steps / guidance: the check's DDIM steps and classifier-free guidance.
        on_done: called with an instance's index (0..n−1) when it stops (success, or the last iteration).
    """
    n = labels.numel()
    for name, value, low in (("k", k, 1), ("iterations", iterations, 1), ("timesteps", timesteps, 1),
                             ("check_every", check_every, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserInputError(f"unlearndiffatk: {name} must be an integer >= {low}, got {value!r}")
    if len(generators) != n or z_target.shape[0] != n or noise.shape[0] != n:
        raise UserInputError("unlearndiffatk: one target latent, one noise and one generator per instance")
    device = adapter.device
    allowed = allowed_token_ids(adapter).to(device)
    table = adapter.token_embedding.to(device)[allowed].float()  # [V', D]
    vocab = allowed.numel()
    relaxed = torch.full((n, k, vocab), 1.0 / vocab, device=device, requires_grad=True)
    opt = torch.optim.Adam([relaxed], lr=lr, weight_decay=weight_decay)
    active = torch.ones(n, dtype=torch.bool)
    success = torch.zeros(n, dtype=torch.bool)
    used = torch.zeros(n, dtype=torch.long)
    token_ids = torch.zeros((n, k), dtype=torch.long)
    images = torch.zeros((n, *adapter.image_shape))
    last_loss = torch.full((n,), float("nan"))
    stopped = torch.zeros((n, k, vocab))
    labels = labels.reshape(-1).cpu().long()
    for it in range(1, iterations + 1):
        rows = active.nonzero().squeeze(1)
        a = rows.numel()
        batches = [adapter.noised_batch(z_target[i:i + 1].expand(timesteps, -1, -1, -1).contiguous(), None,
                                        generators[i]) for i in rows.tolist()]
        x_t = torch.cat([b.x_t for b in batches])
        t = torch.cat([b.t for b in batches])
        eps = torch.cat([b.noise for b in batches])
        index = rows.to(device)
        onehot = StraightThroughArgmax.apply(relaxed[index])  # [a, k, V']
        states = adapter.encode_prefixed(labels[rows], onehot @ table, grad=True)
        pred = adapter.predict_embedded(x_t, t, states.repeat_interleave(timesteps, 0))
        loss, _ = dual_noise_loss(pred, eps.to(pred.dtype), pred.shape[0])
        (grad,) = torch.autograd.grad(loss * a, [relaxed])  # Σ over instances of their mean losses
        relaxed.grad = grad
        opt.step()
        with torch.no_grad():
            relaxed.copy_(project_simplex(relaxed))
            per = (pred.float() - eps.float()).square().reshape(a, -1).mean(1).cpu()
        last_loss[rows] = per
        used[rows] = it
        if it % check_every and it != iterations:
            continue
        with torch.no_grad():
            ids = allowed[relaxed[index].argmax(-1)]  # [a, k]
            cond = adapter.encode_prefixed(labels[rows], ids, grad=False)
            imgs = adapter.generate_embedded(cond, steps=steps, guidance_scale=guidance, noise=noise[rows])
        ok = torch.as_tensor(judge(imgs), dtype=torch.bool).reshape(-1).cpu()
        token_ids[rows] = ids.cpu()
        images[rows] = imgs
        success[rows] = ok
        finished = rows[ok] if it != iterations else rows
        active[finished] = False
        stopped[finished] = relaxed.detach()[finished.to(device)].cpu()
        if on_done is not None:
            for i in finished.tolist():
                on_done(i)
        if not bool(active.any()):
            break
    return DiscreteOutcome(success=success, token_ids=token_ids, iterations=used, images=images, loss=last_loss,
                           relaxed=stopped, allowed=allowed.cpu())


__all__ = ["DEFAULTS", "project_simplex", "StraightThroughArgmax", "allowed_token_ids", "DiscreteOutcome",
           "run_discrete"]
