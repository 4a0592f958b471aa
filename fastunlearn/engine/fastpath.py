"""The fast path: precision, torch.compile, attention backend, memory format, fused optimizer, CUDA graphs,
gradient checkpointing — one resolved :class:`FastPath` per run and :func:`prepare_model` to set the model up.

Every switch is ``auto`` by default and resolves per device to what was measured fastest (README, "Fast
path"; ``python benchmarks/bench_step.py --fast-path`` prints the ablation):

===================  ======================================  =============================================
switch               auto on CUDA                            auto on CPU
===================  ======================================  =============================================
``precision``        bf16 autocast (fp32 master weights,     bf16 autocast on a CPU with native bf16
                     fp32 loss accumulation in the ops)      instructions (AVX512-BF16 or AMX: measured
                                                             2.0× the fp32 step on the digits UNet at
                                                             batch 64, 1.8× on the CIFAR-10-sized one,
                                                             same forgetting and retention on the default
                                                             job); fp32 elsewhere (emulated bf16 is slow)
                                                             and on models measured slower in bf16 (the
                                                             masked autoencoder: adapter ``cpu_bf16``)
``compile``          on (``torch.compile`` of the UNet)      off (measured: no gain on the digits UNet for
                                                             ~2 min of compile time)
``attention``        xformers if importable and ≥ 0.0.23,    PyTorch SDPA
                     else PyTorch SDPA
``channels_last``    on                                      off (0.92x the speed in fp32, 0.81x in bf16: digits b64)
``fused_optimizer``  on                                      on (same speed; it is what lets a non-finite
                                                             step be skipped on the device, see below)
===================  ======================================  =============================================

``cuda_graphs`` (off by default) compiles with ``mode="reduce-overhead"``, which captures the UNet's forward
and backward in CUDA graphs; it needs CUDA and ``compile``.

Non-finite steps: with the fused optimizer the combined gradient's on-device non-finite flag is handed to
Adam as ``found_inf`` (the mechanism ``torch.amp.GradScaler`` uses), so a bad step is skipped — no weight,
moment or step-count change — without a host sync. Without it, the gradient is zeroed instead.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from fastunlearn.errors import UserInputError

#: xformers older than this lacks the memory-efficient attention diffusers' processor calls.
XFORMERS_MIN_VERSION = (0, 0, 23)


@dataclass(frozen=True)
class FastPath:
    """The resolved switches of one run (no ``auto`` left)."""

    precision: str = "fp32"
    compile: bool = False
    attention: str = "sdpa"
    channels_last: bool = False
    fused_optimizer: bool = True
    cuda_graphs: bool = False
    grad_checkpointing: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _version_tuple(version: str) -> tuple[int, ...]:
    out = []
    for part in version.split("+")[0].split(".")[:3]:
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits) if digits else 0)
    return tuple(out)


def xformers_status() -> tuple[bool, str]:
    """(usable, why) for xformers' memory-efficient attention: importable, recent enough, built with CUDA."""
    try:
        import xformers  # noqa: F401
        import xformers.ops  # noqa: F401
    except Exception as exc:  # ImportError, or a broken build raising anything at import
        return False, f"xformers is not importable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    version = getattr(xformers, "__version__", "0")
    if _version_tuple(version) < XFORMERS_MIN_VERSION:
        need = ".".join(map(str, XFORMERS_MIN_VERSION))
        return False, f"xformers {version} is older than {need}"
    if not torch.cuda.is_available():
        return False, "xformers needs CUDA"
    return True, f"xformers {version}"


def fused_adam_supported(device: torch.device) -> bool:
    """torch has a fused Adam for CUDA and (torch ≥ 2.4) CPU tensors."""
    return device.type in ("cuda", "cpu") and _version_tuple(torch.__version__) >= (2, 4)


