"""``benchmarks/bench_step.py --smoke`` runs end to end: the library's EraseDiff step, the proposed two-pass
variant and the reference baseline each take one step on a tiny UNet, with the memory probe and the profiler
(benchmarks themselves are not run in CI; nothing is written)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_step_smoke(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_step.py"), "--device", "cpu", "--smoke"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)  # hang guard; ~15 s idle, 43 s at load avg 6
    assert out.returncode == 0, out.stdout + out.stderr
    table = out.stdout[out.stdout.index("speedup_vs_ref"):]
    for impl in ("fastunlearn", "fastunlearn-single-forward", "reference"):
        assert f" {impl} " in table, out.stdout
    assert " fastunlearn-bf16 " in table or " fastunlearn-fp32 " in table, out.stdout
    assert not list(tmp_path.iterdir()), "--smoke must write nothing"


def test_bench_step_ablation_smoke(tmp_path):
    """``--ablation``: the default fast path and each switch flipped (compile left out of the smoke run)."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_step.py"), "--device", "cpu", "--smoke",
                          "--ablation"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    table = out.stdout[out.stdout.index("speedup_vs_ref"):]
    for impl in ("default", "channels_last=True", "fused_optimizer=False", "attention=eager"):
        assert f" {impl} " in table, out.stdout
    assert " precision=bf16 " in table or " precision=fp32 " in table, out.stdout
    assert not list(tmp_path.iterdir()), "--smoke must write nothing"
