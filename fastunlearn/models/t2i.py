"""``T2IAdapter``: the Adapter contract over a text-to-image diffusion model in the Stable Diffusion layout.

Components: a diffusers ``UNet2DConditionModel`` (the denoiser), a text encoder and its tokenizer (CLIP for
SD 1.x/2.x, the MiniLM BERT for ``zoo:digits-t2i``), a noise scheduler, and an ``AutoencoderKL`` when the model
is latent (every SD model; ``vae=None`` is a pixel-space model). It loads a ``StableDiffusionPipeline``
directory or hub id, a pipeline object, or ``zoo:digits-t2i``, and saves a complete pipeline directory that the
stock ``StableDiffusionPipeline.from_pretrained`` loads back.

**Conditioning is a prompt id.** Methods and the engine move integer labels around (batches, pseudo-labels,
shards); on this family a label is an index into the adapter's *prompt table*: :meth:`T2IAdapter.prompt_ids`
registers prompts (each checked: non-empty, within the tokenizer's length — never silently truncated) and
returns their ids. Id 0 is always the empty prompt ``""``, the unconditional branch of classifier-free
guidance (:attr:`T2IAdapter.null_label`). Each distinct prompt is encoded once, exactly as
``StableDiffusionPipeline.encode_prompt`` does (padding to ``model_max_length``, the attention mask only when
the encoder's config sets ``use_attention_mask``, the last hidden state), and cached on the model's device;
:meth:`T2IAdapter.predict` looks the rows up. The cache holds encodings of the *frozen* text encoder; a run
that trains the text encoder (scope ``text-encoder``) encodes on every call instead, with gradients.

**Samples are latents.** ``noised_batch`` and ``predict`` work in the denoiser's space (latents scaled by the
VAE's ``scaling_factor``); :meth:`T2IAdapter.encode_images` maps [-1, 1] images to it once (the posterior
mean), and :meth:`T2IAdapter.generate` returns decoded images in [-1, 1], like every adapter's ``generate``.

**Predictions are ε.** :meth:`predict` returns the noise prediction whatever the scheduler's
``prediction_type``: a v-prediction model's v is turned into ε = √ᾱ_t v + √(1−ᾱ_t) x_t (linear in the model's
output, so gradients flow), so every method's loss is the same ε-space loss on every model family.

Parameter scopes (:data:`SCOPES`): ``all`` (the UNet), ``xattn`` (ESD-x: every layer that reads the text —
the cross-attention blocks ``attn2``, plus ``encoder_hid_proj`` and a text-time ``add_embedding`` where the
UNet has them), ``xattn-kv`` (ESD-x-strict: the key and value projections of ``attn2`` and those text inputs),
``noxattn`` (ESD-u: the UNet except the text-reading layers, the time embedding and the output layers, as the
authors' code selects), ``attention`` (every attention block), ``text-encoder`` (the text encoder's transformer
layers and its final layer norm where it has one — token and position embeddings frozen, AdvUnlearn's
``text_encoder_full``), ``text-encoder:K`` (its first K layers, AdvUnlearn's ``text_encoder_layer0…K-1``).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from fastunlearn.errors import UserInputError
from fastunlearn.models.ddpm import NoisedBatch
from fastunlearn.models.safe_loading import refuse_non_finite

SIDECAR = "fastunlearn.json"
SCOPES = ("all", "xattn", "xattn-kv", "noxattn", "attention", "text-encoder", "text-encoder:K")
#: Default classifier-free guidance of :meth:`T2IAdapter.generate` (and of evaluation).
DEFAULT_GUIDANCE = 3.0
_TEXT_INPUTS = ("encoder_hid_proj.", "add_embedding.")


@dataclass(frozen=True)
class Trajectory:
    """Every step of deterministic DDIM sampling runs, recorded (see :meth:`T2IAdapter.ddim_trajectory`).

    Shapes: ``x_t`` ``[S, N, C, h, w]`` (the input of step s), ``t`` ``[S]``, ``eps_uncond`` / ``eps_cond``
    ``[S, N, C, h, w]`` (ε predictions at x_t under the empty prompt and under the row's prompt), ``labels``
    ``[N]`` (prompt ids), ``final`` ``[N, C, h, w]`` (the sample the trajectory ends at).
    """

    x_t: torch.Tensor
    t: torch.Tensor
    eps_uncond: torch.Tensor
    eps_cond: torch.Tensor
    labels: torch.Tensor
    final: torch.Tensor


class T2IAdapter:
    """A text-conditioned ``UNet2DConditionModel`` with its text encoder, tokenizer, scheduler and VAE.

    Args:
        unet: the denoiser (ε- or v-prediction, per ``scheduler.config.prediction_type``).
        text_encoder, tokenizer: the prompt encoder (any ``transformers`` model whose first output is the
            token states, e.g. ``CLIPTextModel``, ``BertModel``) and its tokenizer.
        scheduler: the training noise schedule (its ``alphas_cumprod`` and ``prediction_type``).
        vae: the ``AutoencoderKL`` of a latent model, or None (pixel space).
        concepts: what the model knows, for default retain sets and evaluation (``zoo:digits-t2i`` records
            ``{"classes": [...], "template": "a handwritten digit {}", "paraphrases": {...}}``); None for SD.
        source: the directory the components were loaded from (unchanged components are hard-linked from it
            on save), or None.
        extra: the pipeline's other components (``safety_checker``, ``feature_extractor``, ...), saved as they are.
    """

    family = "t2i"

    def __init__(self, unet: Any, text_encoder: Any, tokenizer: Any, scheduler: Any, vae: Any = None,
                 concepts: Mapping[str, Any] | None = None, source: Path | None = None,
                 extra: Mapping[str, Any] | None = None):
        from diffusers import UNet2DConditionModel

        if not isinstance(unet, UNet2DConditionModel):
            raise UserInputError(f"T2IAdapter needs a diffusers UNet2DConditionModel, got {type(unet).__name__}")
        prediction = scheduler.config.get("prediction_type", "epsilon")
        if prediction not in ("epsilon", "v_prediction"):
            raise UserInputError(f"only epsilon- and v-prediction models are supported; this one predicts {prediction!r}")
        self.unet = unet
        self.text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self.vae = vae
        self.concepts = dict(concepts) if concepts else None
        self.source = Path(source) if source is not None else None
        self.extra = dict(extra or {})
        self.prediction_type = prediction
        alphas = scheduler.alphas_cumprod.detach().to(torch.float32)
        self._sqrt_ab = alphas.sqrt()
        self._sqrt_1mab = (1.0 - alphas).sqrt()
        self._prompts: list[str] = []
        self._index: dict[str, int] = {}
        self._shared: dict[str, torch.Tensor | None] = {"table": None}  # see _table
        self.train_text_encoder = False
        self.text_encoder.requires_grad_(False)
        self.text_encoder.eval()
        if self.vae is not None:
            self.vae.requires_grad_(False)
            self.vae.eval()
        self.prompt_ids([""])

    # ------------------------------------------------------------------ description
    conditional = True

    @property
    def null_label(self) -> int:
        """The id of the empty prompt (the unconditional branch of classifier-free guidance)."""
        return 0

    @property
    def num_classes(self) -> int | None:
        """Number of named concepts (``concepts["classes"]``), or None."""
        return len(self.concepts["classes"]) if self.concepts and self.concepts.get("classes") else None

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` the denoiser takes."""
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(self.unet.config.in_channels), int(h), int(w)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the images the model generates (and of its training images)."""
        c, h, w = self.latent_shape
        if self.vae is None:
            return c, h, w
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(self.vae.config.out_channels), h * factor, w * factor

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def max_prompt_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    @property
    def device(self) -> torch.device:
        return next(self._module.parameters()).device

    @property
    def _module(self) -> torch.nn.Module:
        return getattr(self.unet, "_orig_mod", self.unet)

    # the family-neutral name the engine reads (every adapter has one: the network it moves, compiles and checks)
    @property
    def network(self) -> torch.nn.Module:
        """The denoiser (``unet``), possibly a ``torch.compile`` wrapper; assignable."""
        return self.unet

    @network.setter
    def network(self, value: torch.nn.Module) -> None:
        self.unet = value

    def to(self, device: torch.device | str) -> "T2IAdapter":
        self.unet.to(device)
        self.text_encoder.to(device)
        if self.vae is not None:
            self.vae.to(device)
        if self._table is not None:
            self._table = self._table.to(device)
        return self

    @property
    def training(self) -> bool:
        return self.unet.training

    def train(self, mode: bool = True) -> "T2IAdapter":
        self.unet.train(mode)
        if self.train_text_encoder:
            self.text_encoder.train(mode)
        return self

    def eval(self) -> "T2IAdapter":
        return self.train(False)

    # ------------------------------------------------------------------ prompts
    @property
    def _table(self) -> torch.Tensor | None:
        """``[P, L, D]`` frozen-encoder states of the prompt table, on the model's device. Held, like ``_prompts``
        and ``_index``, in an object a :meth:`scratch_copy` shares: a prompt registered through either adapter
        gets one id that names the same row in both."""
        return self._shared["table"]

    @_table.setter
    def _table(self, value: torch.Tensor | None) -> None:
        self._shared["table"] = value

    def check_prompt(self, prompt: str, what: str = "prompt") -> None:
        """Raise a :class:`UserInputError` when ``prompt`` is empty or longer than the tokenizer takes."""
        if not isinstance(prompt, str):
            raise UserInputError(f"{what} must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise UserInputError(f"{what} is empty: give the text of a concept, e.g. 'prompt:a photo of a dog'")
        with warnings.catch_warnings(), _quiet_transformers():
            n = len(self.tokenizer(prompt, truncation=False).input_ids)
        if n > self.max_prompt_tokens:
            raise UserInputError(
                f"{what} {prompt!r} is {n} tokens long but this model's tokenizer takes at most "
                f"{self.max_prompt_tokens} (its special tokens included); shorten it (fastunlearn never truncates a prompt)"
            )

    def prompt_ids(self, prompts: Sequence[str], what: str = "prompt") -> torch.Tensor:
        """The ids of ``prompts`` in the prompt table (int64 ``[len(prompts)]``), registering new ones."""
        new = [p for p in dict.fromkeys(prompts) if p not in self._index]
        for p in new:
            if p != "":
                self.check_prompt(p, what)
        if new:
            for p in new:
                self._index[p] = len(self._prompts)
                self._prompts.append(p)
            states = self.encode_prompts(new, grad=False)
            self._table = states if self._table is None else torch.cat([self._table, states.to(self._table.device)])
        return torch.tensor([self._index[p] for p in prompts], dtype=torch.long)

    def prompt(self, prompt_id: int) -> str:
        """The text of a prompt id."""
        return self._prompts[int(prompt_id)]

    @property
    def prompts(self) -> list[str]:
        """The prompt table, in id order (id 0 is ``""``)."""
        return list(self._prompts)

    def encode_prompts(self, prompts: Sequence[str], grad: bool = False) -> torch.Tensor:
        """Token states ``[N, L, D]`` of ``prompts`` as ``StableDiffusionPipeline.encode_prompt`` computes them."""
        tok = self.tokenizer(list(prompts), padding="max_length", max_length=self.max_prompt_tokens,
                             truncation=True, return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tok.attention_mask.to(device)
        with torch.set_grad_enabled(grad):
            states = self.text_encoder(tok.input_ids.to(device), attention_mask=mask)[0]
        return states if grad else states.detach()

    def embeddings(self, labels: torch.Tensor) -> torch.Tensor:
        """Encoder states of prompt ids ``labels``: a cached lookup, or a fresh encoding with gradients while
        the text encoder trains."""
        if self.train_text_encoder:
            return self.encode_prompts([self._prompts[int(i)] for i in labels.tolist()], grad=True)
        table = self._table
        if table.device != labels.device:
            table = self._table = table.to(labels.device)
        return table[labels]

    # ------------------------------------------------------------------ token-level prompts (attacks, AdvUnlearn)
    @property
    def token_embedding(self) -> torch.Tensor:
        """The text encoder's input token-embedding matrix ``[V, D]`` (detached): what a prefix token's
        embedding is, and what a relaxed one-hot over the vocabulary is multiplied by."""
        return self.text_encoder.get_input_embeddings().weight.detach()

    @property
    def vocab_size(self) -> int:
        return int(self.token_embedding.shape[0])

    @property
    def special_token_ids(self) -> list[int]:
        """Ids an attack must not place in a prompt (BOS/EOS/CLS/SEP/PAD/UNK/MASK...)."""
        return sorted({int(i) for i in self.tokenizer.all_special_ids if i is not None and 0 <= int(i) < self.vocab_size})

    def prefixed_tokens(self, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask ``[N, L]`` (int64, on the encoder's device) of prompt ids ``labels`` with
        ``k`` prefix slots right after the first token (BOS / CLS): ``[first, slot × k, the prompt's other tokens,
        padding]``, still ``L = model_max_length`` long. The slots hold the first token's id as a placeholder
        (their embeddings or ids are set by :meth:`encode_prefixed`). A prompt with fewer than ``k`` padding
        positions left raises: the prefix never pushes a prompt's own tokens out."""
        k = int(k)
        if k < 0:
            raise UserInputError(f"the number of prefix tokens must be >= 0, got {k}")
        labels = labels.reshape(-1).cpu().long()
        self.check_labels(labels, "prompt ids")
        texts = [self._prompts[int(i)] for i in labels.tolist()]
        tok = self.tokenizer(texts, padding="max_length", max_length=self.max_prompt_tokens, truncation=True,
                             return_tensors="pt")
        ids, mask = tok.input_ids.long(), tok.attention_mask.long()
        L = ids.shape[1]
        used = int(mask.sum(1).max()) if ids.numel() else 0
        if used + k > L:
            longest = texts[int(mask.sum(1).argmax())]
            raise UserInputError(f"prompt {longest!r} takes {used} of the tokenizer's {L} tokens: no room for {k} "
                                 "prefix tokens (shorten the prompt or use fewer prefix tokens)")
        slots = ids[:, :1].expand(-1, k)
        ids = torch.cat([ids[:, :1], slots, ids[:, 1:L - k]], 1)
        mask = torch.cat([mask[:, :1], torch.ones_like(slots), mask[:, 1:L - k]], 1)
        device = next(self.text_encoder.parameters()).device
        return ids.to(device), mask.to(device)

    def encode_prefixed(self, labels: torch.Tensor, prefix: torch.Tensor, grad: bool | None = None) -> torch.Tensor:
        """Token states ``[N, L, D]`` of prompt ids ``labels`` with a prefix of ``k`` tokens after the first
        token (see :meth:`prefixed_tokens`), through the text encoder as it is now (trained or not).

        ``prefix``: token ids (int64 ``[k]`` or ``[N, k]``: a discrete prompt, encoded like any prompt) or
        embeddings (float ``[k, D]`` or ``[N, k, D]``: a continuous prompt, in the space of the encoder's input
        token embeddings). Embeddings replace the token-embedding layer's output at the slots — the model's own
        forward runs around them (position embeddings, the causal mask of CLIP, BERT's attention mask and
        LayerNorm, CLIP's final layer norm), which is what feeding ``inputs_embeds`` to the encoder computes.
        ``grad`` (default: when the encoder trains or the prefix requires grad) keeps the graph.
        """
        n = labels.numel()
        k = prefix.shape[-1] if not prefix.is_floating_point() else prefix.shape[-2]
        ids, mask = self.prefixed_tokens(labels, k)
        if grad is None:
            grad = self.train_text_encoder or prefix.requires_grad
        use_mask = mask if getattr(self.text_encoder.config, "use_attention_mask", False) else None
        handle = None
        if not prefix.is_floating_point() and k:
            ids = ids.clone()
            ids[:, 1:1 + k] = prefix.to(ids.device).reshape(-1, k).expand(n, k)
        elif k:
            rows = prefix.reshape(-1, k, prefix.shape[-1])

            def insert(module: Any, inputs: Any, output: torch.Tensor) -> torch.Tensor:
                pre = rows.to(device=output.device, dtype=output.dtype).expand(output.shape[0], -1, -1)
                return torch.cat([output[:, :1], pre, output[:, 1 + k:]], 1)

            handle = self.text_encoder.get_input_embeddings().register_forward_hook(insert)
        try:
            with torch.set_grad_enabled(grad):
                states = self.text_encoder(ids, attention_mask=use_mask)[0]
        finally:
            if handle is not None:
                handle.remove()
        return states if grad else states.detach()

    def decode_prefixed(self, labels: torch.Tensor, prefix_ids: torch.Tensor) -> list[str]:
        """The text of prompts ``labels`` with discrete prefix tokens ``prefix_ids`` (``[k]`` or ``[N, k]``), as
        the tokenizer decodes it (for reports: re-tokenizing the text need not give the same ids)."""
        k = prefix_ids.shape[-1]
        ids, mask = self.prefixed_tokens(labels, k)
        ids = ids.clone()
        ids[:, 1:1 + k] = prefix_ids.to(ids.device).reshape(-1, k).expand(ids.shape[0], k)
        return [self.tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True).strip()
                for row, m in zip(ids.cpu(), mask.cpu())]

    # ------------------------------------------------------------------ latents
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """[-1, 1] images → the denoiser's space (VAE posterior mean × scaling factor), float32 on the CPU."""
        self.check_images(images)
        if self.vae is None:
            return images.float().cpu()
        device = next(self.vae.parameters()).device
        sf = float(self.vae.config.scaling_factor)
        out = [self.vae.encode(images[i:i + batch_size].to(device, torch.float32)).latent_dist.mean * sf
               for i in range(0, images.shape[0], batch_size)]
        return torch.cat(out).float().cpu() if out else torch.empty((0, *self.latent_shape))

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """The denoiser's space → [-1, 1] images, float32 on the CPU (clamped)."""
        if self.vae is None:
            return latents.float().clamp(-1, 1).cpu()
        device = next(self.vae.parameters()).device
        sf = float(self.vae.config.scaling_factor)
        out = [self.vae.decode(latents[i:i + batch_size].to(device, torch.float32) / sf).sample
               for i in range(0, latents.shape[0], batch_size)]
        return torch.cat(out).float().clamp(-1, 1).cpu() if out else torch.empty((0, *self.image_shape))

    def check_images(self, images: torch.Tensor, what: str = "images") -> None:
        c, h, w = self.image_shape
        if images.dim() != 4 or tuple(images.shape[1:]) != (c, h, w):
            got = "×".join(str(s) for s in images.shape[1:]) if images.dim() == 4 else f"shape {tuple(images.shape)}"
            raise UserInputError(f"{what} do not fit the model: expected {c}×{h}×{w} (channels×height×width), got {got}")

    def check_labels(self, labels: torch.Tensor, what: str = "labels") -> None:
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= len(self._prompts)):
            raise UserInputError(f"{what} name prompt ids outside the prompt table (0–{len(self._prompts) - 1})")

    # ------------------------------------------------------------------ the Adapter contract
    def parameters(self, scope: str = "all") -> list[torch.nn.Parameter]:
        return [p for _, p in self.named_parameters(scope)]

    def named_parameters(self, scope: str = "all") -> list[tuple[str, torch.nn.Parameter]]:
        """``(name, parameter)`` of ``scope`` (see the module docstring); names as :meth:`functional_predict` takes."""
        if scope == "text-encoder" or scope.startswith("text-encoder:"):
            return text_encoder_scope(self.text_encoder, scope)
        named = list(self._module.named_parameters())
        reads_text = lambda n: ".attn2." in n or n.startswith(_TEXT_INPUTS)  # noqa: E731
        if scope == "all":
            picked = named
        elif scope == "xattn":
            picked = [(n, p) for n, p in named if reads_text(n)]
        elif scope == "xattn-kv":
            picked = [(n, p) for n, p in named
                      if ".attn2.to_k." in n or ".attn2.to_v." in n or n.startswith(_TEXT_INPUTS)]
        elif scope == "noxattn":
            picked = [(n, p) for n, p in named if not reads_text(n) and not n.startswith(
                ("time_embedding.", "conv_out.", "conv_norm_out."))]
        elif scope == "attention":
            picked = [(n, p) for n, p in named if ".attentions." in n]
        else:
            raise UserInputError(f"unknown parameter scope {scope!r}; expected one of {', '.join(SCOPES)}")
        if not picked:
            raise UserInputError(f"scope {scope!r} selects no parameter of this UNet")
        return picked

    def set_scope(self, scope: str) -> None:
        """Called by the methods' setup: a ``text-encoder`` scope makes predictions encode prompts with gradients
        (the method then marks the scope's parameters trainable; the rest of the encoder stays frozen)."""
        self.train_text_encoder = scope == "text-encoder" or scope.startswith("text-encoder:")
        self.text_encoder.requires_grad_(False)

    def scratch_copy(self) -> "T2IAdapter":
        """An adapter over independent copies of the UNet and text encoder (VAE, tokenizer, scheduler and the
        prompt table shared): steps on the copy leave this adapter untouched. Also the frozen model θ₀."""
        other = copy.copy(self)
        other.unet = copy.deepcopy(self._module)
        other.text_encoder = copy.deepcopy(self.text_encoder)
        return other

    def _eps(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction_type == "epsilon":
            return out
        shape = (t.shape[0],) + (1,) * (x_t.dim() - 1)
        a = self._sqrt_ab.to(x_t.device)[t].view(shape).to(out.dtype)
        s = self._sqrt_1mab.to(x_t.device)[t].view(shape).to(out.dtype)
        return a * out + s * x_t.to(out.dtype)

    def functional_predict(self, params: Mapping[str, torch.Tensor], x_t: torch.Tensor, t: torch.Tensor,
                           labels: torch.Tensor | None = None) -> torch.Tensor:
        """ε(x_t, t, c) with the UNet parameters named in ``params`` replaced (``torch.func.functional_call``)."""
        from torch.func import functional_call

        module = self._module
        state = {n: p.detach() for n, p in module.named_parameters()}
        state.update(params)
        state.update(dict(module.named_buffers()))
        emb = self.embeddings(labels if labels is not None else torch.zeros(x_t.shape[0], dtype=torch.long,
                                                                            device=x_t.device))
        out = functional_call(module, state, (x_t, t), {"encoder_hidden_states": emb}).sample
        return self._eps(out, x_t, t)

    def noised_batch(self, x0: torch.Tensor, labels: torch.Tensor | None, generator: torch.Generator,
                     noise: torch.Tensor | None = None, rows: slice | None = None) -> NoisedBatch:
        """Forward-diffuse latents ``x0`` (t ~ U{0..T−1}, ε ~ N(0, I) from ``generator`` on the CPU); ``labels``
        are prompt ids. ``rows``: draw for every row, keep these (see :class:`fastunlearn.methods.base.Batch`)."""
        n = x0.shape[0]
        t = torch.randint(0, self.num_train_timesteps, (n,), generator=generator)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
        if labels is None:
            labels = torch.zeros(n, dtype=torch.long)
        if rows is not None and rows != slice(None):
            x0, t, noise, labels = x0[rows], t[rows], noise[rows], labels[rows]
            n = x0.shape[0]
        device = self.device
        t, noise, x0 = t.to(device), noise.to(device), x0.to(device=device, dtype=torch.float32)
        shape = (n,) + (1,) * (x0.dim() - 1)
        a = self._sqrt_ab.to(device)[t].view(shape)
        s = self._sqrt_1mab.to(device)[t].view(shape)
        return NoisedBatch(x_t=a * x0 + s * noise, t=t, noise=noise, labels=labels.to(device))

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """ε_θ(x_t, t, c) for prompt ids ``labels`` (None: the empty prompt)."""
        if labels is None:
            labels = torch.zeros(x_t.shape[0], dtype=torch.long, device=x_t.device)
        return self.predict_embedded(x_t, t, self.embeddings(labels.to(x_t.device)))

    def predict_embedded(self, x_t: torch.Tensor, t: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
        """ε_θ(x_t, t, ·) conditioned on given encoder states ``[N, L, D]`` (an attack's optimised prompt)."""
        out = self.unet(x_t, t, encoder_hidden_states=states.to(x_t.dtype) if not torch.is_autocast_enabled()
                        else states).sample
        return self._eps(out, x_t, t)

    # ------------------------------------------------------------------ sampling
    def _labels(self, n: int, class_labels: Any) -> torch.Tensor:
        """Prompt ids for ``n`` rows from ids, prompts (str or list of str) or None (the empty prompt)."""
        if class_labels is None:
            return torch.zeros(n, dtype=torch.long)
        if isinstance(class_labels, str):
            class_labels = [class_labels]
        if isinstance(class_labels, (list, tuple)) and class_labels and isinstance(class_labels[0], str):
            ids = self.prompt_ids(list(class_labels))
        else:
            ids = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1).cpu()
        if ids.numel() == 1 and n != 1:
            ids = ids.expand(n).clone()
        if ids.numel() != n:
            raise UserInputError(f"{ids.numel()} prompts were given for n = {n} samples")
        self.check_labels(ids, "prompt ids")
        return ids

    @torch.no_grad()
    def ddim_trajectory(self, labels: torch.Tensor, steps: int = 50, guidance_scale: float = DEFAULT_GUIDANCE,
                        noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                        batch_size: int = 256, record: bool = True, states: torch.Tensor | None = None) -> Trajectory:
        """Deterministic DDIM (eta 0) with classifier-free guidance, one batched UNet call per step (the
        conditional and unconditional rows together), recording every step's input x_t and both ε predictions.

        ``noise``: the initial latents ``[N, C, h, w]``; default: drawn on the CPU from ``generator``.
        ``states``: encoder states ``[N, L, D]`` for the conditional branch instead of the prompt ids' (an
        attack's prompt, see :meth:`generate_embedded`); ``labels`` then only count the rows.
        """
        from fastunlearn.models.sampling import make_ddim_scheduler

        labels = labels.reshape(-1).cpu().long()
        n = labels.numel()
        if states is not None and states.shape[0] != n:
            raise UserInputError(f"{states.shape[0]} rows of encoder states were given for {n} samples")
        if noise is None:
            noise = torch.randn((n, *self.latent_shape), generator=generator, dtype=torch.float32)
        scheduler = make_ddim_scheduler(self.scheduler)
        scheduler.set_timesteps(steps)
        device = self.device
        dtype = next(self._module.parameters()).dtype
        was = self.unet.training
        self.unet.eval()
        xs, eu, ec, finals = [], [], [], []
        try:
            for start in range(0, n, max(1, batch_size // 2)):
                stop = min(n, start + max(1, batch_size // 2))
                x = noise[start:stop].to(device=device, dtype=dtype)
                y = labels[start:stop].to(device)
                cond = self.embeddings(y) if states is None else states[start:stop].to(device)
                both = torch.cat([self.embeddings(torch.zeros_like(y)), cond.to(dtype)])
                bx, bu, bc = [], [], []
                for t in scheduler.timesteps:
                    tt = torch.full((2 * x.shape[0],), int(t), device=device, dtype=torch.long)
                    x_in = torch.cat([x, x])
                    eps = self._eps(self.unet(x_in, tt, encoder_hidden_states=both.to(dtype)).sample, x_in, tt)
                    e_u, e_c = eps.chunk(2)
                    if record:
                        bx.append(x.float().cpu())
                        bu.append(e_u.float().cpu())
                        bc.append(e_c.float().cpu())
                    guided = e_u + guidance_scale * (e_c - e_u)
                    x = self._ddim_step(scheduler, guided, int(t), x)
                finals.append(x.float().cpu())
                if record:
                    xs.append(torch.stack(bx, 1))
                    eu.append(torch.stack(bu, 1))
                    ec.append(torch.stack(bc, 1))
        finally:
            self.unet.train(was)
        ts = scheduler.timesteps.clone().long().cpu()
        empty = torch.empty((len(ts), 0, *self.latent_shape))
        cat = (lambda parts: torch.cat(parts, 0).transpose(0, 1).contiguous() if parts else empty)  # noqa: E731
        return Trajectory(x_t=cat(xs), t=ts, eps_uncond=cat(eu), eps_cond=cat(ec), labels=labels,
                          final=torch.cat(finals) if finals else torch.empty((0, *self.latent_shape)))

    def _ddim_step(self, scheduler: Any, eps: torch.Tensor, t: int, x: torch.Tensor) -> torch.Tensor:
        """One DDIM step (eta 0) from an ε prediction, whatever the model predicts natively: exactly
        ``DDIMScheduler.step`` (its x̂₀ thresholding or clipping as the scheduler's config sets them, ε unclipped),
        so the stock pipeline samples the same images."""
        prev = t - scheduler.config.num_train_timesteps // scheduler.num_inference_steps
        ab = scheduler.alphas_cumprod
        a_t = ab[t].to(x.device, torch.float32)
        a_prev = (ab[prev] if prev >= 0 else scheduler.final_alpha_cumprod).to(x.device, torch.float32)
        xf, ef = x.float(), eps.float()
        x0 = (xf - (1 - a_t).sqrt() * ef) / a_t.sqrt()
        if scheduler.config.get("thresholding", False):
            x0 = scheduler._threshold_sample(x0)
        elif scheduler.config.get("clip_sample", False):
            limit = float(scheduler.config.get("clip_sample_range", 1.0))
            x0 = x0.clamp(-limit, limit)
        return (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * ef).to(x.dtype)

    @torch.no_grad()
    def generate(self, n: int, class_labels: Any = None, steps: int = 50, generator: torch.Generator | None = None,
                 batch_size: int = 256, guidance_scale: float = DEFAULT_GUIDANCE, progress: bool = False,
                 noise: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` DDIM samples (eta 0, classifier-free guidance ``guidance_scale``), float32 ``[n, C, H, W]`` on the
        CPU in [-1, 1]. ``class_labels``: prompt ids, prompts (one for all rows or one per row), or None (the
        empty prompt). All initial noises are drawn up front from ``generator``: row i depends only on it."""
        labels = self._labels(n, class_labels)
        traj = self.ddim_trajectory(labels, steps=steps, guidance_scale=guidance_scale, noise=noise,
                                    generator=generator, batch_size=batch_size, record=False)
        return self.decode_latents(traj.final)

    @torch.no_grad()
    def generate_embedded(self, states: torch.Tensor, steps: int = 50, guidance_scale: float = DEFAULT_GUIDANCE,
                          noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                          batch_size: int = 256) -> torch.Tensor:
        """:meth:`generate` conditioned on given encoder states ``[N, L, D]`` (an attack's prompt, from
        :meth:`encode_prefixed`) instead of prompt ids: the same sampler, the empty prompt's states on the
        unconditional branch; float32 ``[N, C, H, W]`` on the CPU in [-1, 1]."""
        labels = torch.zeros(states.shape[0], dtype=torch.long)
        traj = self.ddim_trajectory(labels, steps=steps, guidance_scale=guidance_scale, noise=noise,
                                    generator=generator, batch_size=batch_size, record=False, states=states)
        return self.decode_latents(traj.final)

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, directory: str | Path) -> Path:
        """A complete ``StableDiffusionPipeline`` directory (``model_index.json`` at the root, every component;
        the components this run did not change are hard links to the source's files where possible), plus the
        sidecar ``fastunlearn.json`` (family, concepts)."""
        from diffusers import StableDiffusionPipeline

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        pipe = StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self._module,
            scheduler=self.scheduler, safety_checker=self.extra.get("safety_checker"),
            feature_extractor=self.extra.get("feature_extractor"), requires_safety_checker=False,
        )
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*safety.checker.*")
            pipe.save_pretrained(directory, safe_serialization=True)
        if self.source is not None:
            _link_unchanged(self.source, directory,
                            ("vae", "tokenizer") + (() if self.train_text_encoder else ("text_encoder",)))
        sidecar = {"adapter": "t2i", "concepts": self.concepts}
        (directory / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
        return directory

    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.train_text_encoder:
            return {f"text_encoder.{k}": v for k, v in self.text_encoder.state_dict().items()}
        return self._module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if self.train_text_encoder:
            self.text_encoder.load_state_dict({k[len("text_encoder."):]: v for k, v in state.items()})
        else:
            self._module.load_state_dict(state)


def text_encoder_scope(encoder: torch.nn.Module, scope: str) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters of a text-encoder scope: ``text-encoder`` = every transformer layer plus the final layer
    norm (CLIP's ``final_layer_norm``) — not the token/position embeddings (nor BERT's embedding LayerNorm and
    pooler, which the token states do not pass through); ``text-encoder:K`` = layers 0..K−1."""
    import re

    layer_of = re.compile(r"(?:^|\.)layers?\.(\d+)\.")
    named = list(encoder.named_parameters())
    depth = 1 + max((int(m.group(1)) for n, _ in named if (m := layer_of.search(n))), default=-1)
    if depth == 0:
        raise UserInputError(f"scope {scope!r}: cannot find the transformer layers of this {type(encoder).__name__}")
    if scope == "text-encoder":
        return [(n, p) for n, p in named if layer_of.search(n) or "final_layer_norm." in n]
    _, _, k = scope.partition(":")
    if not k.isdigit() or not 1 <= int(k) <= depth:
        raise UserInputError(f"scope {scope!r}: K must be a number of layers from 1 to {depth} (this text encoder's "
                             f"depth), e.g. text-encoder:1")
    return [(n, p) for n, p in named if (m := layer_of.search(n)) and int(m.group(1)) < int(k)]


class _quiet_transformers:
    """Silence transformers' "sequence length is longer than" log while a prompt's length is measured."""

    def __enter__(self):
        from transformers.utils import logging

        self._level = logging.get_verbosity()
        logging.set_verbosity_error()

    def __exit__(self, *exc):
        from transformers.utils import logging

        logging.set_verbosity(self._level)


def _link_unchanged(source: Path, directory: Path, components: Sequence[str]) -> None:
    """Replace the freshly written files of unchanged components by hard links to the source's (same bytes on
    disk once); where linking fails (another file system) the written copy stays."""
    for name in components:
        src, dst = source / name, directory / name
        if not src.is_dir() or not dst.is_dir():
            continue
        for f in src.iterdir():
            target = dst / f.name
            if not f.is_file() or not f.name.endswith(".safetensors") or not target.is_file():
                continue
            tmp = target.with_suffix(target.suffix + ".link")
            try:
                os.link(f, tmp)
                os.replace(tmp, target)
            except OSError:
                tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------- loading
def is_t2i_dir(directory: Path) -> bool:
    """Whether ``directory`` is a text-to-image pipeline (its ``model_index.json`` names a text encoder)."""
    index = directory / "model_index.json"
    if not index.is_file():
        return False
    try:
        return "text_encoder" in json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False


def _read_concepts(directory: Path) -> dict | None:
    for name in (SIDECAR, "training.json"):
        f = directory / name
        if f.is_file():
            data = json.loads(f.read_text())
            if data.get("concepts"):
                return data["concepts"]
    return None


def from_pipeline(pipe: Any, source: Path | None = None, concepts: Mapping[str, Any] | None = None) -> T2IAdapter:
    """An adapter over the components of a loaded ``StableDiffusionPipeline``."""
    for part in ("unet", "text_encoder", "vae"):
        module = getattr(pipe, part, None)
        if module is not None:
            refuse_non_finite(module, f"the {part} of the pipeline")
    extra = {k: getattr(pipe, k, None) for k in ("safety_checker", "feature_extractor")}
    return T2IAdapter(pipe.unet, pipe.text_encoder, pipe.tokenizer, pipe.scheduler, vae=pipe.vae,
                      concepts=concepts, source=source, extra=extra)


def load_t2i(ref: str | Path, trust_pickle: bool = False) -> T2IAdapter:
    """Load a ``StableDiffusionPipeline`` directory or hub id (safetensors only unless ``trust_pickle``)."""
    from diffusers import StableDiffusionPipeline

    path = Path(ref).expanduser()
    local = path.is_dir()
    kwargs = {"safety_checker": None, "requires_safety_checker": False, "low_cpu_mem_usage": False,
              "use_safetensors": None if trust_pickle else True}
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    try:
        # diffusers logs "Expected types for text_encoder: CLIPTextModel" for any other encoder (digits-t2i's
        # BERT) and the accelerate hint on every load: neither is the user's concern.
        diffusers_logging.set_verbosity_error()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(safety.checker|local_dir_use_symlinks).*")
            pipe = StableDiffusionPipeline.from_pretrained(str(path) if local else str(ref), **kwargs)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, AttributeError, EnvironmentError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        where = f"pipeline directory {path}" if local else f"model {str(ref)!r} (not a local directory; the hub lookup)"
        hint = "" if trust_pickle else (" fastunlearn loads only safetensors weights: pass --trust-pickle "
                                         "(trust_pickle=True) only for a model you trust.")
        raise UserInputError(f"cannot load the text-to-image {where}: {first}.{hint}") from None
    finally:
        diffusers_logging.set_verbosity(level)
    return from_pipeline(pipe, source=path.resolve() if local else None,
                         concepts=_read_concepts(path) if local else None)


__all__ = ["T2IAdapter", "Trajectory", "SCOPES", "text_encoder_scope", "DEFAULT_GUIDANCE", "load_t2i", "from_pipeline", "is_t2i_dir"]
