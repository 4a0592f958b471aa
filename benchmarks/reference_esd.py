"""BASELINE for benchmarks only — the authors' ESD training loop, re-implemented on diffusers components. Never
used by the library.

Written from the authors' CompVis training script (``train-scripts/train-esd.py`` in rohitgandikota/erasing, the
code behind the paper's results; described in ``../shared/METHODS.md``), not copied, keeping what makes it cost
what it costs, since that cost is what ``bench_t2i.py`` compares against. One iteration:

1. a prompt ``word`` drawn from the prompts; **three text encodes**: ``emb_0`` = TE(""), ``emb_p`` = TE(word),
   ``emb_n`` = TE(word) (their ``get_learned_conditioning`` per iteration, nothing cached);
2. ``t_enc`` ~ U{0, …, S−1} (S = 50 DDIM steps), ``og = round(t_enc/S·1000)``, ``og_lim = round((t_enc+1)/S·1000)``,
   the training timestep ``t_ddpm`` ~ U{og, …, og_lim−1}; fresh start noise of the latent shape;
3. without gradients, ``z`` = DDIM sampling (η_DDIM 0) of the **model being trained** from that noise under
   ``emb_p`` at ``start_guidance`` 3 (their ``sample_model``, which encodes "" once more for the unconditional
   branch — a fourth text encode; their ``DDIMSampler`` concatenates [uncond; cond] into ONE 2-row UNet call per
   step, and so does this reference: the issue's "CFG as two calls" counts two predictions, the code batches
   them, and the batched form is the cheaper one). Their sampler drops the last of its S timesteps
   (``timesteps[:t_start]`` with ``t_start = -1``: sampling starts at timestep 961 of 1000, not 981) and stops by
   the ``till_T`` rule, breaking after the step whose index + 1 equals ``t_enc``: an iteration runs S − t_enc
   steps (S − 1 when ``t_enc`` = 0) — 25.5 UNet calls of 2 rows on average at S = 50;
4. without gradients, ``e_0`` = ε₀(z, t_ddpm, emb_0) and ``e_p`` = ε₀(z, t_ddpm, emb_p) from the frozen copy;
5. ``e_n`` = ε_θ(z, t_ddpm, emb_n) with gradients; loss = MSE(e_n, e_0 − η (e_p − e_0)) (η = their
   ``negative_guidance``, 1); ``loss.backward()``; Adam; ``loss.item()`` (their progress bar: a host sync).

Everything in fp32, batch 1 (their ``start_code`` of one row). The DDIM schedule is theirs (``make_ddim_timesteps``
"uniform": timesteps 1, 1 + 1000/S, …; ᾱ_prev of the last step = ᾱ₀) on the model's own ``alphas_cumprod``.
Trainable parameters by their ``train_method`` names on diffusers' module names: ``xattn`` = every ``attn2``
(ESD-x) plus the UNet's text-input layers (``encoder_hid_proj``, ``add_embedding``) where it has them — SD 1.x
has none, so there it is exactly their rule, and on a UNet that has them it trains what the library's ``xattn``
scope trains, so time-to-erase compares equal work —; ``noxattn`` (ESD-u) = all but ``attn2``, the text inputs,
the time embedding and the output layers (their ``out.`` / ``time_embed``); ``xattn-kv`` = the ``attn2`` key and
value projections (their diffusers scripts' ESD-x-strict) plus the text inputs; ``full``. A v-prediction UNet's
output is turned into ε (√ᾱ_t v + √(1−ᾱ_t) x_t) so the loss is the ε-space loss of the library (their SD 1.4 is
ε-prediction; the conversion costs nothing measurable).

Random draws come from a ``torch.Generator`` passed to :meth:`ReferenceESD.step` (their code uses Python's
``random`` and torch's global generator), in the order: prompt index, ``t_enc``, ``t_ddpm``, start noise.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F

TEXT_INPUTS = ("encoder_hid_proj.", "add_embedding.")


def authors_scope(name: str, train_method: str) -> bool:
    """Whether the UNet parameter ``name`` trains under the authors' ``train_method`` (module docstring)."""
    text_input = name.startswith(TEXT_INPUTS)
    if train_method == "xattn":
        return "attn2" in name or text_input
    if train_method == "xattn-kv":
        return "attn2.to_k" in name or "attn2.to_v" in name or text_input
    if train_method == "noxattn":
        return not ("attn2" in name or text_input or name.startswith(("conv_out.", "conv_norm_out."))
                    or "time_embedding" in name)
    if train_method == "full":
        return True
    raise ValueError(f"unknown train_method {train_method!r}; expected xattn, xattn-kv, noxattn or full")


