"""BASELINE for benchmarks only — the authors' AdvUnlearn training iteration, re-implemented over a
:class:`~fastunlearn.models.t2i.T2IAdapter`. Never used by the library.

Written from the authors' code (OPTML-Group/AdvUnlearn: ``train-scripts/AdvUnlearn.py``, ``utils/attack_util.py``
``soft_prompt_attack``, ``utils/get_loss.py`` ``get_train_loss_retain``, ``utils/util.py`` ``sample_model`` /
``id2embedding`` / ``param_choices``, ``utils/text_encoder.py`` ``CustomTextEncoder``; the sampler is the ESD
repository's CompVis ``DDIMSampler`` with its ``till_T`` stop), not copied, keeping what makes it cost what it
costs, since that cost is what ``bench_t2i.py`` compares the library's ``advunlearn`` against. Their run: the
README's command (``--train_method text_encoder_full --retain_train reg --retain_loss_w 0.3 --attack_step 30``)
with the argparse defaults for the rest (k = ``adv_prompt_num`` 1, ``attack_lr`` 1e-3, ``attack_method`` pgd,
``attack_init`` latest, ``adv_prompt_update_step`` 1, ``warmup_iter`` 200, ``lr`` 1e-5, ``retain_batch`` 5,
``start_guidance`` 3, ``negative_guidance`` 1, ``ddim_steps`` 50, 1,000 iterations).

**Their iteration i, in words** (TE₀ = the frozen original text encoder — their ``get_learned_conditioning``,
a tokenizer call and a CLIP forward each time; TE_θ = the text encoder being trained; ε = ``model``'s UNet,
ε₀ = ``model_orig``'s, the same weights: in text-encoder mode ``model``'s UNet is never updated):

1. Refresh (``i % adv_prompt_update_step == 0``): the retain pool is reset when fewer than ``retain_batch``
   prompts are unseen; a concept prompt ``word`` is drawn; its token ids and their word embeddings
   ``one_hot(ids) @ E`` (``id2embedding``: an ``[L, V]·[V, D]`` product with the token-embedding matrix E);
   ``emb_0`` = TE₀(""), ``emb_p`` = TE₀(word).
2. Attack, when ``i ≥ warmup_iter`` and on refresh iterations (``soft_prompt_attack``): TE_θ to ``eval()`` and
   ``requires_grad_(False)``; the word's ids and one-hot embeddings again, laid out as [first token | k
   adversarial slots | the prompt | the rest]; the k slot embeddings initialised from the previous attack's
   (``latest``, after the first attack) or from k random vocabulary tokens (one-hot products); a fresh Adam
   (lr ``attack_lr``) on them; then ``attack_step`` times:

   a. t_enc ~ U{0..S−1}, t_ddpm ~ U{round(T·t_enc/S) .. round(T·(t_enc+1)/S) − 1}, fresh start noise;
   b. without gradients, z = prefix DDIM (η 0) of ``model`` from that noise under ``emb_p`` at guidance 3 until
      ``till_T = t_enc`` — ``sample_model`` encodes TE₀("") once more, then each DDIM step is ONE UNet call on
      [uncond; cond] (2 rows); S − t_enc steps (S − 1 at t_enc 0), like ESD's (see ``reference_esd.py``);
   c. without gradients, e_0 = ε₀(z, t_ddpm, emb_0) — **computed and never used** — and
      e_p = ε₀(z, t_ddpm, emb_p);
   d. states = TE_θ(inputs_embeds = [first, adv, prompt, rest]) (``CustomTextEncoder``: the embeddings module
      on ``inputs_embeds`` adds the positions, the encoder runs with the causal mask, then the final layer norm);
      e_n = ε(z, t_ddpm, states); loss = MSE(e_n, e_p); ``loss.backward()``. **No ``zero_grad`` anywhere in the
      attack**: the slot's gradient accumulates over the steps (Adam sees the running sum), and since
      ``model``'s UNet weights keep ``requires_grad=True`` every backward also computes — and accumulates —
      the gradient of every UNet weight, never used;
   e. ``fast_at``: ``grad.sign_()`` (in place, so the next backward adds to the sign); Adam step;
      ``loss.item()`` for wandb (a host read).

   The attack returns the sequence fed at its LAST step — before that step's Adam update, which is lost.
3. Training: TE_θ ``train()`` and ``requires_grad_(True)`` on **all** its parameters (embeddings too: their
   gradients are computed, only the scope's parameters are in the optimizer); ``opt.zero_grad()``.
4. ``retain_batch`` prompts drawn from the pool without replacement; ``retain_emb_p`` = TE₀(retain prompts);
   ``retain_emb_n`` = TE_θ(one-hot embeddings of the retain prompts), with gradients.
5. ``get_train_loss_retain``: t_enc, t_ddpm as in 2a, start noise for the concept (1 row) and for the retain
   prompts (``retain_batch`` rows); without gradients z = prefix DDIM (batch 1, 2-row calls), e_0, e_p =
   ε₀(z, ·, emb_0 / emb_p), retain_z = prefix DDIM of the retain prompts to the same t_enc (batch 5: 10-row
   calls, "" encoded for 5 rows), retain_e_p = ε₀(retain_z, t_ddpm, retain_emb_p); then with gradients e_n =
   ε(z, t_ddpm, TE_θ(adversarial sequence)) — during warm-up ε(z, t_ddpm, TE_θ(word)) —, retain_e_n =
   ε(retain_z, t_ddpm, retain_emb_n); loss = MSE(e_n, e_0 − η(e_p − e_0)) + γ·MSE(retain_e_n, retain_e_p).
6. ``loss.backward()`` (UNet weight gradients again); ``loss.item()``; ``opt.step()`` (Adam, lr 1e-5).

**UNet calls per iteration** (p = a drawn prefix length, S − t_enc or S − 1; c = 1 call per DDIM step with
batched CFG, 2 with ``cfg="split"``; N = attack steps on the iterations that attack, else 0; B = retain batch)::

    calls = Σ_{j<N} (c·p_j + 3)  +  2·c·p + 5
    rows  = Σ_{j<N} (2·p_j + 3)  +  2·p·(1 + B) + 3 + 2·B

At their defaults (S = 50: E[p] = 25.48; N = 30; B = 5) that is 910.4 calls (1,937.6 rows) per attacking
iteration with batched CFG, 1,725.7 calls with split CFG; 55.96 (or 106.9) per warm-up iteration.
:meth:`ReferenceAdvUnlearn.unet_calls` and :meth:`ReferenceAdvUnlearn.expected_unet_calls` compute these;
:class:`CallCounter` counts what actually runs (forward pre-hooks on both UNets and both text encoders).
Text-encoder forwards per attacking iteration: 2 + 2·N + 5 (7 during warm-up).

**Where this re-implementation differs, and why:**

- Components: a diffusers ``UNet2DConditionModel`` and the adapter's text encoder, through the adapter
  (:meth:`~fastunlearn.models.t2i.T2IAdapter.predict_embedded`, ``encode_prompts``, ``prefixed_tokens``,
  ``scratch_copy``), instead of CompVis LDMs. Their three CLIP copies (``model``'s and ``model_orig``'s
  ``cond_stage_model``, the trained one) become two: one frozen copy serves every TE₀ encode — the same
  forwards, one copy fewer in memory. Two UNet copies, like theirs: ``model`` (weights ``requires_grad=True``,
  samples the prefix and computes e_n) and ``frozen`` (e_0, e_p, retain_e_p).
- CFG: their sampler batches [uncond; cond] into one UNet call per DDIM step, and so does ``cfg="batched"``
  (the default, as in ``reference_esd.py``). The issue describes "CFG as two calls": ``cfg="split"`` runs
  the unconditional and the conditional rows as two calls — the same rows, more calls. Both are counted.
- ``inputs_embeds``: ``CLIPTextModel`` takes no ``inputs_embeds``; the word embeddings (the one-hot products,
  as theirs) replace the token-embedding layer's output through a forward hook, and the model's own forward
  runs around them — positions added, causal mask, final layer norm: what their ``CustomTextEncoder`` computes.
  BERT-style encoders (``zoo:digits-t2i``) get the same hook, with their attention mask where the adapter
  uses one. The one-hot product keeps their view of E, taken while the encoder is frozen, so its gradient
  is computed exactly when theirs is (during training, not during the attack) and dropped.
- Prompt layout: the adapter's ``prefixed_tokens`` (k slots after the first token, the prompt whole, the last
  k padding positions dropped). Theirs splits by ``len(word.split())`` *words* and drops the k tokens after
  them: for CLIP prompts of one token per word, whose padding is the end token, the two are the same ids; for
  a word the tokenizer splits, theirs would cut k of the prompt's own tokens. Same cost either way.
- Random draws come from the ``torch.Generator`` given to :meth:`ReferenceAdvUnlearn.step` (theirs: Python's
  ``random`` and torch's global generator), in the order: concept prompt (refresh), random slot tokens
  (``random`` init), per attack step (t_enc, t_ddpm, start noise), retain prompts, then (t_enc, t_ddpm,
  concept noise, retain noise). The retain pool is reset whenever fewer than a batch of prompts are unseen
  (theirs checks only on refresh iterations, and with ``adv_prompt_update_step`` > 1 would then reshape a short
  batch and fail).
- Left out, as I/O rather than training: wandb logging, the progress bar, ``save_history`` (their loop rewrites
  loss.txt and re-plots the whole loss curve with matplotlib every iteration) and the checkpoints every
  ``save_interval``. One ``.item()`` per attack step and per training step are kept (theirs reads the same
  training loss four times).
- ``retain_train="reg"`` (the README's commands; γ·retain inside the step) only — the argparse default
  ``iter`` (a separate retain step after each update) is not implemented. γ defaults to the README's 0.3 (the
  argparse default is 1.0).
- A v-prediction UNet's output is turned into ε by the adapter, so losses are ε-space losses (SD 1.4 predicts ε).
- Scopes: the adapter's ``text-encoder`` is their ``text_encoder_full`` with ``component=all`` (the layers and
  the final layer norm); ``text-encoder:K`` is ``text_encoder_layer0…K-1`` without ``--norm_layer``.

Where their code and the paper differ, this follows the code (METHODS.md has the paper's side): the attack
accumulates its gradient instead of taking fresh ones, ``fast_at`` is Adam on the sign of that running sum
rather than a signed step, the training uses the slot from before the attack's last update, e_0 is computed
in every attack step for nothing, and the UNet weight gradients are computed and accumulated throughout.
Everything runs in fp32 (the copies are cast, autocast is disabled inside a step).
"""
from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from reference_esd import ReferenceESD, ddim_schedule

