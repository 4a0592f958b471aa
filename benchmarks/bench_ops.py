"""Fused ops vs eager PyTorch: median time, speed-up and achieved bandwidth, per backend and size.

    python benchmarks/bench_ops.py --device cpu            # sizes 1M..64M elements
    python benchmarks/bench_ops.py --device cuda           # sizes 1M..256M, plus % of copy bandwidth

The eager baselines are the plain-PyTorch oracles in ``fastunlearn.ops.reference`` (the same contract:
both losses and their gradient; λ with the non-finite check and the in-place update). For
``bilevel_combine`` a leaner eager variant without the non-finite check (three ``torch.dot`` and one
``addcmul_``) is timed too, so the ratio is not flattered by the oracle's extra passes.
"Ideal bytes" count each input read once and each output written once: dual_noise_loss fwd+bwd reads
pred and target twice and writes the gradient (5 arrays); bilevel_combine reads both gradients twice and
writes the result (5 arrays). Rows are appended to ``benchmarks/results/ops.csv``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS, append_csv, environment, measure, print_table  # noqa: E402

from fastunlearn.ops import _ext, backends, bilevel_combine, dual_noise_loss, reference  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def copy_bandwidth(device: torch.device, numel: int) -> float:
    """Measured device-to-device copy bandwidth in GB/s (bytes read + bytes written)."""
    a = torch.randn(numel, device=device)
    b = torch.empty_like(a)
    t = measure(lambda: b.copy_(a), device, reps=10)["median_ms"]
    return 2 * a.numel() * a.element_size() / (t * 1e-3) / 1e9


def _with_backend(name: str, fn):
    def run():
        old = os.environ.get("FASTUNLEARN_BACKEND")
        os.environ["FASTUNLEARN_BACKEND"] = name
        try:
            return fn()
        finally:
            if old is None:
                os.environ.pop("FASTUNLEARN_BACKEND", None)
            else:
                os.environ["FASTUNLEARN_BACKEND"] = old
    return run


def cases(numel: int, dtype: torch.dtype, device: torch.device):
    """(op, eager variants {name: fn}, fused fn factory, ideal bytes) for one size."""
    batch = 64
    per_row = max(1, numel // batch)
    shape = (numel // per_row, per_row)
    pred = torch.randn(shape, device=device, dtype=dtype).requires_grad_()
    target = torch.randn(shape, device=device, dtype=dtype)
    n_forget = shape[0] // 2

    def loss_eager():
        pred.grad = None
        lf, lr = reference.dual_noise_loss(pred, target, n_forget)
        (lf + lr).backward()

    def loss_fused():
        pred.grad = None
        lf, lr = dual_noise_loss(pred, target, n_forget)
        (lf + lr).backward()

    yield "dual_noise_loss fwd+bwd", {"eager": loss_eager}, loss_fused, 5 * pred.numel() * pred.element_size()
    del pred, target

    go = torch.randn(numel, device=device, dtype=dtype)
    gi = torch.randn(numel, device=device, dtype=dtype)

    def combine_eager():
        reference.bilevel_combine(go, gi, "bome", 0.1, out=go)

    def combine_eager_lean():
        dot, nn_i = torch.dot(go, gi), torch.dot(gi, gi)
        torch.dot(go, go)  # the cosine rule needs ‖g_o‖²: the fused pass computes it too
        lam = torch.clamp_min((0.1 * nn_i - dot) / nn_i, 0.0)
        go.addcmul_(gi, lam)

    def combine_fused():
        bilevel_combine(go, gi, "bome", 0.1, out=go)

    yield "bilevel_combine", {"eager": combine_eager, "eager-lean": combine_eager_lean}, combine_fused, 5 * numel * go.element_size()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes", default=None, help="comma-separated element counts in millions (default: 1,4,16,64 on CPU; 1,4,16,64,256 on CUDA)")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--reps", type=int, default=None, help="timed repetitions per case (default 7 on CPU, 50 on CUDA)")
    ap.add_argument("--csv", default=str(RESULTS / "ops.csv"), help="CSV to append rows to ('' to skip)")
    ap.add_argument("--smoke", action="store_true", help="one tiny size, two repetitions (for the test suite)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available")
    dtype = DTYPES[args.dtype]
    default_sizes = "1,4,16,64" if device.type == "cpu" else "1,4,16,64,256"
    sizes = [int(float(s) * 2**20) for s in (args.sizes or default_sizes).split(",")]
    reps = args.reps or (7 if device.type == "cpu" else 50)
    if args.smoke:
        sizes, reps = [4099], 2
    _ext.load()
    fused_backends = [b for b in ("triton", "cuda", "cpu") if not backends.not_supported_reasons(b, device, dtype)]
    if device.type == "cpu":
        fused_backends = [b for b in fused_backends if b != "triton"]  # the interpreter is not a fast path
    if not fused_backends:
        print(f"no fused backend can run on {device.type}: " + "; ".join(
            f"{n}: {', '.join(r)}" for n, r in backends.explain(device, dtype) if r))
        return 1
    env = environment(device)
    copy_bw = copy_bandwidth(device, 64 * 2**20) if device.type == "cuda" and not args.smoke else None
    print(f"{env['device']} | torch {env['torch']} | commit {env['commit']} | {args.dtype}"
          + (f" | copy bandwidth {copy_bw:.0f} GB/s" if copy_bw else ""))
    rows = []
    for numel in sizes:
        for op, eagers, fused, ideal_bytes in cases(numel, dtype, device):
            eager_t = {name: measure(fn, device, reps)["median_ms"] for name, fn in eagers.items()}
            for backend in fused_backends:
                t = measure(_with_backend(backend, fused), device, reps)
                gbps = ideal_bytes / (t["median_ms"] * 1e-3) / 1e9
                for eager_name, et in eager_t.items():
                    rows.append({
                        **env, "op": op, "backend": backend, "baseline": eager_name, "dtype": args.dtype,
                        "numel": numel, "median_ms": round(t["median_ms"], 3), "p20_ms": round(t["p20_ms"], 3),
                        "p80_ms": round(t["p80_ms"], 3), "eager_ms": round(et, 3),
                        "speedup": round(et / t["median_ms"], 2), "GB_s": round(gbps, 1),
                        "pct_copy_bw": round(100 * gbps / copy_bw, 1) if copy_bw else "",
                    })
    print_table(rows, ["op", "backend", "baseline", "numel", "eager_ms", "median_ms", "speedup", "GB_s", "pct_copy_bw"])
    if args.csv and not args.smoke:
        append_csv(Path(args.csv), rows)
        print(f"appended {len(rows)} rows to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
