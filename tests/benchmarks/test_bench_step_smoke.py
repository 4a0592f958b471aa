"""``benchmarks/bench_step.py --smoke`` runs end to end for every model and implementation row: one step each
on tiny sizes, with the memory probe and the profiler (benchmarks themselves are not run in CI; nothing is
written)."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _table(stdout: str) -> list[list[str]]:
    lines = stdout[stdout.index("speedup_vs_"):].splitlines()
    return [line.split() for line in lines[1:] if line.split() and line.split()[0] in ("digits", "cifar10", "sd")]


def test_bench_step_smoke(tmp_path):
    """Every model row (digits as shipped; cifar10 and sd through their own code paths at a tiny size — the sd
    one is the latent adapter whose ``noised_batch`` lacked ``rows=``) and every implementation row: the
    library's fp32 and default steps, single-forward, the authors' default (amortised and bare outer step) and
    their adaptive branch. The amortised default-reference step costs more than its bare outer step, and each
    speed-up column is relative to its own reference."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_step.py"), "--device", "cpu", "--smoke"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = _table(out.stdout)
    impls = {"fastunlearn", "fastunlearn-single-forward", "reference-default", "reference-default-outer",
             "reference-adaptive"}
    for model in ("digits", "cifar10", "sd"):
        got = {r[3]: r for r in rows if r[0] == model}
        assert impls <= set(got), (model, out.stdout)
        assert "fastunlearn-fp32" in got or "fastunlearn-bf16" in got, out.stdout
        # columns: model params batch impl precision steps median p20 p80 vs_default vs_adaptive mem [fused]
        assert float(got["reference-default"][6]) > float(got["reference-default-outer"][6]), got
        assert float(got["reference-default"][9]) == 1.0 and float(got["reference-adaptive"][10]) == 1.0, got
        for r in got.values():
            assert float(r[9]) == pytest.approx(float(got["reference-default"][6]) / float(r[6]), rel=0.02, abs=0.01), r
        assert got["reference-default"][4] == "fp32" and got.get("fastunlearn-fp32", ["fp32"] * 5)[4] == "fp32"
    assert "the authors' schedule for n_f=142" in out.stdout  # digits: the train split's class 0
    assert not list(tmp_path.iterdir()), "--smoke must write nothing"


def test_bench_step_ablation_smoke(tmp_path):
    """``--ablation``: the default fast path and each switch flipped (compile left out of the smoke run)."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_step.py"), "--device", "cpu", "--smoke",
                          "--ablation", "--models", "cifar10"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    table = out.stdout[out.stdout.index("speedup_vs_ref"):]
    for impl in ("default", "channels_last=True", "fused_optimizer=False", "attention=eager"):
        assert f" {impl} " in table, out.stdout
    assert " precision=bf16 " in table or " precision=fp32 " in table, out.stdout
    assert not list(tmp_path.iterdir()), "--smoke must write nothing"