from fastunlearn.errors import UserInputError

CFG_MODES = ("batched", "split")
ATTACK_METHODS = ("pgd", "fast_at")
ATTACK_INITS = ("latest", "random")


# ---------------------------------------------------------------------- counting
class CallCounter:
    """Forward pre-hooks on named modules: calls and rows (the first input's batch size) per module."""

    def __init__(self, modules: dict[str, torch.nn.Module]):
        self.calls = {name: 0 for name in modules}
        self.rows = {name: 0 for name in modules}
        self._handles = [m.register_forward_pre_hook(self._hook(name), with_kwargs=True)
                         for name, m in modules.items()]

    def _hook(self, name: str):
        def count(module, args, kwargs):
            first = args[0] if args else next(iter(kwargs.values()))
            self.calls[name] += 1
            self.rows[name] += int(first.shape[0])
        return count

    def reset(self) -> None:
        for d in (self.calls, self.rows):
            for k in d:
                d[k] = 0

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@dataclass
class IterationStats:
    """What one iteration ran: the prefix lengths drawn, UNet and text-encoder calls counted, the loss."""

    iteration: int
    attacked: bool
    attack_prefix: list[int]  #: the prefix DDIM length of each attack step (empty when the iteration did not attack)
    train_prefix: int  #: the prefix length of the training step's x_t (concept and retain prompts alike)
    unet_calls: int
    unet_rows: int
    text_calls: int
    text_rows: int
    calls_by: dict[str, int] = field(default_factory=dict)  #: {"model", "frozen", "te", "te_frozen"}: calls
    loss: float = float("nan")