def cpu_has_native_bf16() -> bool:
    """True when the CPU executes bf16 natively (AVX512-BF16 or AMX-BF16) and torch's oneDNN can use it."""
    try:
        flags = set()
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags.update(line.split(":", 1)[1].split())
                    break
    except OSError:
        return False
    if not flags & {"avx512_bf16", "amx_bf16"}:
        return False
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def auto_precision(device: torch.device, adapter: Any = None) -> str:
    """``auto`` precision: bf16 on CUDA with bf16 support and on CPUs with native bf16, else fp32.

    A model whose adapter sets ``cpu_bf16 = False`` (measured slower under CPU bf16 autocast: the masked
    autoencoder, whose ViT step is 0.64× the fp32 one on this project's CPU, ``benchmarks/bench_i2i.py``) stays
    fp32 on the CPU."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_native_bf16() and getattr(adapter, "cpu_bf16", True) else "fp32"
    return "fp32"


def resolve_fast_path(cfg: Any, device: torch.device, adapter: Any = None) -> FastPath:
    """Turn a config's ``auto`` switches into concrete ones for ``device`` (and the model's ``adapter``, when
    given: see :func:`auto_precision`); raise on impossible asks."""
    cuda = device.type == "cuda"

    def pick(value: Any, auto: bool) -> bool:
        return auto if value == "auto" else bool(value)

    precision = auto_precision(device, adapter) if cfg.precision == "auto" else cfg.precision
    compile_ = pick(cfg.compile, cuda)
    attention = cfg.attention
    if attention == "auto":
        attention = "xformers" if cuda and xformers_status()[0] else "sdpa"
    elif attention == "xformers":
        ok, why = xformers_status()
        if not ok:
            raise UserInputError(f"attention 'xformers' is not available: {why}; use --attention sdpa or auto")
    fused = pick(cfg.fused_optimizer, fused_adam_supported(device))
    if fused and not fused_adam_supported(device):
        raise UserInputError(f"a fused optimizer is not available for device {device.type} with torch {torch.__version__}")
    cuda_graphs = bool(cfg.cuda_graphs)
    if cuda_graphs and not cuda:
        raise UserInputError("cuda_graphs needs a CUDA device")
    if cuda_graphs and not compile_:
        raise UserInputError("cuda_graphs captures the compiled model: it needs compile on (drop --no-compile)")
    return FastPath(precision=precision, compile=compile_, attention=attention,
                    channels_last=pick(cfg.channels_last, cuda), fused_optimizer=fused,
                    cuda_graphs=cuda_graphs, grad_checkpointing=bool(cfg.grad_checkpointing))


def attention_layers(unet: torch.nn.Module) -> list[torch.nn.Module]:
    """Every diffusers ``Attention`` layer of a model."""
    from diffusers.models.attention_processor import Attention

    return [m for m in unet.modules() if isinstance(m, Attention)]


def set_attention(unet: torch.nn.Module, backend: str) -> None:
    """Route every attention layer of a diffusers model through ``backend`` (sdpa, xformers or eager).

    Done per ``Attention`` layer (``set_processor``), since not every diffusers model class has
    ``set_attn_processor`` (``UNet2DModel`` does not).
    """
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if backend not in ("sdpa", "eager", "xformers"):
        raise UserInputError(f"unknown attention backend {backend!r}")
    for layer in attention_layers(unet):
        if backend == "xformers":
            layer.set_use_memory_efficient_attention_xformers(True)
        else:
            layer.set_processor(AttnProcessor2_0() if backend == "sdpa" else AttnProcessor())


def prepare_model(adapter: Any, device: torch.device, fast: FastPath | None = None, shard: Any = None) -> Any:
    """Move the model to ``device`` as fp32 master weights and apply the model-side switches.

    (``precision`` is applied by the loop as autocast around each step and ``fused_optimizer`` by the method
    when it builds its optimizer.) ``shard``: called with the UNet before ``torch.compile`` (FSDP2, see
    :meth:`fastunlearn.engine.distributed.Distributed.shard`).
    """
    fast = fast or FastPath()
    unet = adapter.network  # the denoiser (or, image-to-image, the whole model)
    # fp32 master weights; `.to(dtype)` only when needed (diffusers warns on a no-op dtype cast).
    if any(p.dtype != torch.float32 for p in unet.parameters()):
        unet.to(dtype=torch.float32)
    adapter.to(device)  # the denoiser and whatever else the model has (text encoder, VAE)
    unet.train()
    set_attention(unet, fast.attention)
    if fast.channels_last:
        unet.to(memory_format=torch.channels_last)
    if fast.grad_checkpointing:
        if not getattr(unet, "_supports_gradient_checkpointing", False):
            raise UserInputError(f"{type(unet).__name__} does not support gradient checkpointing")
        unet.enable_gradient_checkpointing()
    if shard is not None:
        shard(unet)
    if fast.compile:
        mode = "reduce-overhead" if fast.cuda_graphs else None
        adapter.network = torch.compile(unet, mode=mode)
    return adapter


__all__ = ["FastPath", "resolve_fast_path", "prepare_model", "set_attention", "attention_layers", "xformers_status",
           "fused_adam_supported", "auto_precision", "cpu_has_native_bf16", "XFORMERS_MIN_VERSION"]
