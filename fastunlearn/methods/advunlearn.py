"""AdvUnlearn (Zhang, Jia, Chen, Liu, Fan, Wang, Liu; "Defensive Unlearning with Adversarial Training for
Robust Concept Erasure in Diffusion Models", NeurIPS 2024): erase a concept by training the TEXT ENCODER
adversarially, so that no prefix an attacker adds to the prompt brings the concept back, while a retain
regulariser keeps the encoder's other prompts as they were. The UNet stays frozen, so the erased text encoder is
plug-and-play: dropped into the base pipeline (or another with the same encoder), it erases the concept there.

    min_θ  ℓ_ESD(θ, c*) + γ · ℓ_retain(θ)
    ℓ_ESD(θ, c*)  = ‖ε(x_t, t, TE_θ(c*)) − [ε₀(x_t, ∅) − η (ε₀(x_t, c) − ε₀(x_t, ∅))]‖²
    ℓ_retain(θ)   = E_{c_r} ‖ε(x_r, t_r, TE_θ(c_r)) − ε(x_r, t_r, TE₀(c_r))‖²
    c*            = P* ⊕ c,  P* ≈ argmin_P ‖ε(x_t, t, TE_θ(P ⊕ c)) − ε₀(x_t, c)‖²

- ``c`` the concept prompt (the forget prompts), ``∅`` the empty prompt, ε₀ = the frozen UNet under the ORIGINAL
  text encoder TE₀, ε = the same frozen UNet under the trained encoder TE_θ (θ = the scope's encoder weights);
- ``P`` = ``attack_tokens`` (k) continuous token embeddings placed after the prompt's first token (BOS / CLS),
  in the encoder's input-embedding space (:meth:`~fastunlearn.models.t2i.T2IAdapter.encode_prefixed`: the
  encoder's own forward with the slots' embeddings replaced, i.e. ``inputs_embeds`` through the embeddings, the
  causal mask and the final layer norm on CLIP). The attack fits P so that the unlearned model reproduces the
  original model's prediction for the concept — the prefix that best undoes the erasure — and the training step
  then erases the concept under that prefix (:func:`fastunlearn.attacks.soft_prompt.fit_soft_prompt`: ``pgd`` =
  ``attack_steps`` Adam steps at ``attack_lr``, ``fast_at`` = signed-gradient steps);
- during the first ``warmup`` iterations there is no attack: c* = c (plain ESD through the encoder); after, the
  attack runs every ``attack_every`` iterations, starting from the last prefix (``attack_init = latest``) or
  from a random token's embedding (``random``), and the iterations between reuse the last prefix;
- ``ℓ_retain`` over ``retain_batch`` retained prompts drawn per iteration (``config.retain_classes``: the
  model's other concepts on ``zoo:digits-t2i``; on a model without concepts the shipped everyday-object list
  :data:`RETAIN_PROMPTS_FILE`, as the authors' COCO-object prompts; ``--retain prompts:FILE`` overrides).

**The bank: everything θ-independent, once.** The authors' iteration samples x_t by partial DDIM of the frozen
model from fresh noise for the attack and for the training step, and takes ε₀'s predictions there (≈ 2,000 UNet
forwards per iteration at their defaults: benchmarks/reference_advunlearn.py counts them). None of it depends
on θ: x_t, ε₀(x_t, ∅) and ε₀(x_t, c) come from a bank of frozen guided-DDIM trajectories of the concept
(:func:`fastunlearn.methods.esd.build_bank`, ESD's bank: every step of every trajectory is a row), and the
retain rows' x_r and ε₀(x_r, TE₀(c_r)) from a bank of the retained prompts' own trajectories. An iteration then
costs the attack's steps (one encoder + UNet forward and backward into P each) plus ONE training forward and
backward over [forget rows; retain rows] with the fused :func:`~fastunlearn.ops.dual_noise_loss` (L_f, L_r in one
call). No gradient is computed for UNet weights (they are not trainable: the authors' setup computes ≈ 860M
parameters' worth of unused UNet weight gradients in every backward), and the attack's backward reaches only P.

Rows: an iteration draws ``batch_size`` forget rows (the authors' 1) uniformly in the concept prompts' banks,
an attack batch of the same size (its own draw), and ``retain_batch`` retained prompts with one bank row each,
all from the step's generator: resume is exact (the last prefix is part of the method's state). Under
``torchrun`` every process runs the same attack on the whole global attack batch (identical prefixes), and the
training rows are split as usual.

Scopes (``--scope``): ``text-encoder`` (the default, the authors' ``text_encoder_full``: every transformer layer
and the final layer norm, token and position embeddings frozen) or ``text-encoder:K`` (the first K layers).
Defaults: :meth:`AdvUnlearn.defaults` (the authors' SD values; measured ones for ``zoo:digits-t2i``).
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any, ClassVar

import torch

from fastunlearn.attacks.soft_prompt import MODES, fit_soft_prompt
from fastunlearn.errors import UserInputError
from fastunlearn.methods.base import Batch, MethodConfig, register
from fastunlearn.methods.esd import bank_seed, build_bank
from fastunlearn.methods.gradient import GradientMethod, check_common
from fastunlearn.ops import dual_noise_loss

#: The retain prompts of a model that records no concepts (Stable Diffusion): "a photo of a <object>" for the
#: 80 COCO object categories, one per line (the authors use COCO-object prompts; ``--retain prompts:FILE``
#: overrides).
RETAIN_PROMPTS_FILE = "everyday_objects.txt"


def default_retain_prompts() -> list[str]:
    """The shipped everyday-object retain prompts (:data:`RETAIN_PROMPTS_FILE`)."""
    text = resources.files("fastunlearn.data").joinpath("retain_prompts", RETAIN_PROMPTS_FILE).read_text()
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


@dataclass(frozen=True)
class AdvUnlearnOptions:
    """AdvUnlearn's options (``fastunlearn run --option key=value`` or ``run(..., key=value)``)."""

    gamma: float = 0.5  #: weight γ of the retain regulariser (authors: 0.5 objects and style, 0.3 nudity)
    retain_batch: int = 5  #: retained prompts per iteration (the authors' 5)
    warmup: int = 200  #: iterations of plain ESD through the encoder before the attack starts (the authors' 200)
    attack: str = "pgd"  #: ``pgd`` (Adam on the prefix) or ``fast_at`` (signed-gradient steps)
    attack_tokens: int = 1  #: k, prefix token embeddings (the authors' 1)
    attack_steps: int = 30  #: steps of one attack (the authors' 30)
    attack_lr: float = 1e-3  #: the attack's step size (the authors' 1e-3)
    attack_init: str = "latest"  #: ``latest`` (continue from the last prefix) or ``random`` (a random token's embedding)
    attack_every: int = 1  #: run the attack every N iterations after warm-up (the authors' 1)
    eta: float = 1.0  #: negative guidance η of the ESD target (see methods/esd.py: the authors' ESD value)
    sampling_guidance: float = 3.0  #: guidance of the bank's frozen trajectories (the authors' start guidance 3)
    ddim_steps: int = 50  #: DDIM steps of a bank trajectory (the authors' 50)
    trajectories: int = 4  #: bank trajectories per concept prompt
    retain_trajectories: int = 1  #: bank trajectories per retained prompt (memory: see the module docstring)
    bank_seed: int = 0
    bank_batch: int = 64  #: UNet rows per call while building the banks
    grad_clip: float = 0.0  #: max global gradient norm (≤ 0 disables; the authors do not clip)
    ema_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999

    def validate(self) -> None:
        if not self.gamma >= 0:
            raise UserInputError(f"advunlearn gamma must be >= 0, got {self.gamma}")
        if self.attack not in MODES:
            raise UserInputError(f"advunlearn attack must be one of {', '.join(MODES)}, got {self.attack!r}")
        if self.attack_init not in ("latest", "random"):
            raise UserInputError(f"advunlearn attack_init must be latest or random, got {self.attack_init!r}")
        for key in ("attack_tokens", "attack_every", "ddim_steps", "trajectories", "retain_trajectories",
                    "bank_batch"):
            if getattr(self, key) < 1:
                raise UserInputError(f"advunlearn {key} must be >= 1, got {getattr(self, key)}")
        for key in ("retain_batch", "warmup", "attack_steps"):
            if getattr(self, key) < 0:
                raise UserInputError(f"advunlearn {key} must be >= 0, got {getattr(self, key)}")
        if not self.attack_lr > 0:
            raise UserInputError(f"advunlearn attack_lr must be > 0, got {self.attack_lr}")
        if not self.eta >= 0:
            raise UserInputError(f"advunlearn eta must be >= 0, got {self.eta}")
        if not self.sampling_guidance >= 1.0:
            raise UserInputError(f"advunlearn sampling_guidance must be >= 1, got {self.sampling_guidance}")
        for key in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise UserInputError(f"advunlearn {key} must be in [0, 1), got {getattr(self, key)}")
        check_common("advunlearn", self.grad_clip, self.ema_decay)


