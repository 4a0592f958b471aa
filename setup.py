"""Build script: package metadata lives in pyproject.toml; this file adds the ``fastunlearn._C`` extension.

- With torch importable (``pip install --no-build-isolation -e .``): C++ CPU kernels always; CUDA kernels too
  when torch has CUDA and nvcc is found (CUDA_HOME). ``FASTUNLEARN_BUILD_CUDA=0|1`` overrides the choice
  (1 without a CUDA torch is an error); ``TORCH_CUDA_ARCH_LIST`` picks the GPU architectures (default
  "8.0;9.0"). ``FASTUNLEARN_BUILD_EXT=0`` skips the extension entirely.
- Without torch (an isolated ``pip install .``, whose build environment must not download a second torch): a
  pure-Python package; ``fastunlearn.ops._ext`` JIT-builds the extension on first use.

Either way the sources are also shipped as ``fastunlearn/_csrc`` so installed (non-editable) packages can
JIT-build.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CPU_SOURCES = ["csrc/ops.cpp", "csrc/cpu/dual_noise_loss.cpp", "csrc/cpu/bilevel_combine.cpp"]
CUDA_SOURCES = ["csrc/cuda/dual_noise_loss.cu", "csrc/cuda/bilevel_combine.cu", "csrc/cuda/ops_cuda_launch.cpp"]


def _log(message: str) -> None:
    print(f"fastunlearn setup: {message}", file=sys.stderr)


def _env_choice(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return None
    if value.strip() in ("0", "1"):
        return value.strip() == "1"
    raise SystemExit(f"fastunlearn setup: {name} must be 0 or 1, got {value!r}")


def _extensions() -> tuple[list, dict]:
    """(ext_modules, cmdclass) for the extension, or ([], {}) for a pure-Python build."""
    if _env_choice("FASTUNLEARN_BUILD_EXT") is False:
        _log("FASTUNLEARN_BUILD_EXT=0: building without the C++ extension (it is JIT-built on first use)")
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        _log("torch is not importable in this build environment; building a pure-Python package "
             "(the C++ extension is JIT-built on first use; use --no-build-isolation to build it now)")
        return [], {}

    nvcc_found = CUDA_HOME is not None and os.path.isfile(os.path.join(CUDA_HOME, "bin", "nvcc"))
    build_cuda = _env_choice("FASTUNLEARN_BUILD_CUDA")
    if build_cuda is None:
        build_cuda = torch.version.cuda is not None and nvcc_found
    elif build_cuda:
        if torch.version.cuda is None:
            raise SystemExit(
                f"fastunlearn setup: FASTUNLEARN_BUILD_CUDA=1 but torch {torch.__version__} has no CUDA support; "
                "install a CUDA build of torch or set FASTUNLEARN_BUILD_CUDA=0")
        if not nvcc_found:
            raise SystemExit("fastunlearn setup: FASTUNLEARN_BUILD_CUDA=1 but nvcc was not found; set CUDA_HOME "
                             "to the CUDA toolkit matching torch.version.cuda")

    cxx_flags = ["-O3", "-fopenmp"]
    # rpath to torch's libraries so `import fastunlearn._C` works even before `import torch` has loaded them.
    link_flags = ["-fopenmp", f"-Wl,-rpath,{os.path.join(os.path.dirname(torch.__file__), 'lib')}"]
    if build_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        _log(f"building the C++ and CUDA kernels (TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})")
        ext = CUDAExtension(
            name="fastunlearn._C",
            sources=CPU_SOURCES + CUDA_SOURCES,
            define_macros=[("FASTUNLEARN_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++17"]},
            extra_link_args=link_flags,
        )
    else:
        _log("building the C++ CPU kernels (no CUDA: torch has no CUDA, nvcc is missing, or FASTUNLEARN_BUILD_CUDA=0)")
        ext = CppExtension(
            name="fastunlearn._C",
            sources=CPU_SOURCES,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=link_flags,
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


class BuildPyWithSources(build_py):
    """build_py that also ships csrc/ as fastunlearn/_csrc, so an installed package can JIT-build."""

    def run(self) -> None:
        super().run()
        source = ROOT / "csrc"
        if not source.is_dir() or getattr(self, "editable_mode", False):
            return  # editable installs read csrc/ in place
        target = Path(self.build_lib) / "fastunlearn" / "_csrc"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.o", "*.so", "__pycache__"))


ext_modules, cmdclass = _extensions()
cmdclass["build_py"] = BuildPyWithSources
setup(ext_modules=ext_modules, cmdclass=cmdclass)
