"""Backend selection: the environment switch, clear refusals, and `fastunlearn doctor`."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from fastunlearn.errors import BackendUnavailableError, UserInputError
from fastunlearn.ops import backends, bilevel_combine, dual_noise_loss, reference
from fastunlearn.ops import _ext


def extension_expected() -> bool:
    """Whether this install must have the C++ extension: it was built ahead of time (``fastunlearn._C``
    exists, as the README install and CI build it), or ``FASTUNLEARN_EXPECT_EXT=1`` says so (a JIT-only
    install with a compiler). ``FASTUNLEARN_EXPECT_EXT=0`` (a pure-Python install, no compiler) or
    ``FASTUNLEARN_NO_EXT=1`` (the extension switched off) expect the fallback."""
    if _ext._env_flag("FASTUNLEARN_NO_EXT"):
        return False
    flag = os.environ.get("FASTUNLEARN_EXPECT_EXT", "").strip().lower()
    if flag:
        return flag in ("1", "true", "yes", "on")
    return importlib.util.find_spec("fastunlearn._C") is not None


def test_auto_on_cpu_prefers_the_cpp_extension(monkeypatch):
    monkeypatch.setenv("FASTUNLEARN_BACKEND", "auto")
    _ext.load()
    status = _ext.status()
    chosen = backends.select("dual_noise_loss", torch.device("cpu"), torch.float32)
    if extension_expected():
        # A failed build or a broken fastunlearn._C must fail here, not fall back to `reference` silently.
        assert status["available"], f"the C++ extension is expected in this install but unavailable: {status['reason']}"
        assert chosen == "cpu", f"auto picked {chosen!r} on CPU although the extension is available"
        assert backends.select("bilevel_combine", torch.device("cpu"), torch.bfloat16) == "cpu"
    else:
        assert chosen == ("cpu" if status["available"] else "reference"), (chosen, status)
        assert status["available"] or status["reason"], "an unavailable extension must say why"


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


def test_ops_run_the_backend_the_fixture_forces(backend, forced_backend, monkeypatch):
    """The ``backend`` fixture keeps a backend forced from the environment (CI's
    ``FASTUNLEARN_BACKEND=reference`` pass), and both ops then dispatch to exactly that backend."""
    if forced_backend is not None:
        assert backend == forced_backend, f"the fixture overrode FASTUNLEARN_BACKEND={forced_backend} with {backend}"
    calls = []

    def spy(name, fn):
        def wrapped(*args, **kwargs):
            calls.append(name)
            return fn(*args, **kwargs)
        monkeypatch.setattr(reference, name, wrapped)

    for name in ("dual_noise_loss", "bilevel_stats", "bilevel_apply"):
        spy(name, getattr(reference, name))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert backends.select("dual_noise_loss", device, torch.float32) == backend
    assert backends.select("bilevel_combine", device, torch.float32) == backend
    dual_noise_loss(torch.randn(4, 3, device=device), torch.randn(4, 3, device=device), 2)
    bilevel_combine(torch.randn(8, device=device), torch.randn(8, device=device), "bome", 0.1)
    if backend == "reference":
        assert calls == ["dual_noise_loss", "bilevel_stats", "bilevel_apply"]
    else:
        assert calls == [], f"the {backend} backend fell back to the reference ops: {calls}"


def test_environment_backend_is_the_only_fixture_param():
    """What CI's second pass relies on, checked from the default pass too: under
    ``FASTUNLEARN_BACKEND=reference`` the op tests are collected for the reference backend only."""
    env = {**os.environ, "FASTUNLEARN_BACKEND": "reference"}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
         f"{__file__}::test_ops_run_the_backend_the_fixture_forces"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    ids = [line.strip() for line in out.stdout.splitlines() if "::test_ops_run_the_backend" in line]
    assert ids and all(i.endswith("[reference]") for i in ids), out.stdout
