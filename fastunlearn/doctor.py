"""``fastunlearn doctor``: what this machine gives fastunlearn, and why each kernel backend is or is not used.

Prints versions, devices, the C++/CUDA extension's state (ahead-of-time build, JIT build or none) and,
for each op and device, the backend ``auto`` picks and every other backend's reasons for refusing —
the same reasons a forced ``FASTUNLEARN_BACKEND`` raises with.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import shutil

import torch

OPS = ("dual_noise_loss", "bilevel_combine")
PACKAGES = ("torch", "triton", "diffusers", "xformers", "numpy", "safetensors")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def collect() -> dict:
    """The doctor's findings as plain data (also what ``--json`` prints)."""
    from fastunlearn import __version__
    from fastunlearn.ops import _ext, backends

    _ext.load()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    report = {
        "fastunlearn": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "cuda": {
            "torch_cuda": torch.version.cuda,
            "available": torch.cuda.is_available(),
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
            "nvcc": shutil.which("nvcc"),
        },
        "extension": _ext.status(),
        "backend_env": os.environ.get("FASTUNLEARN_BACKEND", "auto"),
        "ops": {},
    }
    for op in OPS:
        for device in devices:
            try:
                chosen = backends.select(op, device, torch.float32)
            except Exception as exc:  # a forced backend that cannot run here: show it, don't crash
                chosen = f"error: {exc}"
            report["ops"][f"{op} [{device.type}]"] = {
                "chosen": chosen,
                "refused": {name: reasons for name, reasons in backends.explain(device) if reasons},
            }
    return report


def format_report(report: dict) -> str:
    ext = report["extension"]
    lines = [
        f"fastunlearn {report['fastunlearn']}  (python {report['python']}, {report['platform']})",
        "",
        "packages:",
        *[f"  {name:<12} {ver}" for name, ver in report["packages"].items()],
        "",
        "devices:",
        f"  torch CUDA build : {report['cuda']['torch_cuda'] or 'none (CPU build)'}",
        f"  GPUs             : {', '.join(report['cuda']['gpus']) or 'none'}",
        f"  nvcc             : {report['cuda']['nvcc'] or 'not found'}",
        "",
        "C++/CUDA extension (fastunlearn._C):",
        f"  available        : {'yes' if ext['available'] else 'no'}"
        + (f" ({ext['mode']} build, kernels for: {', '.join(ext['devices'])})" if ext["available"] else ""),
    ]
    if not ext["available"]:
        lines.append(f"  why not          : {ext['reason']}")
    if ext.get("cache_dir"):
        lines.append(f"  JIT cache        : {ext['cache_dir']}")
    lines += ["", f"kernel backends (FASTUNLEARN_BACKEND={report['backend_env']}):"]
    for key, info in report["ops"].items():
        lines.append(f"  {key:<24} -> {info['chosen']}")
        for name, reasons in info["refused"].items():
            lines.append(f"      {name:<10} refused: {'; '.join(reasons)}")
    return "\n".join(lines)


def main(as_json: bool = False) -> int:
    report = collect()
    print(json.dumps(report, indent=2, default=str) if as_json else format_report(report))
    return 0
