"""``DDPMAdapter``: the Adapter contract over a pixel-space diffusers ``UNet2DModel`` + ``DDPMScheduler``.

Methods speak only to this interface (ARCHITECTURE.md, "The contracts that matter"):

- :meth:`DDPMAdapter.parameters` — the trainable parameters of a scope (``all`` or ``attention``);
- :meth:`DDPMAdapter.noised_batch` — x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε with t ~ U{0..T−1} (Ho et al., 2020),
  every random draw taken from the caller's CPU ``torch.Generator`` so a run depends only on its seeds;
- :meth:`DDPMAdapter.predict` — ε_θ(x_t, t, c) (epsilon prediction);
- :meth:`DDPMAdapter.generate` — DDIM samples for evaluation (:func:`fastunlearn.models.sampling.ddim_sample`);
- :meth:`DDPMAdapter.save_pretrained` — a ``DDPMPipeline`` directory that diffusers loads back;
- :meth:`DDPMAdapter.scratch_copy` — an adapter over an independent copy of the model (a method's scratch
  steps), :meth:`DDPMAdapter.functional_predict` — ε with given parameter tensors (``torch.func``), and
  :meth:`DDPMAdapter.train` / :attr:`DDPMAdapter.training` — the model's train/eval mode.

No method reads ``adapter.unet`` or calls the UNet itself (its ``class_labels=`` keyword is this adapter's
business): a text-to-image or image-to-image adapter offers the same calls over its own denoiser.

Class-conditional models may carry a *null* class (the label used for unconditional generation when the
model was trained with class dropout, as the zoo's digits DDPM is). Diffusers' configs do not record it,
so it is read from ``fastunlearn.json`` (written by :meth:`save_pretrained`) or the zoo's ``training.json``,
or given explicitly; it is always the last embedding, and the real classes are ``0 .. num_classes−1``.
"""
from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from fastunlearn.errors import UserInputError
from fastunlearn.models.safe_loading import (_SAFE_WEIGHTS, PICKLE_SUFFIXES, _check_unet_dir, _pickle_file_hint,
                                              _state_dict_snippet, first_non_finite, refuse_non_finite)

#: Sidecar written next to ``model_index.json``: what diffusers' configs cannot say (the null label).
SIDECAR = "fastunlearn.json"
SCOPES = ("all", "attention")


@dataclass
class NoisedBatch:
    """One training batch in the forward-diffusion space: the model input and what it should predict."""

    x_t: torch.Tensor  #: noised images ``[N, C, H, W]``
    t: torch.Tensor  #: timesteps ``[N]`` (int64)
    noise: torch.Tensor  #: the ε that produced ``x_t`` (the epsilon-prediction target)
    labels: torch.Tensor | None  #: class labels ``[N]`` or None for an unconditional model