def ddim_schedule(alphas_cumprod: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Their DDIM schedule: (timesteps ascending, ᾱ at them, ᾱ_prev) — ``make_ddim_timesteps("uniform")`` + 1 and
    ``make_ddim_sampling_parameters`` at η_DDIM 0."""
    T = alphas_cumprod.shape[0]
    timesteps = torch.arange(0, T, T // steps)[:steps] + 1
    alphas = alphas_cumprod[timesteps]
    alphas_prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[timesteps[:-1]]])
    return timesteps, alphas, alphas_prev


class ReferenceESD:
    """The authors' ESD loop (module docstring): ``setup`` once, then ``step(generator)`` per iteration."""

    def setup(self, unet: torch.nn.Module, text_encoder: torch.nn.Module, tokenizer, scheduler, prompts: Sequence[str],
              train_method: str = "xattn", lr: float = 1e-5, negative_guidance: float = 1.0,
              start_guidance: float = 3.0, ddim_steps: int = 50) -> "ReferenceESD":
        """``unet`` is trained in place; the frozen model is a deep copy taken here (their second model load)."""
        self.unet = unet
        self.frozen = copy.deepcopy(unet).eval().requires_grad_(False)
        self.text_encoder, self.tokenizer = text_encoder.eval(), tokenizer
        self.prompts = list(prompts)
        self.device = next(unet.parameters()).device
        self.unet.train()
        self.params = []
        for name, p in unet.named_parameters():
            p.requires_grad_(authors_scope(name, train_method))
            if p.requires_grad:
                self.params.append(p)
        self.optimizer = torch.optim.Adam(self.params, lr=lr)
        self.eta, self.start_guidance, self.ddim_steps = negative_guidance, start_guidance, ddim_steps
        self.alphas_cumprod = scheduler.alphas_cumprod.detach().to(self.device, torch.float32)
        self.prediction_type = scheduler.config.get("prediction_type", "epsilon")
        self.timesteps, self.ddim_alphas, self.ddim_alphas_prev = ddim_schedule(self.alphas_cumprod.cpu(), ddim_steps)
        self.T = int(self.alphas_cumprod.shape[0])
        size = unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        self.latent_shape = (1, int(unet.config.in_channels), int(h), int(w))
        return self

    # ------------------------------------------------------------------ pieces
    @torch.no_grad()
    def encode(self, prompt: str) -> torch.Tensor:
        """One text-encoder forward, as ``StableDiffusionPipeline.encode_prompt`` computes it."""
        tok = self.tokenizer([prompt], padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        mask = tok.attention_mask.to(self.device) if getattr(self.text_encoder.config, "use_attention_mask", False) \
            else None
        return self.text_encoder(tok.input_ids.to(self.device), attention_mask=mask)[0]

    def apply_model(self, unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """ε(x, t, emb) — their ``apply_model`` (a v-prediction output turned into ε)."""
        out = unet(x, t, encoder_hidden_states=emb).sample
        if self.prediction_type == "epsilon":
            return out
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        return ab.sqrt() * out + (1 - ab).sqrt() * x

    @torch.no_grad()
    def sample_till(self, emb_p: torch.Tensor, start_code: torch.Tensor, till: int) -> torch.Tensor:
        """Their ``sample_model(..., till_T=till)``: guided DDIM with the trained model over the first S − 1
        timesteps (descending from the second largest), one [uncond; cond] call per step, breaking after the step
        whose index + 1 equals ``till``."""
        uc = self.encode("")  # their sample_model encodes the unconditional prompt on every call
        c_in = torch.cat([uc, emb_p])
        x = start_code
        run = self.timesteps[:-1]  # their ddim_sampling's timesteps[:t_start], t_start = -1
        total = len(run)
        for i, step in enumerate(run.flip(0).tolist()):
            index = total - i - 1
            t_in = torch.full((2,), step, device=self.device, dtype=torch.long)
            e_u, e_c = self.apply_model(self.unet, torch.cat([x, x]), t_in, c_in).chunk(2)
            e_t = e_u + self.start_guidance * (e_c - e_u)
            a_t, a_prev = float(self.ddim_alphas[index]), float(self.ddim_alphas_prev[index])
            pred_x0 = (x - (1 - a_t) ** 0.5 * e_t) / a_t ** 0.5
            x = a_prev ** 0.5 * pred_x0 + (1 - a_prev) ** 0.5 * e_t
            if index + 1 == till:
                break
        return x

    # ------------------------------------------------------------------ one iteration
    def draw(self, generator: torch.Generator) -> tuple[str, int, int, torch.Tensor]:
        """(word, t_enc, t_ddpm, start_code) of one iteration, in their order."""
        word = self.prompts[int(torch.randint(len(self.prompts), (1,), generator=generator))]
        t_enc = int(torch.randint(self.ddim_steps, (1,), generator=generator))
        og_num = round(t_enc / self.ddim_steps * self.T)
        og_num_lim = round((t_enc + 1) / self.ddim_steps * self.T)
        t_ddpm = int(torch.randint(og_num, og_num_lim, (1,), generator=generator))
        start_code = torch.randn(self.latent_shape, generator=generator)
        return word, t_enc, t_ddpm, start_code

    def step(self, generator: torch.Generator) -> float:
        word, t_enc, t_ddpm, start_code = self.draw(generator)
        emb_0, emb_p, emb_n = self.encode(""), self.encode(word), self.encode(word)
        self.optimizer.zero_grad()
        start_code = start_code.to(self.device)
        t = torch.full((1,), t_ddpm, device=self.device, dtype=torch.long)
        with torch.no_grad():
            z = self.sample_till(emb_p, start_code, t_enc)
            e_0 = self.apply_model(self.frozen, z, t, emb_0)
            e_p = self.apply_model(self.frozen, z, t, emb_p)
        e_n = self.apply_model(self.unet, z, t, emb_n)
        loss = F.mse_loss(e_n, e_0 - self.eta * (e_p - e_0))
        loss.backward()
        self.optimizer.step()
        return loss.item()

    @staticmethod
    def prefix_calls(t_enc: int, ddim_steps: int = 50) -> int:
        """UNet calls (2 rows each) the sampling prefix of an iteration runs for ``t_enc``."""
        return ddim_steps - 1 if t_enc == 0 else ddim_steps - t_enc


__all__ = ["ReferenceESD", "authors_scope", "ddim_schedule"]
