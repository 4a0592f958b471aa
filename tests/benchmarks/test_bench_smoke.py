"""Each benchmark script runs end to end for one tiny iteration (benchmarks themselves are not run in CI)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_ops_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_ops.py"), "--device", "cpu", "--smoke"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "dual_noise_loss fwd+bwd" in out.stdout and "bilevel_combine" in out.stdout
    assert "speedup" in out.stdout