@dataclass
class _Prompt:
    """A tokenised prompt as their code holds it: ids, attention mask, word embeddings ``one_hot(ids) @ E``."""

    ids: torch.Tensor  #: [n, L]
    mask: torch.Tensor  #: [n, L]
    embeds: torch.Tensor  #: [n, L, D]
    k: int = 0  #: adversarial slots after the first token


# ---------------------------------------------------------------------- the reference
class ReferenceAdvUnlearn:
    """The authors' AdvUnlearn loop (module docstring): ``setup`` once, then ``step(generator)`` per iteration."""

    def setup(self, adapter: Any, concept_ids: Sequence[int] | torch.Tensor, retain_ids: Sequence[int] | torch.Tensor,
              *, scope: str = "text-encoder", lr: float = 1e-5, retain_loss_w: float = 0.3, retain_batch: int = 5,
              attack_steps: int = 30, attack_lr: float = 1e-3, adv_prompt_num: int = 1, attack_method: str = "pgd",
              attack_init: str = "latest", warmup_iter: int = 200, adv_prompt_update_step: int = 1,
              start_guidance: float = 3.0, negative_guidance: float = 1.0, ddim_steps: int = 50,
              cfg: str = "batched") -> "ReferenceAdvUnlearn":
        """``adapter``: a :class:`~fastunlearn.models.t2i.T2IAdapter`, left untouched (the reference trains a copy).
        ``concept_ids`` / ``retain_ids``: prompt ids of its prompt table (:meth:`T2IAdapter.prompt_ids`)."""
        if getattr(adapter, "family", None) != "t2i":
            raise UserInputError("the AdvUnlearn reference needs a text-to-image model (a T2IAdapter)")
        if cfg not in CFG_MODES:
            raise UserInputError(f"cfg must be one of {', '.join(CFG_MODES)}, got {cfg!r}")
        if attack_method not in ATTACK_METHODS:
            raise UserInputError(f"attack_method must be one of {', '.join(ATTACK_METHODS)}, got {attack_method!r}")
        if attack_init not in ATTACK_INITS:
            raise UserInputError(f"attack_init must be one of {', '.join(ATTACK_INITS)}, got {attack_init!r}")
        if not (scope == "text-encoder" or scope.startswith("text-encoder:")):
            raise UserInputError(f"the AdvUnlearn reference trains the text encoder: scope must be text-encoder or "
                                 f"text-encoder:K, got {scope!r}")
        for name, value, least in (("attack_steps", attack_steps, 0), ("adv_prompt_num", adv_prompt_num, 1),
                                   ("warmup_iter", warmup_iter, 0), ("ddim_steps", ddim_steps, 1),
                                   ("adv_prompt_update_step", adv_prompt_update_step, 1),
                                   ("retain_batch", retain_batch, 1)):
            if int(value) < least:
                raise UserInputError(f"{name} must be >= {least}, got {value}")
        concept = torch.as_tensor(concept_ids, dtype=torch.long).reshape(-1)
        retain = torch.as_tensor(retain_ids, dtype=torch.long).reshape(-1)
        if concept.numel() == 0:
            raise UserInputError("no concept prompt: give at least one prompt id to erase")
        if retain.numel() < retain_batch:
            raise UserInputError(f"the retain set has {retain.numel()} prompts, fewer than a retain batch of "
                                 f"{retain_batch}: add retain prompts or lower retain_batch")
        adapter.check_labels(concept, "concept prompt ids")
        adapter.check_labels(retain, "retain prompt ids")
        if (concept == adapter.null_label).any():
            raise UserInputError("the concept prompt cannot be the empty prompt (id 0)")

        self.concept, self.retain = concept, retain
        self.k, self.n_attack, self.attack_lr = int(adv_prompt_num), int(attack_steps), float(attack_lr)
        self.attack_method, self.attack_init, self.cfg = attack_method, attack_init, cfg
        self.warmup, self.update_every = int(warmup_iter), int(adv_prompt_update_step)
        self.B, self.gamma = int(retain_batch), float(retain_loss_w)
        self.start_guidance, self.eta, self.S = float(start_guidance), float(negative_guidance), int(ddim_steps)

        # ``model`` (their ESD model: samples, computes e_n, UNet weights requiring grad, text encoder trained)
        # and ``frozen`` (their model_orig and the frozen CLIP of every get_learned_conditioning), fp32 copies.
        self.model, self.frozen = adapter.scratch_copy(), adapter.scratch_copy()
        for a in (self.model, self.frozen):
            a.unet.float().eval()
            a.text_encoder.float().eval()
        self.model.unet.requires_grad_(True)
        self.frozen.unet.requires_grad_(False)
        self.frozen.text_encoder.requires_grad_(False)
        self.text_encoder = self.model.text_encoder
        self.text_encoder.requires_grad_(False)  # their CustomTextEncoder freezes the encoder ...
        self.all_embeddings = self.text_encoder.get_input_embeddings().weight.unsqueeze(0)  # ... before this view
        self.vocab = int(self.all_embeddings.shape[1])
        self.params = [p for _, p in self.model.named_parameters(scope)]
        self.optimizer = torch.optim.Adam(self.params, lr=float(lr))

        self.device = self.model.device
        alphas = adapter.scheduler.alphas_cumprod.detach().float().cpu()
        self.T = int(alphas.shape[0])
        self.timesteps, self.ddim_alphas, self.ddim_alphas_prev = ddim_schedule(alphas, self.S)
        self.latent_shape = tuple(adapter.latent_shape)
        self.counter = CallCounter({"model": self.model.unet, "frozen": self.frozen.unet,
                                    "te": self.text_encoder, "te_frozen": self.frozen.text_encoder})

        self.iteration, self.attack_round = 0, 0
        self.adv_seq: torch.Tensor | None = None  # the attack's output sequence [1, L, D] (their adv_word_embd)
        self.adv_prompt: _Prompt | None = None
        self.word: int | None = None
        self.word_prompt: _Prompt | None = None
        self.emb_0 = self.emb_p = None
        self._unseen = list(range(self.retain.numel()))
        self.last: IterationStats | None = None
        return self

    # ------------------------------------------------------------------ text
    def encode_frozen(self, prompt_ids: Sequence[int]) -> torch.Tensor:
        """TE₀ of prompt ids — their ``model_orig.get_learned_conditioning``: tokenise, one frozen forward."""
        return self.frozen.encode_prompts([self.model.prompt(int(i)) for i in prompt_ids], grad=False)

    def prompt(self, prompt_ids: Sequence[int], k: int = 0) -> _Prompt:
        """Their tokenisation + ``id2embedding``: ids (with ``k`` slots after the first token) and the word
        embeddings as a one-hot product with the encoder's token-embedding matrix."""
        ids, mask = self.model.prefixed_tokens(torch.as_tensor(list(prompt_ids), dtype=torch.long), k)
        return _Prompt(ids, mask, self.word_embeddings(ids), k)

    def word_embeddings(self, ids: torch.Tensor) -> torch.Tensor:
        """``one_hot(ids) @ E`` — their ``id2embedding``, ``[n, L, D]``."""
        one_hot = F.one_hot(ids.reshape(-1), num_classes=self.vocab).float().unsqueeze(0)
        return (one_hot @ self.all_embeddings).reshape(*ids.shape, -1)

    def encode_embeds(self, ids: torch.Tensor, mask: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """TE_θ on word embeddings ``embeds`` ``[n, L, D]`` (their ``custom_text_encoder(input_ids, inputs_embeds)``):
        they replace the token-embedding layer's output; the encoder's own forward runs around them."""
        enc = self.text_encoder
        use_mask = mask if getattr(enc.config, "use_attention_mask", False) else None
        handle = enc.get_input_embeddings().register_forward_hook(
            lambda module, inputs, output: embeds.to(output.dtype))
        try:
            return enc(ids, attention_mask=use_mask)[0]
        finally:
            handle.remove()

    # ------------------------------------------------------------------ sampling
    def draw(self, generator: torch.Generator, rows: Sequence[int] = (1,)) -> tuple[int, int, list[torch.Tensor]]:
        """(t_enc, t_ddpm, start noises of ``rows`` rows each), in their order."""
        t_enc = int(torch.randint(self.S, (1,), generator=generator))
        og, og_lim = round(t_enc / self.S * self.T), round((t_enc + 1) / self.S * self.T)
        t_ddpm = int(torch.randint(og, og_lim, (1,), generator=generator))
        starts = [torch.randn((n, *self.latent_shape), generator=generator).to(self.device) for n in rows]
        return t_enc, t_ddpm, starts

    @torch.no_grad()
    def sample_till(self, cond: torch.Tensor, start: torch.Tensor, till: int) -> torch.Tensor:
        """Their ``sample_model(..., till_T=till)`` on ``model``: TE₀("") for the rows, then guided DDIM (η 0) over
        the first S − 1 timesteps (descending from the second largest), breaking after the step whose index + 1
        equals ``till``; one [uncond; cond] UNet call per step (``cfg="batched"``) or two (``"split"``)."""
        n = start.shape[0]
        uc = self.encode_frozen([self.model.null_label] * n)
        x = start
        run = self.timesteps[:-1]
        total = len(run)
        for i, step in enumerate(run.flip(0).tolist()):
            index = total - i - 1
            if self.cfg == "batched":
                t_in = torch.full((2 * n,), step, device=self.device, dtype=torch.long)
                e_u, e_c = self.model.predict_embedded(torch.cat([x, x]), t_in, torch.cat([uc, cond])).chunk(2)
            else:
                t_in = torch.full((n,), step, device=self.device, dtype=torch.long)
                e_u = self.model.predict_embedded(x, t_in, uc)
                e_c = self.model.predict_embedded(x, t_in, cond)
            e_t = e_u + self.start_guidance * (e_c - e_u)
            a_t, a_prev = float(self.ddim_alphas[index]), float(self.ddim_alphas_prev[index])
            pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t ** 0.5
            x = a_prev ** 0.5 * pred_x0 + (1 - a_prev) ** 0.5 * e_t
            if index + 1 == till:
                break
        return x

    def _t(self, t_ddpm: int, n: int) -> torch.Tensor:
        return torch.full((n,), t_ddpm, device=self.device, dtype=torch.long)

    # ------------------------------------------------------------------ the attack
    def attack_step(self, adv: torch.Tensor, opt: torch.optim.Optimizer, prompt: _Prompt, z: torch.Tensor,
                    t: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of their ``soft_prompt_attack`` after x_t is drawn: the sequence [first, adv, rest] through
        TE_θ, e_n = ε(z, t, ·), loss = MSE(e_n, target), ``backward`` (no ``zero_grad``: ``adv.grad`` and every
        UNet weight's ``.grad`` accumulate), ``fast_at`` signs the accumulated gradient in place, Adam steps.
        Returns (loss before the update, the sequence fed — their returned ``input_adv_word_embedding``)."""
        seq = torch.cat([prompt.embeds[:, :1], adv, prompt.embeds[:, 1 + prompt.k:]], 1)
        e_n = self.model.predict_embedded(z, t, self.encode_embeds(prompt.ids, prompt.mask, seq))
        loss = F.mse_loss(e_n, target)
        loss.backward()
        if self.attack_method == "fast_at":
            adv.grad.sign_()
        opt.step()
        return loss.detach(), seq

    def init_adv(self, generator: torch.Generator) -> torch.Tensor:
        """Their ``init_adv``: the previous attack's slot embeddings (``latest``, after the first attack) or the
        embeddings of k random vocabulary tokens (a one-hot product), as a fresh leaf."""
        if self.attack_init == "latest" and self.adv_seq is not None:
            init = self.adv_seq[:, 1:1 + self.k].detach().clone()
        else:
            ids = torch.randint(0, self.vocab, (1, self.k), generator=generator).to(self.device)
            init = self.word_embeddings(ids).detach().clone()
        return init.requires_grad_(True)

    def attack(self, generator: torch.Generator) -> list[int]:
        """Their ``soft_prompt_attack`` (module docstring, step 2); sets ``adv_seq`` / ``adv_prompt``, returns the
        prefix length of every step."""
        self.text_encoder.eval()
        self.text_encoder.requires_grad_(False)
        prompt = self.prompt([self.word], self.k)
        adv = self.init_adv(generator)
        opt = torch.optim.Adam([adv], lr=self.attack_lr)
        prefix = []
        seq = None
        for _ in range(self.n_attack):
            t_enc, t_ddpm, (start,) = self.draw(generator)
            prefix.append(ReferenceESD.prefix_calls(t_enc, self.S))
            t = self._t(t_ddpm, 1)
            with torch.no_grad():
                z = self.sample_till(self.emb_p, start, t_enc)
                self.frozen.predict_embedded(z, t, self.emb_0)  # their e_0: computed, never used
                e_p = self.frozen.predict_embedded(z, t, self.emb_p)
            loss, seq = self.attack_step(adv, opt, prompt, z, t, e_p)
            loss.item()  # their wandb.log(loss.item()): a host read per step
        if seq is None:  # zero attack steps: their loop returns an unbound name; here the initial slot is kept
            seq = torch.cat([prompt.embeds[:, :1], adv, prompt.embeds[:, 1 + self.k:]], 1)
        self.adv_seq, self.adv_prompt = seq, prompt
        self.attack_round += 1
        return prefix

    # ------------------------------------------------------------------ the training step
    def draw_retain(self, generator: torch.Generator) -> list[int]:
        """``retain_batch`` retain prompt ids, without replacement within a pass over the set."""
        if len(self._unseen) < self.B:
            self._unseen = list(range(self.retain.numel()))
        order = torch.randperm(len(self._unseen), generator=generator)[:self.B].tolist()
        picked = [self._unseen[j] for j in order]
        for j in picked:
            self._unseen.remove(j)
        return [int(self.retain[j]) for j in picked]

    def train_step(self, generator: torch.Generator, adversarial: bool) -> tuple[torch.Tensor, int]:
        """Their steps 3–6 up to the backward: returns (loss, the prefix length drawn)."""
        self.text_encoder.train()
        self.text_encoder.requires_grad_(True)
        self.optimizer.zero_grad()
        retain_words = self.draw_retain(generator)
        retain_emb_p = self.encode_frozen(retain_words)
        rp = self.prompt(retain_words)
        retain_emb_n = self.encode_embeds(rp.ids, rp.mask, rp.embeds)
        if not adversarial:
            wp = self.word_prompt
            emb_n = self.encode_embeds(wp.ids, wp.mask, wp.embeds)
        t_enc, t_ddpm, (start, retain_start) = self.draw(generator, (1, self.B))
        t1, tb = self._t(t_ddpm, 1), self._t(t_ddpm, self.B)
        with torch.no_grad():
            z = self.sample_till(self.emb_p, start, t_enc)
            e_0 = self.frozen.predict_embedded(z, t1, self.emb_0)
            e_p = self.frozen.predict_embedded(z, t1, self.emb_p)
            retain_z = self.sample_till(retain_emb_p, retain_start, t_enc)
            retain_e_p = self.frozen.predict_embedded(retain_z, tb, retain_emb_p)
        if adversarial:
            ap = self.adv_prompt
            emb_n = self.encode_embeds(ap.ids, ap.mask, self.adv_seq)
        e_n = self.model.predict_embedded(z, t1, emb_n)
        unlearn = F.mse_loss(e_n, e_0 - self.eta * (e_p - e_0))
        retain_e_n = self.model.predict_embedded(retain_z, tb, retain_emb_n)
        loss = unlearn + self.gamma * F.mse_loss(retain_e_n, retain_e_p)
        return loss, ReferenceESD.prefix_calls(t_enc, self.S)

    # ------------------------------------------------------------------ one iteration
    def step(self, generator: torch.Generator) -> float:
        """Iteration ``self.iteration`` of their loop (module docstring); ``self.last`` holds its statistics."""
        i = self.iteration
        self.counter.reset()
        with torch.autocast(self.device.type, enabled=False):
            if i % self.update_every == 0:
                self.word = int(self.concept[int(torch.randint(self.concept.numel(), (1,), generator=generator))])
                self.word_prompt = self.prompt([self.word])
                self.emb_0 = self.encode_frozen([self.model.null_label])
                self.emb_p = self.encode_frozen([self.word])
            attacked = i >= self.warmup and i % self.update_every == 0
            attack_prefix = self.attack(generator) if attacked else []
            # Adversarial training once an attack has run (theirs: i >= warmup_iter, which fails on an undefined
            # prompt when warmup_iter is not a multiple of adv_prompt_update_step).
            loss, train_prefix = self.train_step(generator, adversarial=self.adv_seq is not None)
            loss.backward()
            value = loss.item()
            self.optimizer.step()
        c = self.counter
        self.last = IterationStats(
            iteration=i, attacked=attacked, attack_prefix=attack_prefix, train_prefix=train_prefix,
            unet_calls=c.calls["model"] + c.calls["frozen"], unet_rows=c.rows["model"] + c.rows["frozen"],
            text_calls=c.calls["te"] + c.calls["te_frozen"], text_rows=c.rows["te"] + c.rows["te_frozen"],
            calls_by=dict(c.calls), loss=value)
        self.iteration += 1
        return value

    @property
    def trained_adapter(self) -> Any:
        """An adapter over the trained text encoder and the unchanged UNet, for generating from the result: it
        encodes every prompt afresh (the prompt table it shares with the caller's adapter holds frozen encodings)."""
        view = copy.copy(self.model)
        view.train_text_encoder = True
        return view

    # ------------------------------------------------------------------ the formulas
    def unet_calls(self, attack_prefix: Sequence[float], train_prefix: float) -> tuple[float, float]:
        """(calls, rows) of one iteration with these prefix lengths (module docstring's formula)."""
        return unet_calls(attack_prefix, train_prefix, self.B, self.cfg)

    def expected_unet_calls(self, attacked: bool = True) -> tuple[float, float]:
        """(E[calls], E[rows]) of an iteration that attacks (or, ``attacked=False``, of one that does not)."""
        return expected_unet_calls(self.n_attack if attacked else 0, self.S, self.B, self.cfg)


def unet_calls(attack_prefix: Sequence[float], train_prefix: float, retain_batch: int, cfg: str = "batched"
               ) -> tuple[float, float]:
    """(UNet calls, UNet rows) of one iteration of their loop: per attack step ``c·p + 3`` calls of ``2p + 3``
    rows, the training step ``2·c·p + 5`` calls of ``2p(1 + B) + 3 + 2B`` rows (c = 1 batched, 2 split)."""
    if cfg not in CFG_MODES:
        raise UserInputError(f"cfg must be one of {', '.join(CFG_MODES)}, got {cfg!r}")
    c, B, p = (1 if cfg == "batched" else 2), int(retain_batch), train_prefix
    calls = sum(c * q + 3 for q in attack_prefix) + 2 * c * p + 5
    rows = sum(2 * q + 3 for q in attack_prefix) + 2 * p * (1 + B) + 3 + 2 * B
    return calls, rows


def expected_unet_calls(attack_steps: int, ddim_steps: int = 50, retain_batch: int = 5, cfg: str = "batched"
                        ) -> tuple[float, float]:
    """:func:`unet_calls` at the expected prefix length E[p] over t_enc ~ U{0..S−1} (25.48 at S = 50)."""
    e_p = sum(ReferenceESD.prefix_calls(t, ddim_steps) for t in range(ddim_steps)) / ddim_steps
    return unet_calls([e_p] * int(attack_steps), e_p, retain_batch, cfg)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_reference(adapter: Any, concept_ids: Sequence[int] | torch.Tensor, retain_ids: Sequence[int] | torch.Tensor,
                  iterations: int, attack_steps: int = 30, *, seed: int = 0, warmup_iter: int = 0,
                  **options: Any) -> dict[str, Any]:
    """Run ``iterations`` iterations of the reference on a copy of ``adapter`` and time each (wall clock, the
    device synchronised around it). ``warmup_iter`` defaults to 0 here: every iteration attacks, their steady
    state after the 200 warm-up iterations. ``options``: the other :meth:`ReferenceAdvUnlearn.setup` arguments.

    Returns per-iteration lists (``seconds``, ``unet_calls``, ``unet_rows``, ``text_calls``, ``attack_prefix``,
    ``train_prefix``, ``attacked``, ``loss``), their means (``mean_s``, ``mean_unet_calls``, ``mean_unet_rows``),
    ``expected_unet_calls`` / ``expected_unet_rows`` at E[p] for an attacking iteration, and ``reference`` (the
    trained :class:`ReferenceAdvUnlearn`)."""
    if int(iterations) < 1:
        raise UserInputError(f"iterations must be >= 1, got {iterations}")
    ref = ReferenceAdvUnlearn().setup(adapter, concept_ids, retain_ids, attack_steps=attack_steps,
                                      warmup_iter=warmup_iter, **options)
    generator = torch.Generator().manual_seed(int(seed))
    out: dict[str, Any] = {k: [] for k in ("seconds", "unet_calls", "unet_rows", "text_calls", "attack_prefix",
                                           "train_prefix", "attacked", "loss")}
    for _ in range(int(iterations)):
        _sync(ref.device)
        t0 = time.perf_counter()
        ref.step(generator)
        _sync(ref.device)
        out["seconds"].append(time.perf_counter() - t0)
        s = ref.last
        for key in ("unet_calls", "unet_rows", "text_calls", "attack_prefix", "train_prefix", "attacked", "loss"):
            out[key].append(getattr(s, key))
    calls, rows = ref.expected_unet_calls(attacked=True)
    out.update(mean_s=statistics.fmean(out["seconds"]), mean_unet_calls=statistics.fmean(out["unet_calls"]),
               mean_unet_rows=statistics.fmean(out["unet_rows"]), expected_unet_calls=calls,
               expected_unet_rows=rows, reference=ref)
    return out


__all__ = ["CFG_MODES", "CallCounter", "IterationStats", "ReferenceAdvUnlearn", "expected_unet_calls",
           "run_reference", "unet_calls"]
