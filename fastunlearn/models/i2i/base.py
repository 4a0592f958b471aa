"""The contract both image-to-image architectures share: :class:`I2IAdapter` (mask, scopes, devices, modes,
copies, image checks) and :class:`FrozenEncoder` (θ₀'s encoder alone). The contract itself: the package
docstring, :mod:`fastunlearn.models.i2i`."""
from __future__ import annotations

import abc
import copy
from typing import Any, Sequence

import torch

from fastunlearn.errors import UserInputError
from fastunlearn.models.masks import Mask, as_mask, parse_mask

SIDECAR = "fastunlearn.json"
SCOPES = ("all", "encoder", "decoder")
ARCHS = ("inpaint", "mae")
#: The mask of a model that records none (the paper's centre inpainting on the 16×16 digits).
DEFAULT_MASK = "center:8"


class FrozenEncoder:
    """The encoder of a model at the moment it was copied (θ₀), without its decoder: deep copies of the encoder
    modules only, ``requires_grad=False``, eval mode. :meth:`encode` / :meth:`encoder_features` are the adapter's
    methods of the same name with the weights of copy time, under ``torch.no_grad`` (equal up to float rounding:
    on the CPU, weights without gradients take other kernels, ~1e-6 apart)."""

    def __init__(self, owner: "I2IAdapter"):
        self._owner = owner
        self.module = copy.deepcopy(owner._encoder_module())
        self.module.requires_grad_(False)
        self.module.eval()

    @property
    def device(self) -> torch.device:
        return next(self.module.parameters()).device

    def to(self, device: torch.device | str) -> "FrozenEncoder":
        self.module.to(device)
        return self

    @torch.no_grad()
    def encoder_features(self, x: torch.Tensor, mask: "str | Mask | None" = None, t: torch.Tensor | None = None,
                         noise: torch.Tensor | None = None) -> list[torch.Tensor]:
        return self._owner._features(self.module, x, mask, t, noise)

    @torch.no_grad()
    def encode(self, x: torch.Tensor, mask: "str | Mask | None" = None, t: torch.Tensor | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        return self._owner._flatten(self.encoder_features(x, mask, t, noise))


class I2IAdapter(abc.ABC):
    """The contract both architectures share (see the module docstring): the mask, scopes, devices, modes, copies
    and the image checks here; the encoder, completion and saving in each subclass."""

    family = "i2i"
    arch = ""
    conditional = False
    null_label = None
    num_classes = None

    model: torch.nn.Module
    mask: Mask

    # ------------------------------------------------------------------ description
    @property
    @abc.abstractmethod
    def image_shape(self) -> tuple[int, int, int]:
        """``(channels, height, width)`` of the images the model completes."""

    @property
    def _module(self) -> torch.nn.Module:
        """The model itself (the module inside a ``torch.compile`` wrapper)."""
        return getattr(self.model, "_orig_mod", self.model)

    # the family-neutral name the engine reads (every adapter has one: the network it moves, compiles and checks)
    @property
    def network(self) -> torch.nn.Module:
        """The whole model (``model``: the UNet, the ViTMAEForPreTraining), possibly a ``torch.compile``
        wrapper; assignable."""
        return self.model

    @network.setter
    def network(self, value: torch.nn.Module) -> None:
        self.model = value

    def set_mask(self, mask: "str | Mask") -> "I2IAdapter":
        """Make ``mask`` the model's own (what ``mask=None`` means from now on and what :meth:`save_pretrained`
        records), checked against the image size (and, on a patch model, against its patches)."""
        self.mask = parse_mask(mask, self.image_shape)
        return self

    @property
    def device(self) -> torch.device:
        return next(self._module.parameters()).device

    def to(self, device: torch.device | str) -> "I2IAdapter":
        self.model.to(device)
        return self

    @property
    def training(self) -> bool:
        return self.model.training

    def train(self, mode: bool = True) -> "I2IAdapter":
        self.model.train(mode)
        return self

    def eval(self) -> "I2IAdapter":
        return self.train(False)

    def check_images(self, images: torch.Tensor, what: str = "images") -> None:
        """Raise a :class:`UserInputError` naming expected vs got when ``images`` do not fit the model."""
        c, h, w = self.image_shape
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != (c, h, w):
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            got = "×".join(str(s) for s in shape[1:]) if isinstance(shape, tuple) and len(shape) == 4 else f"{shape}"
            raise UserInputError(f"{what} do not fit the model: expected [N, {c}, {h}, {w}] images "
                                 f"({c}×{h}×{w}, channels×height×width), got {got}")

    def _mask(self, mask: "str | Mask | None") -> Mask:
        return as_mask(mask, self.image_shape, default=self.mask)

    # ------------------------------------------------------------------ scopes
    @abc.abstractmethod
    def _scope_prefixes(self) -> dict[str, tuple[str, ...]]:
        """Name prefixes of the ``encoder`` and ``decoder`` scopes."""

    def _trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return list(self._module.named_parameters())

    def named_parameters(self, scope: str = "all") -> list[tuple[str, torch.nn.Parameter]]:
        """``(name, parameter)`` of ``scope``: ``encoder``, ``decoder`` or ``all`` (their union)."""
        named = self._trainable()
        prefixes = self._scope_prefixes()
        if scope == "all":
            return named
        if scope not in prefixes:
            raise UserInputError(f"unknown parameter scope {scope!r} for an image-to-image model; expected one of "
                                 f"{', '.join(SCOPES)}")
        return [(n, p) for n, p in named if n.startswith(prefixes[scope])]

    def parameters(self, scope: str = "all") -> list[torch.nn.Parameter]:
        return [p for _, p in self.named_parameters(scope)]

    def _check_split(self) -> None:
        """Every trainable parameter belongs to exactly one of encoder and decoder (else the split is wrong)."""
        prefixes = self._scope_prefixes()
        for name, _ in self._trainable():
            owners = [s for s in ("encoder", "decoder") if name.startswith(prefixes[s])]
            if len(owners) != 1:
                raise UserInputError(f"{type(self).__name__}: parameter {name} belongs to "
                                     f"{' and '.join(owners) or 'neither encoder nor decoder'}; this model has a "
                                     "module the encoder/decoder split does not know")

    # ------------------------------------------------------------------ encoder
    @abc.abstractmethod
    def _encoder_module(self) -> torch.nn.Module:
        """The encoder as one module (sharing the model's parameters): what :meth:`frozen_encoder` copies."""

    @abc.abstractmethod
    def _features(self, encoder: torch.nn.Module, x: torch.Tensor, mask: "str | Mask | None",
                  t: torch.Tensor | None, noise: torch.Tensor | None) -> list[torch.Tensor]:
        """The features of ``x`` through ``encoder`` (the live one or a frozen copy)."""

    @abc.abstractmethod
    def _flatten(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[N, F]`` from :meth:`encoder_features`."""

    def encoder_features(self, x: torch.Tensor, mask: "str | Mask | None" = None, t: torch.Tensor | None = None,
                         noise: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The encoder's features of ``x`` under ``mask`` (with gradients to the encoder's parameters)."""
        return self._features(self._encoder_module(), x, mask, t, noise)

    def encode(self, x: torch.Tensor, mask: "str | Mask | None" = None, t: torch.Tensor | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """One flat feature row ``[N, F]`` per image (see the class docstring for F)."""
        return self._flatten(self.encoder_features(x, mask, t, noise))

    def flatten_features(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[N, F]`` rows from maps shaped like :meth:`encoder_features`' (``encode`` = this of those): how a
        method puts a target given per map (e.g. Gaussian noise in each map's own units) in the rows' space."""
        return self._flatten(features)

    def frozen_encoder(self) -> FrozenEncoder:
        """θ₀'s encoder: a copy of the encoder modules only (the decoder is not copied)."""
        return FrozenEncoder(self)

    def scratch_copy(self) -> "I2IAdapter":
        """An adapter over an independent deep copy of the whole model (same mask, schedule and flags)."""
        other = copy.copy(self)
        other.model = copy.deepcopy(self._module)
        return other

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._module.load_state_dict(state)

    def _sidecar(self) -> dict[str, Any]:
        return {"adapter": "i2i", "arch": self.arch, "mask": self.mask.spec, "image_shape": list(self.image_shape)}

    @staticmethod
    def _check_num(num: int) -> None:
        if int(num) < 1:
            raise UserInputError(f"num (completions per image) must be at least 1, got {num}")
