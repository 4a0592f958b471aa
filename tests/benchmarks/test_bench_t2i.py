"""``benchmarks/bench_t2i.py --smoke``: the tiny Stable Diffusion through every code path of both methods — real
interleaved iterations (library fp32, the device default, the reference), ESD's time-to-erase loop (a stand-in
judge that never sees the concept erased, so it runs to its cap) and the sd rows' composed path — with the
UNet calls per iteration checked against counts worked out by hand, and nothing written."""
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from _harness import read_printed_table  # noqa: E402

#: --smoke's AdvUnlearn settings: S = 4 DDIM steps, one trajectory per prompt, N = 3 (authors) / 2 (digits
#: defaults) attack steps, retain batch 5, the banks amortised over 1,000 / 200 iterations.
S, ATTACK = 4, {"authors": 3, "digits-defaults": 2}
AMORTISED = {"authors": 1000, "digits-defaults": 200}


def table(stdout: str) -> dict[tuple[str, ...], dict[str, str]]:
    """("method", "setting", "model", "impl"): {column: value} of the printed table (``_harness.read_printed_table``)."""
    return read_printed_table(stdout, "per_iter_ms", ("method", "setting", "model", "impl"))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_t2i")
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_t2i.py"), "--device", "cpu", "--smoke"],
                         capture_output=True, text=True, timeout=300, cwd=tmp)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout, tmp


def test_esd_rows(smoke):
    stdout, tmp = smoke
    rows = table(stdout)
    for model in ("tiny", "tiny-composed"):
        for impl in ("reference", "fastunlearn-fp32"):
            assert ("esd", "run", model, impl) in rows, stdout
    assert float(rows[("esd", "run", "tiny", "fastunlearn-fp32")]["speedup"]) > 1.0, stdout
    assert "tiny erase reference: iteration 2" in stdout and "tiny erase fastunlearn: iteration 2" in stdout
    # ESD's reference: prefix + e_0 + e_p + e_n; --smoke's S = 10 gives E[k] = (9 + 9 + 8 + … + 1) / 10 = 5.4
    assert float(rows[("esd", "run", "tiny-composed", "reference")]["unet_calls_per_iter"]) == pytest.approx(8.4)
    assert not list(tmp.iterdir()), "--smoke must write nothing"


@pytest.mark.parametrize("setting", ["authors", "digits-defaults"])
def test_advunlearn_unet_calls(smoke, setting):
    """The library: N attack calls + 1 training call per step, and its banks — S steps × ⌈prompts / 32⌉ calls for
    the forget prompt (1) and the 80 shipped retain prompts — over the run's iterations: counted by hooks on the
    real path, by the formula on the composed one, both equal to the hand count. The reference attacks on every
    timed iteration: at S = 4 a prefix is 1–3 calls, so an attack step is ≥ 4 calls and the training step ≥ 7
    (≥ 15 in all at N ≥ 2; a warm-up iteration is ≤ 2·3 + 5 = 11)."""
    stdout, _ = smoke
    rows = table(stdout)
    n = ATTACK[setting]
    bank = S * (math.ceil(1 / 32) + math.ceil(80 / 32))
    lib = n + 1 + bank / AMORTISED[setting]
    for model in ("tiny", "tiny-composed"):
        row = rows[("advunlearn", setting, model, "fastunlearn-fp32")]
        assert float(row["unet_calls_per_iter"]) == pytest.approx(lib, abs=0.006), (model, stdout)
        ref = rows[("advunlearn", setting, model, "reference")]
        assert float(ref["unet_calls_per_iter"]) >= 4 * n + 7, (model, stdout)
        assert float(row["unet_calls_ratio"]) == pytest.approx(float(ref["unet_calls_per_iter"]) / lib, abs=0.06)
    # E[p] at S = 4 is (3 + 3 + 2 + 1) / 4 = 2.25: N·(2.25 + 3) + 2·2.25 + 5 calls
    composed = rows[("advunlearn", setting, "tiny-composed", "reference")]
    assert float(composed["unet_calls_per_iter"]) == pytest.approx(n * 5.25 + 9.5)
    # the device default's row where it differs from fp32 (bf16 on a CPU), as ESD's
    assert {k[3] for k in rows if k[:3] == ("advunlearn", setting, "tiny")} == \
        {k[3] for k in rows if k[:3] == ("esd", "run", "tiny")}, stdout