@register("advunlearn")
class AdvUnlearn(GradientMethod):
    """The AdvUnlearn update over a text-to-image adapter (formulas and bank: the module docstring)."""

    Options: ClassVar[type] = AdvUnlearnOptions
    needs_images: ClassVar[bool] = False  # trains on its banks of frozen trajectories
    needs_retain: ClassVar[bool] = True
    #: retain prompts of a model without concepts (the API uses them when --retain is not given)
    default_retain_prompts = staticmethod(default_retain_prompts)

    @staticmethod
    def defaults(unconditional: bool = False, options: dict[str, Any] | None = None,
                 family: str = "t2i", model: Any = None) -> dict[str, Any]:
        """The authors' Stable Diffusion defaults: 1,000 iterations of one row (batch 1), Adam at lr 1e-5, the
        text encoder's layers and final layer norm (``text_encoder_full``); options: warm-up 200, a 30-step PGD
        attack at lr 1e-3 with one prefix token every iteration, γ 0.5 (use ``gamma=0.3`` for nudity).

        On the embedded default ``zoo:digits-t2i`` (and models derived from it), measured values that fit its
        10-minute CPU bar: 200 iterations at lr 1e-4, warm-up 30, a 10-step attack every iteration (the rest as
        the authors'). Measured (``fastunlearn run --model zoo:digits-t2i --method advunlearn --forget 'prompt:a
        handwritten digit zero' --no-eval`` with the options varied, then 16 generations per prompt and
        ``fastunlearn attack`` at its defaults; ESD at its defaults for scale: unlearndiffatk ASR 11/24, paraphrase
        ASR 7.4% of 176):

        - 150 iterations at lr 1e-4: the prompt still draws zeros 6% of the time;
        - 200 iterations at lr 1e-4 (the default): 0% zeros, twelve wordings 0.5%, retained prompts 100%;
          unlearndiffatk ASR 0/24, paraphrase ASR 0.0% of 176;
        - 200 iterations at the authors' lr 1e-5: 0%, 1.5%, 100%; unlearndiffatk 0/24, paraphrase 1.7% of 176 —
          also erased, with less margin on the paraphrases.

        The full figures, with the run's evaluation and several seeds: README, "Robust erasing".
        """
        from fastunlearn.zoo.t2i import is_digits_t2i

        if model is not None and is_digits_t2i(model):
            return {"steps": 200, "batch_size": 1, "lr": 1e-4, "scope": "text-encoder",
                    "options": {"warmup": 30, "attack_steps": 10}}
        return {"steps": 1000, "batch_size": 1, "lr": 1e-5, "scope": "text-encoder"}

    @staticmethod
    def fsdp_unsupported(options: AdvUnlearnOptions) -> str | None:
        return "the attack runs the whole text encoder on every process (use --sharding ddp)"

    def setup(self, adapter: Any, config: MethodConfig) -> None:
        opts: AdvUnlearnOptions = config.options
        if getattr(adapter, "family", "ddpm") != "t2i" or not hasattr(adapter, "encode_prefixed"):
            raise UserInputError("advunlearn erases a prompt's concept through the text encoder of a text-to-image "
                                 "model (Stable Diffusion layout); this model has none: use erasediff or salun")
        if not (config.scope == "text-encoder" or config.scope.startswith("text-encoder:")):
            raise UserInputError(f"advunlearn trains the text encoder: --scope must be text-encoder or text-encoder:K, "
                                 f"got {config.scope!r}")
        forget = sorted(dict.fromkeys(int(c) for c in config.forget_classes))
        if not forget:
            raise UserInputError("advunlearn needs a forget prompt (e.g. --forget 'prompt:a photo of a dog')")
        if adapter.null_label in forget:
            raise UserInputError("advunlearn cannot erase the empty prompt: it is the unconditional branch of the target")
        if opts.ddim_steps > adapter.num_train_timesteps:
            raise UserInputError(f"advunlearn ddim_steps {opts.ddim_steps} exceeds the model's "
                                 f"{adapter.num_train_timesteps} training timesteps")
        retained = sorted(dict.fromkeys(int(c) for c in config.retain_classes if int(c) not in set(forget)))
        if opts.gamma > 0 and opts.retain_batch > 0 and not retained:
            raise UserInputError("advunlearn's retain regulariser needs prompts to keep: give --retain "
                                 "prompt:TEXT[;TEXT] or prompts:FILE (or gamma=0 to train without it)")
        adapter.prefixed_tokens(torch.tensor(forget), opts.attack_tokens)  # room for the prefix, or a clear error
        self.forget_ids = torch.tensor(forget, dtype=torch.long)
        self.retain_ids = torch.tensor(retained, dtype=torch.long) if retained else None
        self.adapter, self.opts = adapter, opts
        # The live adapter is TE₀ until the first step: the banks (x_t and every ε₀ prediction) come from it.
        seed = opts.bank_seed
        self.bank = build_bank(adapter, self.forget_ids, opts.trajectories, opts.ddim_steps, opts.sampling_guidance,
                               bank_seed(seed, 0, 0), opts.bank_batch)
        self.retain_bank = None
        if self.retain_ids is not None and opts.gamma > 0 and opts.retain_batch > 0:
            self.retain_bank = build_bank(adapter, self.retain_ids, opts.retain_trajectories, opts.ddim_steps,
                                          opts.sampling_guidance, bank_seed(seed, 0, 1), opts.bank_batch)
        self.setup_params(adapter, config)
        dim = adapter.token_embedding.shape[1]
        self.prefix = torch.zeros(opts.attack_tokens, dim, device=adapter.device)  # set by the first attack
        self._steps = 0

    # ------------------------------------------------------------------ pieces
    def esd_target(self, rows: torch.Tensor) -> torch.Tensor:
        """ε₀(x_t, ∅) − η (ε₀(x_t, c) − ε₀(x_t, ∅)) of forget-bank rows ``rows``."""
        eps_u, eps_c = self.bank.eps_uncond[rows], self.bank.eps_cond[rows]
        return eps_u - self.opts.eta * (eps_c - eps_u)

    def _random_prefix(self, generator: torch.Generator) -> torch.Tensor:
        """Embeddings of ``attack_tokens`` random non-special tokens (drawn from ``generator``)."""
        table = self.adapter.token_embedding
        special = torch.zeros(table.shape[0], dtype=torch.bool)
        special[self.adapter.special_token_ids] = True
        allowed = (~special).nonzero().reshape(-1)
        pick = allowed[torch.randint(0, allowed.numel(), (self.opts.attack_tokens,), generator=generator)]
        return table[pick.to(table.device)].float().clone()

    def attack(self, batch: Batch) -> None:
        """Refit the adversarial prefix on an attack batch of forget-bank rows (the whole global batch)."""
        o = self.opts
        rows = self.bank.rows(batch.labels, batch.generator, "forget")
        init = self._random_prefix(batch.generator) if (o.attack_init == "random" or self._steps == o.warmup) \
            else self.prefix
        labels = self.forget_ids[rows // self.bank.rows_per_prompt]
        rows = rows.to(self.bank.x_t.device)
        self.prefix, self._attack_loss = fit_soft_prompt(
            self.adapter, labels, self.bank.x_t[rows], self.bank.t[rows], self.bank.eps_cond[rows], init,
            o.attack_steps, o.attack_lr, o.attack)

    # ------------------------------------------------------------------ the step
    def step(self, forget_batch: Batch, retain_batch: Batch) -> dict[str, torch.Tensor]:
        o = self.opts
        attacked = self._steps >= o.warmup
        if attacked and (self._steps - o.warmup) % o.attack_every == 0:
            self.attack(forget_batch)
        bank = self.bank
        rows = forget_batch.local(bank.rows(forget_batch.labels, forget_batch.generator, "forget"))
        labels = self.forget_ids[rows // bank.rows_per_prompt]
        rows = rows.to(bank.x_t.device)
        x, t, target = bank.x_t[rows], bank.t[rows], self.esd_target(rows)
        states = (self.adapter.encode_prefixed(labels, self.prefix, grad=True) if attacked
                  else self.adapter.embeddings(labels.to(x.device)))
        n_forget = x.shape[0]
        if self.retain_bank is not None:
            rb = self.retain_bank
            n = o.retain_batch
            prompts = self.retain_ids[torch.randint(0, len(self.retain_ids), (n,), generator=forget_batch.generator)]
            # every process computes the same retain rows: the all-reduced mean of L_r is L_r itself
            r_rows = rb.rows(prompts, forget_batch.generator, "retain").to(rb.x_t.device)
            x, t = torch.cat([x, rb.x_t[r_rows]]), torch.cat([t, rb.t[r_rows]])
            target = torch.cat([target, rb.eps_cond[r_rows]])
            states = torch.cat([states, self.adapter.embeddings(prompts.to(x.device))])
        pred = self.adapter.predict_embedded(x, t, states)
        loss_f, loss_r = dual_noise_loss(pred, target.to(pred.dtype), n_forget)
        loss = loss_f + o.gamma * loss_r if self.retain_bank is not None else loss_f
        self.backward(loss)
        self._steps += 1
        metrics = {"loss_forget": loss_f.detach()}
        if self.retain_bank is not None:
            metrics["loss_retain"] = loss_r.detach()
        if attacked:
            metrics["loss_attack"] = self._attack_loss
        return {**metrics, **self.apply_update()}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "steps": self._steps, "prefix": self.prefix.detach().cpu().clone(),
                "attack_loss": getattr(self, "_attack_loss", torch.zeros(())).detach().cpu()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._steps = int(state["steps"])
        self.prefix = state["prefix"].to(self.adapter.device)
        self._attack_loss = state["attack_loss"].to(self.adapter.device)


__all__ = ["AdvUnlearn", "AdvUnlearnOptions", "default_retain_prompts", "RETAIN_PROMPTS_FILE"]