class DDPMAdapter:
    """A ``UNet2DModel`` (ε-prediction) with its ``DDPMScheduler``, seen through the Adapter contract.

    Args:
        unet: the denoiser; conditional when ``unet.config.num_class_embeds`` is set.
        scheduler: its training noise schedule; default: diffusers' DDPM default (1000 steps, linear β).
        null_label: the unconditional class of a conditional model (the last embedding), or None.
    """

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler | None = None, null_label: int | None = None):
        if not isinstance(unet, UNet2DModel):
            raise UserInputError(f"DDPMAdapter needs a diffusers UNet2DModel, got {type(unet).__name__}")
        scheduler = scheduler if scheduler is not None else DDPMScheduler()
        prediction = scheduler.config.get("prediction_type", "epsilon")
        if prediction != "epsilon":
            raise UserInputError(f"only epsilon-prediction DDPMs are supported; this scheduler predicts {prediction!r}")
        self.unet = unet
        self.scheduler = scheduler
        embeds = unet.config.get("num_class_embeds")
        self.num_class_embeds: int | None = int(embeds) if embeds is not None else None
        if null_label is not None:
            if self.num_class_embeds is None:
                raise UserInputError("null_label was given but the UNet has no class embedding")
            if null_label != self.num_class_embeds - 1:
                raise UserInputError(
                    f"null_label must be the last class embedding ({self.num_class_embeds - 1}), got {null_label}"
                )
        self.null_label = null_label
        alphas = scheduler.alphas_cumprod.detach().to(torch.float32)
        self._sqrt_ab = alphas.sqrt()
        self._sqrt_1mab = (1.0 - alphas).sqrt()

    # ------------------------------------------------------------------ description
    @property
    def conditional(self) -> bool:
        return self.num_class_embeds is not None

    @property
    def num_classes(self) -> int | None:
        """Number of real classes (the null class excluded), or None for an unconditional model."""
        if self.num_class_embeds is None:
            return None
        return self.num_class_embeds - (1 if self.null_label is not None else 0)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` the UNet takes."""
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return int(self.unet.config.in_channels), int(h), int(w)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: torch.device | str) -> "DDPMAdapter":
        self.unet.to(device)
        return self

    @property
    def training(self) -> bool:
        return self.unet.training

    def train(self, mode: bool = True) -> "DDPMAdapter":
        """Put the model in train (``mode=True``) or eval mode."""
        self.unet.train(mode)
        return self

    def eval(self) -> "DDPMAdapter":
        return self.train(False)

    @property
    def _module(self) -> torch.nn.Module:
        """The UNet itself (the module inside a ``torch.compile`` wrapper)."""
        return getattr(self.unet, "_orig_mod", self.unet)

    # the family-neutral name the engine reads (every adapter has one: the network it moves, compiles and checks)
    @property
    def network(self) -> torch.nn.Module:
        """The denoiser (``unet``), possibly a ``torch.compile`` wrapper; assignable."""
        return self.unet

    @network.setter
    def network(self, value: torch.nn.Module) -> None:
        self.unet = value

    def check_images(self, images: torch.Tensor, what: str = "images") -> None:
        """Raise a :class:`UserInputError` naming expected vs got when ``images`` do not fit the UNet."""
        c, h, w = self.image_shape
        if images.dim() != 4 or tuple(images.shape[1:]) != (c, h, w):
            got = "×".join(str(s) for s in images.shape[1:]) if images.dim() == 4 else f"shape {tuple(images.shape)}"
            raise UserInputError(
                f"{what} do not fit the model: expected {c}×{h}×{w} (channels×height×width), got {got}"
            )

    def check_labels(self, labels: torch.Tensor, what: str = "labels") -> None:
        """Raise a :class:`UserInputError` when class labels fall outside the model's real classes."""
        if self.num_classes is None or labels.numel() == 0:
            return
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= self.num_classes:
            raise UserInputError(
                f"{what} contain class {hi if hi >= self.num_classes else lo} but the model knows classes 0–{self.num_classes - 1}"
            )

    # ------------------------------------------------------------------ the Adapter contract
    def parameters(self, scope: str = "all") -> list[torch.nn.Parameter]:
        """Trainable parameters of ``scope``: ``all`` (every parameter of the model), or ``attention`` (the
        attention blocks only)."""
        return [p for _, p in self.named_parameters(scope)]

    def named_parameters(self, scope: str = "all") -> list[tuple[str, torch.nn.Parameter]]:
        """``(name, parameter)`` of ``scope``; the names are those :meth:`functional_predict` takes."""
        named = list(self._module.named_parameters())
        if scope == "all":
            return named
        if scope == "attention":
            picked = [(n, p) for n, p in named if ".attentions." in n]
            if not picked:
                raise UserInputError("scope 'attention' selects nothing: this UNet has no attention blocks")
            return picked
        raise UserInputError(f"unknown parameter scope {scope!r}; expected one of {', '.join(SCOPES)}")

    def scratch_copy(self) -> "DDPMAdapter":
        """An adapter over an independent deep copy of the model (same schedule, classes, null label and
        ``requires_grad`` flags): steps taken on the copy leave this adapter's weights, gradients and optimizer
        untouched. The copy is of the plain module (not a ``torch.compile`` wrapper)."""
        other = copy.copy(self)
        other.unet = copy.deepcopy(self._module)
        return other

    def functional_predict(self, params: Mapping[str, torch.Tensor], x_t: torch.Tensor, t: torch.Tensor,
                           labels: torch.Tensor | None = None) -> torch.Tensor:
        """ε(x_t, t, c) with the parameters named in ``params`` (names of :meth:`named_parameters`) replaced by
        those tensors (``torch.func.functional_call``), for transforms such as ``vmap(grad(...))``. The other
        parameters are the model's, detached; the model itself is not changed."""
        from torch.func import functional_call

        module = self._module
        state = {n: p.detach() for n, p in module.named_parameters()}
        state.update(params)
        state.update(dict(module.named_buffers()))
        out = functional_call(module, state, (x_t, t), {"class_labels": labels if self.conditional else None})
        return out.sample

    def noised_batch(
        self,
        x0: torch.Tensor,
        labels: torch.Tensor | None,
        generator: torch.Generator,
        noise: torch.Tensor | None = None,
        rows: slice | None = None,
    ) -> NoisedBatch:
        """Forward-diffuse clean samples: t ~ U{0..T−1}, ε ~ N(0, I) (or the given ``noise``).

        Draws happen on the CPU from ``generator`` and are then moved to the model's device, so the batch
        is the same on every device for the same generator state. ``rows``: draw for every row of ``x0``
        but keep only these (a process's share of a global batch, :attr:`fastunlearn.methods.base.Batch.rows`).
        """
        n = x0.shape[0]
        t = torch.randint(0, self.num_train_timesteps, (n,), generator=generator)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
        if rows is not None and rows != slice(None):
            x0, t, noise = x0[rows], t[rows], noise[rows]
            labels = labels[rows] if labels is not None else None
            n = x0.shape[0]
        device = self.device
        t, noise, x0 = t.to(device), noise.to(device), x0.to(device=device, dtype=torch.float32)
        shape = (n,) + (1,) * (x0.dim() - 1)
        a = self._sqrt_ab.to(device)[t].view(shape)
        s = self._sqrt_1mab.to(device)[t].view(shape)
        y = labels.to(device) if (labels is not None and self.conditional) else None
        return NoisedBatch(x_t=a * x0 + s * noise, t=t, noise=noise, labels=y)

    def predict(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """ε_θ(x_t, t, c): the UNet's noise prediction (labels ignored for an unconditional model)."""
        return self.unet(x_t, t, class_labels=labels if self.conditional else None).sample

    @torch.no_grad()
    def generate(
        self,
        n: int,
        class_labels: torch.Tensor | Sequence[int] | int | None = None,
        steps: int = 50,
        generator: torch.Generator | None = None,
        batch_size: int = 256,
        guidance_scale: float = 1.0,
        progress: bool = False,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``n`` DDIM samples (eta 0), float32 ``[n, C, H, W]`` on the CPU in [-1, 1].

        ``class_labels=None`` on a conditional model samples the null class (unconditional generation).
        ``noise``: the initial noise ``[n, C, H, W]``; default: drawn up front from ``generator``.
        """
        from fastunlearn.models.sampling import ddim_sample

        if self.conditional and class_labels is None and self.null_label is None:
            raise UserInputError("unconditional generation needs a null class, and this conditional model has none")
        return ddim_sample(
            self.unet, self.scheduler, n, class_labels=class_labels, steps=steps, guidance_scale=guidance_scale,
            null_label=self.null_label, generator=generator, batch_size=batch_size, progress=progress, noise=noise,
        )

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write a ``DDPMPipeline`` directory (``unet/``, ``scheduler/``, safetensors) plus the sidecar.

        ``UNet2DModel.from_pretrained(directory, subfolder="unet")`` and ``DDPMPipeline.from_pretrained``
        load it back; :func:`load_adapter` also restores the null label.
        """
        directory = Path(directory)
        unet = getattr(self.unet, "_orig_mod", self.unet)  # a torch.compile wrapper saves as its module
        DDPMPipeline(unet=unet, scheduler=self.scheduler).save_pretrained(directory, safe_serialization=True)
        sidecar = {"adapter": "ddpm", "null_label": self.null_label, "num_classes": self.num_classes}
        (directory / SIDECAR).write_text(json.dumps(sidecar, indent=2) + "\n")
        return directory

    def state_dict(self) -> dict[str, torch.Tensor]:
        return getattr(self.unet, "_orig_mod", self.unet).state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        getattr(self.unet, "_orig_mod", self.unet).load_state_dict(state)


# ---------------------------------------------------------------------- loading
def _read_null_label(directory: Path) -> int | None:
    """The null label recorded next to the model (our sidecar, or the zoo's training record)."""
    sidecar = directory / SIDECAR
    if sidecar.is_file():
        return json.loads(sidecar.read_text()).get("null_label")
    record = directory / "training.json"
    if record.is_file():
        return json.loads(record.read_text()).get("config", {}).get("null_label")
    return None


def _load_unet(unet_dir: Path, ref: str, trust_pickle: bool) -> UNet2DModel:
    """``UNet2DModel.from_pretrained`` with safetensors only (unless trusted); every failure is the input's."""
    use_safetensors = (unet_dir / _SAFE_WEIGHTS).is_file() or not trust_pickle
    try:
        return UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False, use_safetensors=use_safetensors)
    except (OSError, ValueError, RuntimeError, TypeError, KeyError, AttributeError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [type(exc).__name__]
        # torch's load_state_dict puts the useful part (the first mismatching tensor) on the second line.
        detail = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
        more = f" (and {len(lines) - 2} more)" if lines[0].endswith(":") and len(lines) > 2 else ""
        raise UserInputError(
            f"cannot load the UNet of {ref}: {detail}{more}; do the weights match config.json, and are they complete?"
        ) from exc


def _from_directory(directory: Path, null_label: int | None, trust_pickle: bool = False) -> DDPMAdapter:
    ref = f"model directory {directory}"
    if (directory / "unet").is_dir():
        unet_dir = directory / "unet"
    else:
        unet_dir = directory
    _check_unet_dir(unet_dir, ref, trust_pickle)
    unet = _load_unet(unet_dir, ref, trust_pickle)
    refuse_non_finite(unet, ref)
    sched_dir = directory / "scheduler"
    try:
        scheduler = DDPMScheduler.from_pretrained(sched_dir) if (sched_dir / "scheduler_config.json").is_file() else None
    except (OSError, ValueError, TypeError) as exc:
        raise UserInputError(f"cannot read the scheduler config of {ref}: {exc}") from None
    try:
        recorded = _read_null_label(directory)
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as exc:
        raise UserInputError(f"cannot read the null label recorded in {directory}: {exc}") from None
    return DDPMAdapter(unet, scheduler, null_label if null_label is not None else recorded)


def _from_pickle_file(path: Path, null_label: int | None, trust_pickle: bool) -> DDPMAdapter:
    """A ``.pt``/``.ckpt`` file: refused unless trusted; then only a whole pickled UNet2DModel/DDPMPipeline loads."""
    if not trust_pickle:
        raise UserInputError(f"model {_pickle_file_hint(path)}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)  # the user vouched for this file
    except Exception as exc:  # noqa: BLE001 - any failure to unpickle is the file's
        raise UserInputError(f"cannot load model file {path}: {type(exc).__name__}: {exc}") from exc
    if isinstance(obj, (UNet2DModel, DDPMPipeline)):
        return load_adapter(obj, null_label)
    raise UserInputError(f"model file {path} holds a {type(obj).__name__}, not a UNet2DModel or DDPMPipeline: "
                         "a bare state dict carries no model config. " + _state_dict_snippet(path))


def _from_hub(repo_id: str, null_label: int | None, trust_pickle: bool = False) -> DDPMAdapter:
    # low_cpu_mem_usage=False as every other load here: diffusers' default asks for `accelerate` and, without
    # it, prints a warning on every load; huggingface_hub warns about an argument diffusers still passes.
    safe = {"use_safetensors": None if trust_pickle else True, "low_cpu_mem_usage": False}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            try:
                unet = UNet2DModel.from_pretrained(repo_id, subfolder="unet", **safe)
                scheduler = DDPMScheduler.from_pretrained(repo_id, subfolder="scheduler")
            except OSError:
                # Some early hub DDPMs keep the UNet and the scheduler config at the repository root.
                unet = UNet2DModel.from_pretrained(repo_id, **safe)
                scheduler = DDPMScheduler.from_pretrained(repo_id)
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        hint = "" if trust_pickle else (
            "; fastunlearn loads only safetensors weights: if the repository ships only pickle weights (.bin), "
            "convert them or pass --trust-pickle (trust_pickle=True) if you trust it")
        raise UserInputError(
            f"cannot load model {repo_id!r}: not a local directory, and the hub/cache lookup failed ({first}){hint}"
        ) from None
    refuse_non_finite(unet, f"model {repo_id!r}")
    return DDPMAdapter(unet, scheduler, null_label)


def load_adapter(model: Any, null_label: int | None = None, trust_pickle: bool = False) -> DDPMAdapter:
    """An adapter from a ``DDPMAdapter``, a ``UNet2DModel``, a ``DDPMPipeline``, ``"zoo:NAME"``,
    a local directory (pipeline layout or a bare UNet directory) or a hub id (``"google/ddpm-cifar10-32"``).

    Weights load only from safetensors: a pickle (a directory holding only ``diffusion_pytorch_model.bin``,
    a ``.pt``/``.ckpt`` file) is refused with the lines that convert it, unless ``trust_pickle`` is set.
    A model whose weights hold NaN/Inf is refused, naming the first bad tensor.
    """
    if isinstance(model, DDPMAdapter):
        return model
    if isinstance(model, UNet2DModel):
        refuse_non_finite(model, "the given UNet2DModel")
        return DDPMAdapter(model, None, null_label)
    if isinstance(model, DDPMPipeline):
        refuse_non_finite(model.unet, "the given DDPMPipeline")
        return DDPMAdapter(model.unet, model.scheduler, null_label)
    if not isinstance(model, (str, Path)):
        raise UserInputError(
            f"model must be a zoo name, a directory, a hub id, a UNet2DModel or a DDPMPipeline; got {type(model).__name__}"
        )
    ref = str(model)
    from fastunlearn import zoo

    if ref.startswith("zoo:"):
        return _from_directory(zoo.resolve(ref), null_label)
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            if path.suffix.lower() in PICKLE_SUFFIXES:
                return _from_pickle_file(path, null_label, trust_pickle)
            raise UserInputError(f"model path {path} is a file; expected a diffusers model directory")
        return _from_directory(path, null_label, trust_pickle)
    if ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
        return _from_hub(ref, null_label, trust_pickle)
    raise UserInputError(f"model {ref!r} is neither a zoo name (zoo:NAME), an existing directory nor a hub id (org/name)")


__all__ = ["DDPMAdapter", "NoisedBatch", "load_adapter", "refuse_non_finite", "first_non_finite", "SCOPES", "PICKLE_SUFFIXES"]
