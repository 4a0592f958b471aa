#!/usr/bin/env bash
# Everything a first GPU session must run, in one call of at most 8 minutes on one H100/H200:
#
#   0. the device name, date and commit (and python / torch / CUDA versions);
#   1. carried wheels (diffusers etc.: the GPU image has torch and triton but not diffusers) installed from
#      WHEELS (default .whl/, gitignored) into /tmp/site when that folder holds any;
#   2. fastunlearn installed in place with its CUDA kernels (FASTUNLEARN_BUILD_CUDA=1, sm_90);
#   3. the `cuda`-marked tests;
#   4. python benchmarks/bench_ops.py --device cuda            -> rows appended to benchmarks/results/ops.csv;
#   5. python benchmarks/bench_step.py --device cuda --models cifar10   (35.7M UNet, batch 128 per side)
#   6. python benchmarks/bench_step.py --device cuda --models sd        (SD-1.x-sized UNet, batch 8 per side)
#                                                              -> rows appended to benchmarks/results/step.csv;
#   7. a summary (stage, exit status, seconds); with $OUT set (the device tool's output folder) the CSVs, the
#      plot and every stage's log are copied there, since nothing else comes back from the machine.
#
# Each stage runs under `timeout` with its own budget, cut to what is left of the whole budget (TOTAL_S, default
# 470 s, leaving the call's start and transfers inside 8 minutes); a stage with under 15 s left is skipped. A
# failed stage does not stop the next one; the exit status is that of the first failed stage.
#
#   bash benchmarks/gpu_check.sh --dry-run       # print the stages and their commands, run nothing (any machine)
#   bash benchmarks/gpu_check.sh                 # on the GPU machine, from the repository root or anywhere
#
# Carrying wheels (on a machine with pip and a network; the device README's recipe; Python 3.12, x86-64):
#   echo /.whl/ >> .git/info/exclude    # .whl/ is in .gitignore too
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform any -d .whl diffusers==0.42.1 importlib_metadata
#   then the device call names `.whl` in its carry list. Without diffusers the model stages fail at import and
#   say so; bench_ops and the op tests need only torch (and triton, which the image has).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DRY=0
WHEELS=${WHEELS:-.whl}
TOTAL_S=${TOTAL_S:-470}
PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --wheels) WHEELS=$2; shift ;;
        --total-s) TOTAL_S=$2; shift ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

LOGS=${LOGS:-/tmp/gpu_check_logs}
mkdir -p "$LOGS"
START=$(date +%s)
FIRST_FAIL=0
SUMMARY=()
export PYTHONUNBUFFERED=1 PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# stage NAME BUDGET_S COMMAND...: run under timeout (cut to the time left), log to $LOGS/NAME.log.
stage() {
    local name=$1 budget=$2; shift 2
    local left=$(( TOTAL_S - ($(date +%s) - START) ))
    (( budget > left )) && budget=$left
    echo
    echo "== $name (budget ${budget}s): $*"
    if (( DRY )); then SUMMARY+=("$name dry-run"); return 0; fi
    if (( budget < 15 )); then
        echo "   skipped: ${left}s of the ${TOTAL_S}s budget left"
        SUMMARY+=("$name skipped(no-time)"); (( FIRST_FAIL )) || FIRST_FAIL=124; return 0
    fi
    local t0=$(date +%s) rc
    timeout --kill-after=10 "$budget" "$@" 2>&1 | tee "$LOGS/$name.log"
    rc=${PIPESTATUS[0]}
    SUMMARY+=("$name rc=$rc $(( $(date +%s) - t0 ))s")
    if (( rc != 0 )); then
        (( rc == 124 || rc == 137 )) && echo "   $name: timed out after ${budget}s"
        (( FIRST_FAIL )) || FIRST_FAIL=$rc
    fi
}

echo "== gpu_check: $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (+local changes)')"
if (( ! DRY )); then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: not found"
    "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA DEVICE')"
fi

# 1. carried wheels
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    stage wheels 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "$WHEELS"/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/site"  # PYTHONPATH precedes site-packages: carried versions win
else
    echo; echo "== wheels: none in $WHEELS/ (diffusers is not in the GPU image: the model stages need it)"
fi
(( DRY )) || "$PY" -c "import diffusers; print('diffusers', diffusers.__version__)" 2>/dev/null \
    || echo "   diffusers is not importable: stages 5-6 will fail (carry its wheel in $WHEELS/)"

# 2. the package with its CUDA kernels, built in place (fastunlearn/_C*.so next to the sources)
stage build 100 env FASTUNLEARN_BUILD_CUDA=1 TORCH_CUDA_ARCH_LIST="9.0" MAX_JOBS=16 \
    "$PY" setup.py -q build_ext --inplace

# 3. the cuda-marked tests (the marker expression replaces pyproject's "not slow")
stage cuda-tests 60 "$PY" -m pytest -q -x -m cuda tests

# 4. the fused ops against eager PyTorch on the GPU
stage bench-ops 40 "$PY" benchmarks/bench_ops.py --device cuda --reps 30

# 5-6. the EraseDiff step against both references (fp32 vs fp32 rows first) at the CIFAR-10 and SD-1.x sizes,
# at the authors' batch (CIFAR-10: 128 per side; SD: 8 per side, half their 16, to keep the fp32 references'
# retained graphs and the compile inside the budget); single-forward left out (a second torch.compile).
IMPLS=fastunlearn-fp32,fastunlearn,reference-default,reference-adaptive
stage bench-step-cifar10 110 "$PY" benchmarks/bench_step.py --device cuda --models cifar10 \
    --batch-sizes cifar10:128 --steps 8 --warmup 2 --impls "$IMPLS"
stage bench-step-sd 140 "$PY" benchmarks/bench_step.py --device cuda --models sd \
    --batch-sizes sd:8 --steps 4 --warmup 2 --impls "$IMPLS"

echo
echo "== summary ($(( $(date +%s) - START ))s of ${TOTAL_S}s)"
printf '   %s\n' "${SUMMARY[@]}"
if (( ! DRY )) && [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
    cp benchmarks/results/ops.csv benchmarks/results/step.csv benchmarks/results/step.png "$OUT"/ 2>/dev/null
    tar -czf "$OUT/gpu_check_logs.tgz" -C "$LOGS" . 2>/dev/null
    echo "   copied ops.csv, step.csv, step.png and gpu_check_logs.tgz to \$OUT"
fi
exit "$FIRST_FAIL"
