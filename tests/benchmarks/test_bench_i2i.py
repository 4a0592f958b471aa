"""``benchmarks/bench_i2i.py --smoke``: the tiny inpainter and masked autoencoder through every code path — the
library's ``i2i`` (fp32 and the device default) and the authors'-structure reference, interleaved — with the
counted encodes, encoder rows, teacher and optimizer sizes checked against counts worked out by hand, and nothing
written."""
import subprocess
import sys
from pathlib import Path

import pytest

from fastunlearn.models.i2i import build_tiny_inpaint, build_tiny_mae

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _harness import read_printed_table  # noqa: E402
CSV = ROOT / "benchmarks" / "results" / "i2i.csv"
B = 4  # --smoke's rows per side


def table(stdout: str) -> dict[tuple[str, ...], dict[str, str]]:
    """("model", "impl"): {column: value} of the printed table (``_harness.read_printed_table``)."""
    return read_printed_table(stdout, "step_ms", ("model", "impl"))


def millions(params) -> float:
    return round(sum(p.numel() for p in params) / 1e6, 4)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_i2i")
    before = CSV.stat().st_mtime_ns if CSV.exists() else None
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_i2i.py"), "--device", "cpu", "--smoke"],
                         capture_output=True, text=True, timeout=300, cwd=tmp)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (CSV.stat().st_mtime_ns if CSV.exists() else None) == before, "--smoke must write nothing"
    assert not list(tmp.iterdir()), "--smoke must write nothing"
    return table(out.stdout), out.stdout


@pytest.mark.parametrize("model,build,structure,encodes", [("tiny-inpaint", build_tiny_inpaint, "palette", 2),
                                                            ("tiny-mae", build_tiny_mae, "mage", 3)])
def test_counts(smoke, model, build, structure, encodes):
    rows, stdout = smoke
    adapter = build(seed=0)
    whole, encoder = millions(adapter.model.parameters()), millions(adapter.parameters("encoder"))
    trainable = millions(adapter.parameters("all"))
    ref = rows[(model, "reference")]
    assert ref["structure"] == structure and ref["precision"] == "fp32", stdout
    # the authors' step: their fork's encodes of the whole batch (2B rows each), the whole model copied and optimised
    assert float(ref["encodes_per_step"]) == encodes and float(ref["encoder_rows_per_step"]) == encodes * 2 * B
    assert float(ref["teacher_params_M"]) == whole and float(ref["optimizer_params_M"]) == trainable
    assert float(ref["speedup"]) == 1.0
    libs = [impl for (m, impl) in rows if m == model and impl != "reference"]
    assert "fastunlearn-fp32" in libs, stdout
    for impl in libs:
        lib = rows[(model, impl)]
        # the library: the encoder over [forget; retain], the encoder-only teacher over [noise; retain]
        assert float(lib["encodes_per_step"]) == 2 and float(lib["encoder_rows_per_step"]) == 2 * 2 * B
        assert float(lib["optimizer_params_M"]) == encoder < trainable
        assert encoder <= float(lib["teacher_params_M"]) < whole
        assert float(lib["speedup"]) > 0 and lib["params_M"] == ref["params_M"] == f"{whole:g}"
