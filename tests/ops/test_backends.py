"""Backend selection: the environment switch, clear refusals, and `fastunlearn doctor`."""
import json
import subprocess
import sys

import pytest
import torch

from fastunlearn.errors import BackendUnavailableError, UserInputError
from fastunlearn.ops import backends, dual_noise_loss
from fastunlearn.ops import _ext


def test_auto_on_cpu_prefers_the_cpp_extension(monkeypatch):
    monkeypatch.setenv("FASTUNLEARN_BACKEND", "auto")
    _ext.load()
    want = "cpu" if _ext.status()["available"] else "reference"
    assert backends.select("dual_noise_loss", torch.device("cpu"), torch.float32) == want


def test_auto_never_picks_the_triton_interpreter(monkeypatch):
    monkeypatch.setenv("FASTUNLEARN_BACKEND", "auto")
    assert backends.select("bilevel_combine", torch.device("cpu"), torch.float32) != "triton"


def test_forced_backend_that_cannot_run_says_why(monkeypatch):
    monkeypatch.setenv("FASTUNLEARN_BACKEND", "cuda")
    with pytest.raises(BackendUnavailableError, match="FASTUNLEARN_BACKEND=cuda cannot run dual_noise_loss on cpu"):
        dual_noise_loss(torch.randn(2, 3), torch.randn(2, 3), 1)


def test_unknown_backend_name(monkeypatch):
    monkeypatch.setenv("FASTUNLEARN_BACKEND", "tpu")
    with pytest.raises(UserInputError, match="expected one of auto, triton, cuda, cpu, reference"):
        backends.requested_backend()


def test_torch_is_an_alias_of_reference(monkeypatch):
    monkeypatch.setenv("FASTUNLEARN_BACKEND", "torch")
    assert backends.select("dual_noise_loss", torch.device("cpu"), torch.float32) == "reference"


def test_unsupported_dtype_is_explained():
    reasons = backends.not_supported_reasons("cpu", torch.device("cpu"), torch.float64)
    assert any("float64" in r for r in reasons)


def test_doctor_prints_the_table_and_exits_zero():
    out = subprocess.run([sys.executable, "-m", "fastunlearn", "doctor"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for needle in ("packages:", "torch", "C++/CUDA extension", "dual_noise_loss [cpu]", "bilevel_combine [cpu]", "refused"):
        assert needle in out.stdout
    js = subprocess.run([sys.executable, "-m", "fastunlearn", "doctor", "--json"], capture_output=True, text=True, timeout=300)
    report = json.loads(js.stdout)
    assert set(report["ops"]) >= {"dual_noise_loss [cpu]", "bilevel_combine [cpu]"}
    assert report["ops"]["dual_noise_loss [cpu]"]["refused"]["cuda"]
