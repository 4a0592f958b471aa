"""Loads the ``fastunlearn._C`` extension: built ahead of time by ``setup.py``, else JIT-built once and cached.

The extension registers ``torch.ops.fastunlearn.{dual_noise_loss_forward, dual_noise_loss_backward,
bilevel_stats, bilevel_apply}`` (C++ CPU kernels always; CUDA kernels when built with CUDA). Order:

1. ``FASTUNLEARN_NO_EXT=1`` → unavailable (to exercise the Triton/reference fallbacks).
2. ``import fastunlearn._C`` (the ahead-of-time build; skipped when ``FASTUNLEARN_FORCE_JIT=1``).
3. ``torch.utils.cpp_extension.load`` of the sources in ``csrc/`` (the repository's for source and editable
   installs, else the copy shipped as ``fastunlearn/_csrc``) into
   ``$FASTUNLEARN_CACHE_DIR/ext-<torch version>-<source hash>`` (default ``~/.cache/fastunlearn``). The hash
   covers every source, so an edit or a torch upgrade rebuilds; torch's file baton in the build directory
   makes concurrent processes wait for one build.

Nothing here raises at import or on failure unless ``load(required=True)``: a missing compiler or a failed
build gives one warning naming the reason, and the other backends are used. The outcome (failure included) is
cached for the process.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

_JIT_NAME = "fastunlearn_C_jit"
_CPU_SOURCES = ("ops.cpp", "cpu/dual_noise_loss.cpp", "cpu/bilevel_combine.cpp")
_CUDA_SOURCES = ("cuda/dual_noise_loss.cu", "cuda/bilevel_combine.cu", "cuda/ops_cuda_launch.cpp")

_lock = threading.Lock()
_module: ModuleType | None = None
_status: dict | None = None


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _source_root() -> Path | None:
    """``csrc/`` beside the package (source / editable install) or the copy shipped in the wheel."""
    package_dir = Path(__file__).resolve().parent.parent
    for root in (package_dir.parent / "csrc", package_dir / "_csrc"):
        if all((root / s).is_file() for s in _CPU_SOURCES):
            return root
    return None


def _source_hash(root: Path, with_cuda: bool) -> str:
    """Hash of every source the build compiles or includes (cuda/ only for CUDA builds)."""
    digest = hashlib.sha256()
    paths = (p for p in root.rglob("*") if p.suffix in (".cpp", ".cu", ".h", ".cuh") and p.is_file())
    if not with_cuda:
        paths = (p for p in paths if "cuda" not in p.relative_to(root).parts)
    for path in sorted(paths):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _cache_dir(root: Path | None, with_cuda: bool) -> Path:
    import torch

    base = os.environ.get("FASTUNLEARN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "fastunlearn")
    source_hash = _source_hash(root, with_cuda) if root is not None else "nosrc"
    flavour = "-cuda" if with_cuda else ""
    return Path(base) / f"ext-{torch.__version__.replace('+', '_')}-{source_hash}{flavour}"


def _jit_wants_cuda() -> bool:
    import torch

    if torch.version.cuda is None:
        return False
    from torch.utils.cpp_extension import CUDA_HOME

    return CUDA_HOME is not None and os.path.isfile(os.path.join(CUDA_HOME, "bin", "nvcc"))


def _devices(module: ModuleType) -> list[str]:
    return ["cpu", "cuda"] if module.has_cuda() else ["cpu"]


def _build_error_reason(exc: BaseException) -> str:
    """The first compiler error line of a failed build (torch's message holds the whole log)."""
    text = str(exc)
    for line in text.splitlines():
        if "error" in line.lower() and "Error building extension" not in line:
            return f"JIT build failed: {line.strip()[:300]}"
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return f"JIT build failed: {first[:300]}"


def _jit_build() -> tuple[ModuleType | None, str, Path | None]:
    """(module or None, reason when None, cache directory)."""
    root = _source_root()
    if root is None:
        return None, "the C++ sources (csrc/) are not found next to the package", None
    with_cuda = _jit_wants_cuda()
    build_dir = _cache_dir(root, with_cuda)
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return None, f"no C++ compiler found (looked for {compiler!r}; set CXX or install g++)", build_dir
    try:
        from torch.utils.cpp_extension import load as cpp_load
    except Exception as exc:  # a broken torch install; report it instead of failing the import
        return None, f"torch.utils.cpp_extension is unusable: {exc}", build_dir

    sources = [str(root / s) for s in _CPU_SOURCES]
    cflags = ["-O3", "-fopenmp"]
    cuda_flags: list[str] = []
    if with_cuda:
        sources += [str(root / s) for s in _CUDA_SOURCES]
        cflags.append("-DFASTUNLEARN_WITH_CUDA")
        cuda_flags = ["-O3", "-std=c++17", "-DFASTUNLEARN_WITH_CUDA"]
    build_dir.mkdir(parents=True, exist_ok=True)
    if not any(build_dir.glob(f"{_JIT_NAME}*.so")):
        print(f"fastunlearn: building the C++ extension (once, cached in {build_dir})", file=sys.stderr, flush=True)
    try:
        module = cpp_load(
            name=_JIT_NAME,
            sources=sources,
            extra_cflags=cflags,
            extra_cuda_cflags=cuda_flags or None,
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            is_python_module=True,
            verbose=False,
        )
    except Exception as exc:  # compiler errors, ninja missing, link failures: all mean "use the other backends"
        return None, _build_error_reason(exc), build_dir
    return module, "", build_dir


def _load_locked() -> None:
    global _module, _status
    if _env_flag("FASTUNLEARN_NO_EXT"):
        _status = {"available": False, "mode": None, "devices": [], "cache_dir": None,
                   "reason": "disabled by FASTUNLEARN_NO_EXT=1"}
        return
    aot_reason = "skipped (FASTUNLEARN_FORCE_JIT=1)"
    # A library namespace registers once per process: if fastunlearn._C is already loaded, a JIT copy could
    # not register its ops, so FORCE_JIT yields to it.
    if not _env_flag("FASTUNLEARN_FORCE_JIT") or "fastunlearn._C" in sys.modules:
        try:
            from fastunlearn import _C  # noqa: PLC0415 - optional, built by setup.py

            _module = _C
            _status = {"available": True, "mode": "aot", "devices": _devices(_C), "cache_dir": None, "reason": ""}
            return
        except ImportError as exc:  # not built (pure-Python install) or built against another torch
            aot_reason = f"fastunlearn._C not importable ({exc})"
    module, reason, build_dir = _jit_build()
    if module is None:
        _status = {"available": False, "mode": None, "devices": [],
                   "cache_dir": str(build_dir) if build_dir else None, "reason": f"{reason}; AOT: {aot_reason}"}
        warnings.warn(
            f"fastunlearn: the C++ extension is unavailable ({_status['reason']}); "
            "the Triton/reference backends will be used instead.",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    _module = module
    _status = {"available": True, "mode": "jit", "devices": _devices(module), "cache_dir": str(build_dir),
               "reason": ""}


def load(required: bool = False) -> ModuleType | None:
    """The loaded extension module (its ops are ``torch.ops.fastunlearn.*``), or None when unavailable.

    With ``required=True`` an unavailable extension raises ``RuntimeError`` with the reason instead.
    """
    with _lock:
        if _status is None:
            _load_locked()
    if _module is None and required:
        raise RuntimeError(f"fastunlearn C++ extension unavailable: {_status['reason']}")
    return _module


def status() -> dict:
    """``{available, mode ("aot" | "jit" | None), devices, reason, cache_dir}`` (loads the extension first)."""
    load()
    return dict(_status)
