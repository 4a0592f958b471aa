#!/usr/bin/env bash
# Compile every CUDA-side translation unit of the extension on a machine with nvcc but no GPU and a CPU-only
# torch (what CI has), so a type error in the CUDA path fails CI instead of a user's first GPU build:
#   1. csrc/cuda/*.cu     with nvcc -c for sm_80 and sm_90 (plain CUDA, no torch headers);
#   2. csrc/cuda/*_launch.cpp and csrc/ops.cpp with FASTUNLEARN_WITH_CUDA, i.e. the torch glue as the CUDA
#      build compiles it (setup.py's CUDAExtension), with g++ -c against torch's headers and CUDA's.
# A CPU torch wheel ships the c10/cuda and ATen/cuda headers but not the one header its CMake build
# generates, c10/cuda/impl/cuda_cmake_macros.h; in a CUDA build of torch it holds one line,
# `#define C10_CUDA_BUILD_SHARED_LIBS`, which is what this script writes into a scratch include folder.
# Usage: bash .ci/cuda_sources.sh   (from the repository root, with the project's venv active)
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvcc >/dev/null 2>&1; then
  echo "  nvcc not found: CUDA sources not compiled"
  exit 0
fi
objdir=$(mktemp -d)
trap 'rm -rf "$objdir"' EXIT

for f in csrc/cuda/*.cu; do
  for arch in 80 90; do
    nvcc -c -O3 -std=c++17 -Werror all-warnings -arch=sm_${arch} "$f" -o "$objdir/$(basename "$f" .cu)_sm${arch}.o"
  done
  echo "  nvcc: compiled $f for sm_80, sm_90"
done

cuda_top=$(nvcc -dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1)
cuda_include="$cuda_top/include"
[ -f "$cuda_include/cuda_runtime.h" ] || { echo "  CUDA headers not found under $cuda_include" >&2; exit 1; }
mkdir -p "$objdir/include/c10/cuda/impl"
if ! python - <<'EOF'
import os, sys
from torch.utils.cpp_extension import include_paths
sys.exit(0 if any(os.path.isfile(os.path.join(p, "c10/cuda/impl/cuda_cmake_macros.h")) for p in include_paths()) else 1)
EOF
then
  printf '#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n' > "$objdir/include/c10/cuda/impl/cuda_cmake_macros.h"
fi
torch_includes=$(python -c "from torch.utils.cpp_extension import include_paths; print(' '.join('-isystem ' + p for p in include_paths()))")
py_include=$(python -c "import sysconfig; print(sysconfig.get_paths()['include'])")
for f in csrc/cuda/*_launch.cpp csrc/ops.cpp; do
  # shellcheck disable=SC2086
  g++ -c -O1 -std=c++20 -fPIC -Wall -Wextra -Werror -DFASTUNLEARN_WITH_CUDA -DTORCH_EXTENSION_NAME=_C \
    -isystem "$objdir/include" $torch_includes -isystem "$py_include" -isystem "$cuda_include" \
    "$f" -o "$objdir/$(basename "$f" .cpp)_cuda_glue.o"
  echo "  g++: compiled $f with FASTUNLEARN_WITH_CUDA against torch's and CUDA's headers"
done
