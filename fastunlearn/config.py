"""``UnlearnConfig``: one unlearning job's settings, from keyword arguments, a dict, YAML or CLI flags.

Precedence (lowest first): the defaults here (and the method's own defaults for ``steps``, ``batch_size``
and ``lr``), a YAML file, explicit arguments. :meth:`UnlearnConfig.validate` checks everything that can be
checked without loading the model and raises :class:`~fastunlearn.errors.UserInputError` naming the key,
the bad value and what is allowed. Method options (e.g. EraseDiff's ``lambda_rule``) may be given flat or
under ``options:``; they are validated by the method's ``Options`` dataclass.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from fastunlearn.errors import UserInputError

PRECISIONS = ("auto", "fp32", "bf16")
ATTENTION_BACKENDS = ("auto", "sdpa", "xformers", "eager")
SHARDINGS = ("ddp", "fsdp")


@dataclass
class UnlearnConfig:
    """Everything one ``fastunlearn.run`` needs; ``config.yaml`` in the output holds it to rerun the job."""

    model: str = "zoo:digits-ddpm"  #: zoo:NAME, a local diffusers directory or a hub id
    #: selector: ``class:C[,C]``, ``index:I[,I]``, a list of indices, or an image folder (DDPMs);
    #: ``prompt:TEXT[;TEXT]``, ``prompts:FILE``, ``images:DIR`` or a list of them (text-to-image models)
    forget: Any = "class:0"
    #: selector; default: the rest of the digits train split (DDPMs), the model's other concepts (text-to-image)
    retain: Any = None
    method: str = "erasediff"
    steps: int | None = None  #: None: the method's default
    #: rows per side (forget and retain) per step — the GLOBAL batch under torchrun; None: the method's default
    batch_size: int | None = None
    lr: float | None = None  #: None: the method's default
    seed: int = 0
    out_dir: str = "fastunlearn-out"
    unconditional: bool = False  #: forget the class from the model's unconditional (null-label) generations
    evaluate: bool = True  #: measure before and after with the shipped classifier
    eval_per_class: int = 100  #: class-conditional generations per class, per evaluation
    eval_unconditional: int = 1000  #: unconditional generations per evaluation (``unconditional=True``)
    #: DDIM steps of the evaluation sampler: on the digits DDPM the judge scores DDIM-10 samples as well as
    #: DDIM-20 ones (retained classes 97.8% vs 97.2%), at half the default job's evaluation time.
    eval_steps: int = 10
    eval_seed: int = 1234  #: the evaluation's noise seed (the same noise before and after)
    checkpoint_every: int = 0  #: steps between checkpoints (0: only with resume in mind, none)
    keep_checkpoints: int = 2  #: the newest checkpoints kept (older ones are deleted once a newer one is written)
    resume: bool = False  #: continue the run of ``out_dir`` from its latest checkpoint
    log_every: int = 10  #: steps between metric reads (progress bar, metrics.jsonl)
    device: str = "auto"
    # ---- the fast path (engine/fastpath.py resolves "auto" per device; README "Fast path" has the measurements)
    precision: str = "auto"  #: auto (bf16 on CUDA and on CPUs with native bf16, else fp32), fp32, or bf16 autocast (fp32 master weights)
    compile: bool | str = "auto"  #: torch.compile the UNet: auto (on for CUDA, off on CPU), true, false
    attention: str = "auto"  #: auto (xformers when importable on CUDA, else SDPA), sdpa, xformers, eager
    channels_last: bool | str = "auto"  #: channels-last memory format: auto (on for CUDA, off on CPU), true, false
    fused_optimizer: bool | str = "auto"  #: fused Adam kernel: auto (where torch has one: CPU, CUDA), true, false
    cuda_graphs: bool = False  #: capture the compiled step in CUDA graphs (torch.compile mode reduce-overhead)
    grad_checkpointing: bool = False  #: recompute activations in the backward to save memory
    #: under torchrun: ddp (every process holds the whole model; gradients all-reduced) or fsdp (FSDP2 shards)
    sharding: str = "ddp"
    #: consecutive steps skipped for a non-finite gradient before the run aborts
    max_skipped_steps: int = 10
    trust_pickle: bool = False  #: allow loading pickle (.bin/.pt/.ckpt) weights: only for files you trust
    threads: int | None = None  #: CPU threads; None: 1 for small models (< 10M parameters) on CPU, else torch's default
    #: which parameters train: all, attention (DDPMs); all, xattn, xattn-kv, noxattn, attention, text-encoder
    #: (text-to-image); None: the method's default (ESD: xattn), else all
    scope: str | None = None
    #: text-to-image: classifier-free guidance of generation and evaluation (None: the model's default)
    guidance: float | None = None
    #: text-to-image: images of each forget/retain prompt the frozen model generates for methods that train on
    #: images (EraseDiff, SalUn, fine-tune, gradient ascent), unless images:DIR gives the user's own
    images_per_prompt: int = 64
    #: text-to-image: a CLIP model (directory or hub id) for the CLIP score of the generations before and after
    clip: str | None = None
    #: text-to-image: measure the nudity rate of the forget prompts' generations (NudeNet, ``pip install fastunlearn[nudity]``)
    nudity: bool = False
    #: image-to-image: the mask of training and evaluation, ``center:K`` (a K×K hole in the middle) or ``outpaint:K``
    #: (the centre K×K kept); None: the model's own (recorded in its fastunlearn.json)
    mask: str | None = None
    progress: bool = True
    options: dict[str, Any] = field(default_factory=dict)  #: method options

    # ------------------------------------------------------------------ construction
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], base: "UnlearnConfig | None" = None) -> "UnlearnConfig":
        """Build (or update ``base``) from a mapping; unknown keys that are not method options are errors."""
        if not isinstance(values, Mapping):
            raise UserInputError(f"a config must be a mapping of keys to values, got {type(values).__name__}")
        current = dataclasses.asdict(base) if base is not None else {}
        current.setdefault("options", {})
        options = dict(current["options"])
        names = set(cls.field_names())
        if "out" in values and "out_dir" not in values:  # the CLI's spelling
            values = {("out_dir" if k == "out" else k): v for k, v in values.items()}
        method = values.get("method", current.get("method", cls.method))
        loose: dict[str, Any] = {}
        for key, value in values.items():
            if key == "options":
                if value is None:
                    continue
                if not isinstance(value, Mapping):
                    raise UserInputError(f"config key 'options' must be a mapping, got {value!r}")
                options.update(value)
            elif key in names:
                current[key] = value
            else:
                loose[key] = value
        if loose:
            from fastunlearn.methods import base as methods

            known = set(methods.option_names(method))
            unknown = sorted(k for k in loose if k not in known)
            if unknown:
                raise UserInputError(
                    f"unknown config key {unknown[0]!r}; known keys: {', '.join(cls.field_names())}; "
                    f"{method} options: {', '.join(sorted(known))}"
                )
            options.update(loose)
        current["options"] = options
        return cls(**current)

    @classmethod
    def from_yaml(cls, path: str | Path, base: "UnlearnConfig | None" = None) -> "UnlearnConfig":
        path = Path(path)
        if not path.is_file():
            raise UserInputError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise UserInputError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise UserInputError(f"config file {path} must hold a mapping of keys to values")
        return cls.from_dict(data, base)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if isinstance(d["forget"], tuple):
            d["forget"] = list(d["forget"])
        return d

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    # ------------------------------------------------------------------ validation
    def resolved(self, family: str | None = None) -> "UnlearnConfig":
        """A validated copy with the method's defaults (for the model's family: ``ddpm`` or ``t2i``; None reads
        it from the model reference) filled in and its options normalised."""
        from fastunlearn.methods import base as methods

        cls = methods.get(self.method)
        if family is None:
            from fastunlearn.models import family_of_ref

            family = family_of_ref(self.model)
        defaults = {}
        if hasattr(cls, "defaults"):
            import inspect

            # a method whose measured defaults depend on the model itself (AdvUnlearn on the embedded default)
            extra = {"model": self.model} if "model" in inspect.signature(cls.defaults).parameters else {}
            defaults = cls.defaults(self.unconditional, dict(self.options), family=family, **extra)
        out = dataclasses.replace(self, options=dict(self.options))
        for key in ("steps", "batch_size", "lr"):
            if getattr(out, key) is None:
                setattr(out, key, defaults.get(key))
        if out.scope is None:
            out.scope = defaults.get("scope", "all")
        for key, value in defaults.get("options", {}).items():
            out.options.setdefault(key, value)
        out.validate()
        out.options = dataclasses.asdict(methods.parse_options(self.method, out.options))
        return out

    def validate(self) -> None:
        """Check the keys' types and ranges; raise :class:`UserInputError` for the first problem."""
        from fastunlearn.methods import base as methods

        methods.get(self.method)  # unknown method → error listing the known ones
        for key in ("steps", "batch_size", "eval_per_class", "eval_unconditional", "eval_steps", "log_every",
                    "keep_checkpoints", "images_per_prompt"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UserInputError(f"{key} must be a positive integer, got {value!r}")
        for key in ("seed", "eval_seed", "checkpoint_every"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise UserInputError(f"{key} must be an integer >= 0, got {value!r}")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not self.lr > 0:
            raise UserInputError(f"lr must be a positive number, got {self.lr!r}")
        for key in ("unconditional", "evaluate", "resume", "progress", "cuda_graphs", "grad_checkpointing",
                    "trust_pickle", "nudity"):
            if not isinstance(getattr(self, key), bool):
                raise UserInputError(f"{key} must be true or false, got {getattr(self, key)!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or isinstance(self.threads, bool)
                                         or self.threads <= 0):
            raise UserInputError(f"threads must be a positive integer or null, got {self.threads!r}")
        for key in ("compile", "channels_last", "fused_optimizer"):
            if not isinstance(getattr(self, key), bool) and getattr(self, key) != "auto":
                raise UserInputError(f"{key} must be auto, true or false, got {getattr(self, key)!r}")
        if self.attention not in ATTENTION_BACKENDS:
            raise UserInputError(
                f"unknown attention backend {self.attention!r}; expected one of {', '.join(ATTENTION_BACKENDS)}")
        if not isinstance(self.max_skipped_steps, int) or isinstance(self.max_skipped_steps, bool) \
                or self.max_skipped_steps <= 0:
            raise UserInputError(f"max_skipped_steps must be a positive integer, got {self.max_skipped_steps!r}")
        if self.sharding not in SHARDINGS:
            raise UserInputError(f"unknown sharding {self.sharding!r}; expected one of {', '.join(SHARDINGS)}")
        if self.precision not in PRECISIONS:
            raise UserInputError(f"unknown precision {self.precision!r}; expected one of {', '.join(PRECISIONS)}")
        if not isinstance(self.model, str) or not self.model:
            raise UserInputError(f"model must be a zoo name, a directory or a hub id, got {self.model!r}")
        if not isinstance(self.out_dir, (str, Path)) or not str(self.out_dir):
            raise UserInputError(f"out_dir must be a path, got {self.out_dir!r}")
        if self.guidance is not None and (isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float))
                                          or not self.guidance >= 1.0):
            raise UserInputError(f"guidance must be a number >= 1 (1: no guidance), got {self.guidance!r}")
        if self.clip is not None and (not isinstance(self.clip, str) or not self.clip):
            raise UserInputError(f"clip must be a CLIP model directory or hub id, got {self.clip!r}")
        if self.mask is not None and (not isinstance(self.mask, str) or not self.mask.strip()):
            raise UserInputError(f"mask must be a string such as 'center:8' or 'outpaint:8', got {self.mask!r}")
        if self.scope is not None and not isinstance(self.scope, str):
            raise UserInputError(f"scope must be a string, got {self.scope!r}")
        if not isinstance(self.options, Mapping):
            raise UserInputError(f"options must be a mapping, got {self.options!r}")
        methods.parse_options(self.method, self.options)

    def fingerprint(self) -> dict[str, Any]:
        """The settings a checkpoint must share with the run resuming it (``steps`` may grow on resume)."""
        keys = ("model", "forget", "retain", "method", "batch_size", "lr", "seed", "unconditional",
                "precision", "scope", "guidance", "images_per_prompt", "mask", "options")
        d = self.to_dict()
        return {k: d[k] for k in keys}


def parse_option_pairs(pairs: list[str] | None) -> dict[str, str]:
    """``["key=value", ...]`` (the CLI's ``--option``) → a dict; values are converted by the method."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserInputError(f"--option expects KEY=VALUE, got {pair!r}")
        out[key.strip()] = value.strip()
    return out


__all__ = ["UnlearnConfig", "parse_option_pairs", "PRECISIONS", "ATTENTION_BACKENDS", "SHARDINGS"]
